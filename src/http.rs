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
//!
//! The server is hyper's HTTP/1.1 with limits for a port open to anyone: at most
//! `[server] max_connections` connections at once (the rest wait in the kernel's accept queue,
//! costing this process nothing), headers of at most [`MAX_HEADER_BYTES`] that must arrive
//! within [`HEADER_TIMEOUT`] (which also closes a keep-alive connection idle that long), and
//! push bodies of at most [`MAX_PUSH_BODY`] within [`BODY_TIMEOUT`], read only once the
//! request's token passed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::metrics;
use crate::source::push::{Answer, BodyError, PushReceiver};

/// `[server]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to serve on, e.g. `0.0.0.0:8080`. Unset: no server, unless `PORT` is set
    /// (Cloud Run sets it) or the source is push.
    pub listen: Option<SocketAddr>,
    /// Connections served at once; more wait to be accepted. Each costs at most a header's
    /// worth of memory until its request is authenticated.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: None,
            // Above Cloud Run's largest per-instance concurrency (1000), so there the platform's
            // limit is the one that applies; idle or unauthenticated, 1024 connections hold
            // about 40 MiB at most (a header buffer each).
            max_connections: 1024,
        }
    }
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
        if m.streams_connected.get() < 1 {
            return Some("no Pub/Sub subscription stream is open");
        }
        if m.pubsub_reachable.get() != 1 {
            return Some("the Pub/Sub endpoint is unreachable");
        }
    }
    None
}

/// The largest request head (request line and headers). A push's is about 2 KB, most of it
/// the ~1 KB token; 16 KiB leaves room for what proxies add, as nginx's default 8 KiB a line
/// does. Larger is answered 431 before any of our code runs.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long the head of a request may take to arrive, counted from the connection's opening or
/// the previous answer, so it is also the idle timeout of keep-alive connections. hyper's own
/// default: a push's head arrives in one packet; clients reopen a connection closed while idle
/// (and a push lost in that race is answered non-2xx, so Pub/Sub sends it again).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest push body read. Cloud Logging caps an entry at 256 KiB; as base64 in the JSON
/// envelope that is about 1.4 times more, some 360 KiB. The limit sits above the decoder's own
/// 1 MiB `too_large` cap once base64-encoded (1.33 MiB), so that cap decides, as it does for
/// pulled messages; a larger body is no log entry and is skipped unread.
pub const MAX_PUSH_BODY: usize = 1536 * 1024;
/// How long a push body may take once its token passed: Google sends 1.5 MiB in milliseconds;
/// a body slower than 150 KiB/s holds a connection for nothing.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

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
                .route("/pubsub/push", post(push_request))
                .with_state(push),
        ),
        None => app,
    }
}

/// Serves until `shutdown`, then lets requests in flight finish. At most `max_connections`
/// connections are served at once.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    max_connections: usize,
    shutdown: CancellationToken,
) {
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
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        // A free slot before the next accept: connections beyond the bound wait in the kernel.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_header_size(MAX_HEADER_BYTES);
            let connection =
                http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    // Closes an idle connection now, a busy one after its answer.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                // A client's doing (a timeout, a reset, a bad request): not worth a warning.
                tracing::debug!("HTTP connection ended: {e}");
            }
        });
    }
    // New connections are refused from now on; those open finish their requests.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// After a failed accept: a client that gave up is nothing; anything else (out of file
/// descriptors) is logged and waited out for a second, as hyper did, rather than spun on.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!("cannot accept an HTTP connection: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
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
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics().render(),
    )
        .into_response()
}

async fn push_request(
    State(push): State<Arc<PushReceiver>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match push.handle(authorization, read_body(body)).await {
        Answer::Acked => StatusCode::NO_CONTENT.into_response(),
        Answer::Skipped(reason) => (StatusCode::OK, format!("skipped: {reason}\n")).into_response(),
        Answer::Unauthorized(reason) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            format!("{reason}\n"),
        )
            .into_response(),
        Answer::TimedOut => (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            "the body did not arrive in time\n",
        )
            .into_response(),
        Answer::Incomplete => (StatusCode::BAD_REQUEST, "the body was cut off\n").into_response(),
        Answer::Unavailable(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
        }
    }
}

/// A push body: at most [`MAX_PUSH_BODY`] bytes, within [`BODY_TIMEOUT`]. A declared length
/// over the limit is refused before a byte is read.
async fn read_body(body: Body) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > MAX_PUSH_BODY as u64 {
        return Err(BodyError::TooLarge);
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_PUSH_BODY).collect()).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Broken),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Loaded;

    #[test]
    fn max_connections_is_checked_with_its_line() {
        let load = |text: &str| Loaded::from_str(text, "c.toml", Default::default());
        assert_eq!(
            load("[server]\n").unwrap().config.server.max_connections,
            1024
        );
        assert_eq!(
            load("[server]\nmax_connections = 4\n")
                .unwrap()
                .config
                .server
                .max_connections,
            4
        );
        for bad in ["0", "65537"] {
            let e = load(&format!(
                "[server]\nlisten = \"0.0.0.0:8080\"\nmax_connections = {bad}\n"
            ))
            .unwrap_err();
            assert_eq!(e.line, Some(3), "{e}");
            assert!(e.message.contains("1 to 65536"), "{e}");
        }
    }
}
