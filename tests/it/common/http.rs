//! A loopback HTTP/1.1 fake server for tests (Cloud Scheduler API, Slack, webhooks, PagerDuty…):
//! std only, one thread per connection.
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
//! It speaks enough HTTP/1.1 for real clients (reqwest/hyper, curl): keep-alive (several
//! requests on one connection, as pooled clients send them), `Content-Length` and chunked
//! request bodies (decoded), `Expect: 100-continue`, and `Connection: close` from either side.
//! Every request is recorded in arrival order before the handler sees it. The handler is shared
//! by all connections: keep its state in atomics or a `Mutex`. A panicking handler answers 500.
//! Dropping the server stops it and closes its open connections.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
}

impl Response {
    /// An empty response.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
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
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A running fake server on `127.0.0.1`; stopped on drop.
pub struct FakeServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Binds a free port and serves `handler` until dropped.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let handler: Arc<Handler> = Arc::new(handler);
        let (requests, conns, stop) = (
            Arc::default(),
            Arc::<Mutex<Vec<TcpStream>>>::default(),
            Arc::new(AtomicBool::new(false)),
        );
        let (log, open, stopping) = (Arc::clone(&requests), Arc::clone(&conns), Arc::clone(&stop));
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(clone) = stream.try_clone() {
                    open.lock().unwrap().push(clone); // for Drop to close
                }
                let (handler, log) = (Arc::clone(&handler), Arc::clone(&log));
                std::thread::spawn(move || serve(stream, &*handler, &log));
            }
        });
        FakeServer {
            addr,
            requests,
            conns,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the acceptor
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both); // ends the connection threads' reads
        }
    }
}

/// A loopback URL where nothing listens (a port bound, then released): for "unreachable" tests.
pub fn unused_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// Serves one connection: requests until EOF, a malformed request or `Connection: close`.
fn serve(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let Some(line) = read_line(&mut r)? else {
            return Ok(());
        };
        if line.is_empty() {
            continue; // a stray CRLF between requests is allowed
        }
        let mut parts = line.split(' ');
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let http10 = parts.next() == Some("HTTP/1.0");
        let mut req = Request {
            method,
            path,
            headers: Vec::new(),
            body: Vec::new(),
        };
        loop {
            match read_line(&mut r)? {
                None => return Ok(()),
                Some(h) if h.is_empty() => break,
                Some(h) => match h.split_once(':') {
                    Some((k, v)) => req
                        .headers
                        .push((k.trim().to_ascii_lowercase(), v.trim().to_owned())),
                    None => return Err(bad(&format!("header line {h:?}"))),
                },
            }
        }
        if req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if req
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            req.body = read_chunked(&mut r)?;
        } else if let Some(n) = req.header("content-length") {
            req.body = vec![
                0;
                n.parse()
                    .map_err(|_| bad(&format!("content-length {n:?}")))?
            ];
            r.read_exact(&mut req.body)?;
        }
        log.lock().unwrap().push(req.clone());
        let resp = catch_unwind(AssertUnwindSafe(|| handler(&req)))
            .unwrap_or_else(|_| Response::text(500, "the fake's handler panicked"));
        let said_close = |headers: &[(String, String)]| {
            headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close")
            })
        };
        let keep_alive = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive"));
        let close =
            said_close(&req.headers) || said_close(&resp.headers) || (http10 && !keep_alive);
        write_response(
            &mut out,
            &resp,
            req.method == "HEAD",
            close && !said_close(&resp.headers),
        )?;
        if close {
            return out.shutdown(Shutdown::Both);
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("fake HTTP server: bad request: {what}"),
    )
}

/// One line without its CRLF; `None` at end of stream.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = String::new();
    Ok((r.read_line(&mut line)? > 0).then(|| line.trim_end_matches(['\r', '\n']).to_owned()))
}

fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| bad("chunked body cut short"))?;
        let hex = line.split(';').next().unwrap_or_default().trim(); // chunk extensions ignored
        let n = usize::from_str_radix(hex, 16).map_err(|_| bad(&format!("chunk size {hex:?}")))?;
        if n == 0 {
            while read_line(r)?.is_some_and(|t| !t.is_empty()) {} // trailers, up to the empty line
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + n, 0);
        r.read_exact(&mut body[start..])?;
        if read_line(r)?.is_none_or(|l| !l.is_empty()) {
            return Err(bad("no CRLF after a chunk"));
        }
    }
}

fn write_response(
    out: &mut TcpStream,
    resp: &Response,
    head: bool,
    add_close: bool,
) -> io::Result<()> {
    let reason = match resp.status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let mut buf = format!("HTTP/1.1 {} {reason}\r\n", resp.status).into_bytes();
    for (k, v) in &resp.headers {
        buf.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !resp
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        buf.extend_from_slice(format!("content-length: {}\r\n", resp.body.len()).as_bytes());
    }
    if add_close {
        buf.extend_from_slice(b"connection: close\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    if !head {
        buf.extend_from_slice(&resp.body);
    }
    out.write_all(&buf)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

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
