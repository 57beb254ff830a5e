//! The loopback HTTP fake of every test that stands in for an HTTP service (the Cloud Scheduler
//! API, the JWKS, Slack, webhooks, PagerDuty…): one file, compiled into the root crate's `it`
//! tests (`tests/it/common/http.rs`) and the sinks' tests (`sinks/tests/common/mod.rs`) with
//! `#[path]`. Not a crate of its own: a workspace member would have to be in the Docker build
//! too, and a test helper has no business there.
//!
//! ```ignore
//! let server = FakeServer::start(|req| match req.route() {
//!     "/v1/things" => Response::json(200, &serde_json::json!({"things": []})),
//!     _ => Response::text(404, "no such thing"),
//! });
//! // point the program under test at server.url() ("http://127.0.0.1:PORT"), run it, then:
//! assert_eq!(server.requests()[0].method, "GET");
//! ```
//!
//! HTTP/1.1 is hyper's (the server the service itself runs on): keep-alive, both body framings,
//! `Expect: 100-continue`, `Connection: close` from either side. Every request is recorded in
//! arrival order before the handler sees it. The handler is shared by all connections (keep its
//! state in atomics or a `Mutex`) and runs on a blocking thread, so it may sleep; a panicking
//! handler answers 500. Dropping the server stops it and closes its open connections.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// One request as the server read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The request target as sent: path and query, still percent-encoded (`/v1/x?a=b%2Bc`).
    pub path: String,
    /// Header names in lower case, values trimmed, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// When the whole request had arrived.
    pub at: Instant,
}

impl Request {
    /// The path without the query (`/v1/x`).
    pub fn route(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `name`, decoded (`+` is a space, `%XX` a byte).
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.path.split_once('?')?;
        query
            .split('&')
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .find(|(k, _)| decode(k) == name)
            .map(|(_, v)| decode(v))
    }

    /// The body as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("request body is not JSON ({e}): {}", self.text()))
    }
}

/// `application/x-www-form-urlencoded` decoding of one name or value.
fn decode(s: &str) -> String {
    let (b, mut out, mut i) = (s.as_bytes(), Vec::new(), 0);
    let hex = |j: usize| b.get(j).and_then(|&c| (c as char).to_digit(16));
    while i < b.len() {
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 2;
            }
            (b'+', ..) => out.push(b' '),
            (c, ..) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the handler answers. `Content-Length` is added unless set.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers to send.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// How long to wait before answering (for clients' timeouts).
    pub delay: Option<Duration>,
}

impl Response {
    /// An empty response.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
        }
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(status)
            .header("content-type", "application/json")
            .body(value.to_string())
    }

    /// A `text/plain` body.
    pub fn text(status: u16, text: &str) -> Response {
        Response::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(text)
    }

    /// Adds a header (`connection: close` closes the connection after this response).
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// Answers only after `delay`.
    pub fn after(mut self, delay: Duration) -> Response {
        self.delay = Some(delay);
        self
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A running fake server on `127.0.0.1`; stopped on drop.
pub struct FakeServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    /// Its own runtime, so that tests need none; shut down on drop, which drops every
    /// connection.
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeServer {
    /// Binds a free port and serves `handler` until dropped.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the fake server");
        let handler: Arc<Handler> = Arc::new(handler);
        let requests = Arc::<Mutex<Vec<Request>>>::default();
        let log = Arc::clone(&requests);
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, log) = (Arc::clone(&handler), Arc::clone(&log));
                let service = hyper::service::service_fn(move |request| {
                    answer(request, Arc::clone(&handler), Arc::clone(&log))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        FakeServer {
            addr,
            requests,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits up to `timeout` until `done(requests)` holds (for programs that send in the
    /// background); returns the requests either way.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Request]) -> bool) -> Vec<Request> {
        let end = Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if done(&reqs) || Instant::now() >= end {
                return reqs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One request: read whole, recorded, answered by the handler on a blocking thread.
async fn answer(
    request: hyper::Request<Incoming>,
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<Request>>>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes().to_vec(),
        Err(e) => return Ok(reply(Response::text(400, &format!("bad body: {e}")))),
    };
    let request = Request {
        method: parts.method.to_string(),
        path: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).trim().to_owned();
                (k.as_str().to_owned(), v)
            })
            .collect(),
        body,
        at: Instant::now(),
    };
    log.lock().unwrap().push(request.clone());
    let response = tokio::task::spawn_blocking(move || handler(&request))
        .await
        .unwrap_or_else(|_| Response::text(500, "the fake's handler panicked"));
    if let Some(delay) = response.delay {
        tokio::time::sleep(delay).await;
    }
    Ok(reply(response))
}

fn reply(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut reply = hyper::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        reply = reply.header(name, value);
    }
    reply
        .body(Full::new(Bytes::from(response.body)))
        .expect("the handler's status and headers are valid HTTP")
}

/// A loopback URL where nothing listens (a port bound, then released): for "unreachable" tests.
pub fn unused_url() -> String {
    format!("http://127.0.0.1:{}", unused_port())
}

/// A loopback port where nothing listens (bound, then released).
pub fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// Keep-alive, both body framings and `Connection: close`, as raw bytes on one connection.
    #[test]
    fn one_connection_carries_several_requests_until_close() {
        let server = FakeServer::start(|req| {
            Response::text(
                201,
                &format!("{} {} {}", req.method, req.route(), req.text()),
            )
        });
        let mut c = TcpStream::connect(server.url().trim_start_matches("http://")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"POST /a?x=1%2B1&y=a+b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
        c.write_all(b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n").unwrap();
        c.write_all(b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap(); // ends: the server closed after /c
        assert_eq!(all.matches("HTTP/1.1 201 Created").count(), 3, "{all}");
        assert!(
            all.contains("POST /a hello")
                && all.contains("POST /b abcde")
                && all.ends_with("GET /c "),
            "{all}"
        );
        let reqs = server.requests();
        assert_eq!(
            reqs.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            ["/a?x=1%2B1&y=a+b", "/b", "/c"]
        );
        assert_eq!(
            (
                reqs[0].query("x").as_deref(),
                reqs[0].query("y").as_deref(),
                reqs[0].header("HOST")
            ),
            (Some("1+1"), Some("a b"), Some("h"))
        );
        assert_eq!(reqs[1].body, b"abcde");
    }
}
