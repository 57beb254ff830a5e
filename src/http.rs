//! The HTTP endpoints of `run` (axum): `GET /healthz`, `GET /readyz`, `GET /metrics`, and in
//! push mode `POST /pubsub/push`.
//!
//! - `/healthz`: 200 while the process serves, 503 with the reason once it should be restarted
//!   (its state store cannot recover): a liveness probe.
//! - `/readyz`: 200 when work can be done — in pull mode a subscription stream is connected and
//!   the last store commit succeeded; in push mode the last commit succeeded — else 503 with
//!   the reason. A readiness or startup probe.
//! - `/metrics`: [`crate::metrics`] in Prometheus text format.
//! - `/pubsub/push`: [`crate::source::push`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::metrics;
use crate::source::push::{Answer, PushReceiver};

/// `[server]` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to serve on, e.g. `0.0.0.0:8080`. Unset: no server, unless `PORT` is set
    /// (Cloud Run sets it) or the source is push.
    pub listen: Option<SocketAddr>,
}

/// The address to serve on: the command line, the config, then `PORT` (`0.0.0.0:$PORT`);
/// push mode needs a server, so it falls back to `0.0.0.0:8080`.
pub fn listen_address(
    flag: Option<SocketAddr>,
    config: &ServerConfig,
    push: bool,
) -> anyhow::Result<Option<SocketAddr>> {
    if let Some(a) = flag.or(config.listen) {
        return Ok(Some(a));
    }
    if let Some(port) = std::env::var("PORT").ok().filter(|p| !p.is_empty()) {
        let port: u16 = port
            .parse()
            .map_err(|_| anyhow::anyhow!("PORT={port:?} is not a port number"))?;
        return Ok(Some(SocketAddr::from(([0, 0, 0, 0], port))));
    }
    Ok(push.then(|| SocketAddr::from(([0, 0, 0, 0], 8080))))
}

/// What readiness means for the running source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Streaming pull: a stream must be connected.
    Pull,
    /// Push: requests come to us.
    Push,
}

/// Why the service is not ready, or `None`.
pub fn not_ready(mode: Mode) -> Option<&'static str> {
    let m = metrics();
    if !m.store_writable() {
        return Some("the state store's last commit failed");
    }
    if mode == Mode::Pull {
        if m.streams_connected.load(Relaxed) < 1 {
            return Some("no Pub/Sub subscription stream is open");
        }
        if m.pubsub_reachable.load(Relaxed) != 1 {
            return Some("the Pub/Sub endpoint is unreachable");
        }
    }
    None
}

/// The largest push request read: a 10 MB message, base64-encoded, in its envelope.
const MAX_PUSH_BODY: usize = 16 * 1024 * 1024;

/// The router; `push` adds `POST /pubsub/push`.
pub fn router(mode: Mode, push: Option<Arc<PushReceiver>>) -> Router {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(mode);
    match push {
        Some(push) => app.merge(
            Router::new()
                .route(
                    "/pubsub/push",
                    post(push_request).layer(DefaultBodyLimit::max(MAX_PUSH_BODY)),
                )
                .with_state(push),
        ),
        None => app,
    }
}

/// Serves until `shutdown`, then lets requests in flight finish.
pub async fn serve(listener: std::net::TcpListener, app: Router, shutdown: CancellationToken) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot serve HTTP: {e}");
            return;
        }
    };
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!("HTTP server stopped: {e}");
    }
}

async fn healthz() -> Response {
    match metrics().unhealthy() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(mode): State<Mode>) -> Response {
    match not_ready(mode) {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics().render(),
    )
        .into_response()
}

async fn push_request(
    State(push): State<Arc<PushReceiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match push.handle(authorization, &body).await {
        Answer::Acked => StatusCode::NO_CONTENT.into_response(),
        Answer::Skipped(reason) => (StatusCode::OK, format!("skipped: {reason}\n")).into_response(),
        Answer::Unauthorized(reason) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            format!("{reason}\n"),
        )
            .into_response(),
        Answer::Unavailable(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
        }
    }
}
