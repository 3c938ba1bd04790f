//! The endpoint: one thread, one connection at a time, one bounded request per connection.
//!
//! A minimal HTTP/1.0 responder on a std [`TcpListener`]: it reads at most [`MAX_REQUEST`]
//! bytes of request head within [`IO_TIMEOUT`], answers, and closes. A daemon's commands
//! (`POST /drain`, `POST /reload`) go to its [`Control`], from clients on this host only. A client that sends
//! garbage gets a 400, one that stalls is dropped after the timeout; nothing it sends can
//! stop the thread.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::{exposition, latest, Control, SharedSnapshot};

/// Longest request head read (the request line and headers).
const MAX_REQUEST: usize = 4096;

/// Longest a connection may take to send its request, and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error(
        "cannot listen for metrics on {addr}: {source}; pick another address with \
         --metrics IP:PORT or [metrics] listen (port 0 takes a free one)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A resource (eventfd, thread) could not be had.
    #[error("metrics endpoint: cannot make {what}: {source}")]
    Io {
        /// What was being made.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// A running metrics endpoint (see [`crate::metrics`]); stops when dropped.
#[derive(Debug)]
pub struct MetricsEndpoint {
    addr: SocketAddr,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Listens on `addr` and serves the latest snapshot in `source` from a thread of its own.
    pub fn start(addr: SocketAddr, source: SharedSnapshot) -> Result<Self, MetricsError> {
        Self::start_with_control(addr, source, None)
    }

    /// [`MetricsEndpoint::start`], also taking the daemon's commands (`POST /drain`,
    /// `POST /reload`) to `control`, from clients on this host only.
    pub fn start_with_control(
        addr: SocketAddr,
        source: SharedSnapshot,
        control: Option<Arc<dyn Control>>,
    ) -> Result<Self, MetricsError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let io = |what| move |source| MetricsError::Io { what, source };
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(io("an eventfd"))?;
        let stop_rx = stop.try_clone().map_err(io("an eventfd"))?;
        let thread = std::thread::Builder::new()
            .name("vmq-metrics".into())
            .spawn(move || serve(listener, stop_rx, source, control))
            .map_err(io("its thread"))?;
        log::info!("metrics on http://{bound}/metrics (table at /stats, JSON at /stats.json)");
        Ok(Self {
            addr: bound,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port it got, when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and waits for the thread (up to 4 s, should it be serving a slow
    /// client: 2 s to send its request, 2 s to read the answer).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
        }
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The endpoint's thread: waits for a connection or the stop, serves one connection at a time.
fn serve(
    listener: TcpListener,
    stop: EventFd,
    source: SharedSnapshot,
    control: Option<Arc<dyn Control>>,
) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two initialised pollfds whose descriptors (the
        // listener's and the eventfd's) stay open for the call; the length passed is its own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            log::error!(
                "metrics endpoint stops: poll failed: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = answer(stream, peer, &source, control.as_deref()) {
                    log::debug!("metrics: {peer}: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                log::warn!("metrics: cannot accept a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads one request from `stream` (from `peer`) and answers it.
fn answer(
    mut stream: TcpStream,
    peer: SocketAddr,
    source: &SharedSnapshot,
    control: Option<&dyn Control>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    let head_end = loop {
        if let Some(end) = head_end(&buf[..len]) {
            break end;
        }
        if len == buf.len() {
            return respond(
                &mut stream,
                &Response::status(431, "request head too long\n"),
                true,
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(ErrorKind::TimedOut, "request too slow"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed before the request ended",
                ))
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let (response, head_only) = match parse_request_line(&buf[..head_end]) {
        Some((method, path, query)) if COMMANDS.contains(&path) => {
            if method != "POST" {
                let r = Response::status(405, &format!("{path} takes POST\n"));
                (r.header("Allow", "POST"), false)
            } else if !is_command_request(&buf[..head_end]) {
                // A browser may POST to localhost for any page it shows; it cannot add this
                // header without asking first, and it always says where it came from.
                let r = Response::status(
                    403,
                    &format!("{path} wants the header {COMMAND_HEADER}: 1 and no Origin\n"),
                );
                (r, false)
            } else {
                (command(path, query, peer, control), false)
            }
        }
        Some((method @ ("GET" | "HEAD"), path, _)) => (route(path, source), method == "HEAD"),
        Some(_) => (
            Response::status(405, "only GET and HEAD\n").header("Allow", "GET, HEAD"),
            false,
        ),
        None => (Response::status(400, "not an HTTP request\n"), false),
    };
    respond(&mut stream, &response, head_only)
}

/// Where the request head ends (after its blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `(method, path, query)` of a request line `METHOD PATH[?QUERY] HTTP/1.x`.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some((method, path, query))
}

/// The paths that take the daemon's commands.
const COMMANDS: &[&str] = &["/drain", "/reload"];

/// The header a command must carry (`vmq drain` and `vmq reload` send it).
pub(crate) const COMMAND_HEADER: &str = "X-Vmq-Command";

/// Whether a request head carries [`COMMAND_HEADER`] and no `Origin` (which every browser
/// sends with a cross-site POST).
fn is_command_request(head: &[u8]) -> bool {
    let Ok(head) = std::str::from_utf8(head) else {
        return false;
    };
    let mut marked = false;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("origin") {
            return false;
        }
        marked |= name.eq_ignore_ascii_case(COMMAND_HEADER) && value.trim() == "1";
    }
    marked
}

/// Runs command `path` (`/drain`, `/reload`) with `query` for a client at `peer`.
fn command(path: &str, query: &str, peer: SocketAddr, control: Option<&dyn Control>) -> Response {
    let Some(control) = control else {
        return Response::status(
            404,
            "this daemon takes no commands (vmq serve does, on its metrics endpoint)\n",
        );
    };
    // The endpoint may listen on a network interface for scrapes; commands change what the
    // daemon serves, so they come from this host only.
    if !peer.ip().is_loopback() {
        return Response::status(
            403,
            "commands are taken from this host only: run vmq drain / vmq reload there\n",
        );
    }
    let result = if path == "/reload" {
        control.reload()
    } else {
        let (service, member) = (param(query, "service"), param(query, "member"));
        let (Some(service), Some(member)) = (service, member) else {
            return Response::status(400, "usage: POST /drain?service=NAME&member=MEMBER\n");
        };
        control.drain(&service, &member)
    };
    match result {
        Ok(text) => Response::ok(
            "text/plain; charset=utf-8",
            format!("{}\n", text.trim_end()),
        ),
        Err(text) => Response::status(409, &format!("{}\n", text.trim_end())),
    }
}

/// The value of `key` in a query `a=1&b=2`, percent-decoded (`+` is a space).
fn param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v)).flatten()
    })
}

/// `%XX` escapes and `+` decoded; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

const INDEX: &str = "vmq stats endpoint\n\
    /metrics     Prometheus text format 0.0.4\n\
    /stats       the switch's table\n\
    /stats.json  the switch's snapshot as JSON\n\
    POST /drain?service=NAME&member=MEMBER, POST /reload   vmq serve's commands (this host only)\n";

fn route(path: &str, source: &SharedSnapshot) -> Response {
    let text = "text/plain; charset=utf-8";
    if path == "/" {
        return Response::ok(text, INDEX.into());
    }
    if !matches!(path, "/metrics" | "/stats" | "/stats.json") {
        return Response::status(404, &format!("no such path {path:?}\n{INDEX}"));
    }
    let Some(snap) = latest(source) else {
        return Response::status(
            503,
            "no snapshot yet: the switch publishes its first within 100 ms of starting; \
             try again\n",
        );
    };
    match path {
        "/metrics" => match exposition::encode(&snap) {
            Ok(body) => Response::ok(exposition::CONTENT_TYPE, body),
            Err(_) => Response::status(500, "the metrics could not be encoded\n"),
        },
        "/stats" => Response::ok(text, snap.to_string()),
        _ => match serde_json::to_string(&snap) {
            Ok(mut body) => {
                body.push('\n');
                Response::ok("application/json", body)
            }
            Err(_) => Response::status(500, "the snapshot could not be encoded\n"),
        },
    }
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Response {
    fn ok(content_type: &str, body: String) -> Self {
        Self {
            status: 200,
            headers: vec![("Content-Type", content_type.to_string())],
            body,
        }
    }

    fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: body.to_string(),
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

fn respond(stream: &mut TcpStream, r: &Response, head_only: bool) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let mut head = format!("HTTP/1.0 {} {reason}\r\n", r.status);
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.body.len()
    ));
    // The whole answer within one deadline: a client that reads slowly is dropped.
    let deadline = Instant::now() + IO_TIMEOUT;
    write_within(stream, head.as_bytes(), deadline)?;
    if !head_only {
        write_within(stream, r.body.as_bytes(), deadline)?;
    }
    Ok(())
}

fn write_within(
    stream: &mut TcpStream,
    mut bytes: &[u8],
    deadline: Instant,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "answer read too slowly",
            ));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
