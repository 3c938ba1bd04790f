//! `vmq stats`' side: one `GET` to a running daemon's endpoint (and `vmq drain` / `vmq
//! reload`'s: one `POST`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{parse_listen, DEFAULT_LISTEN};

/// How long to wait for the connection, and for the answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for the answer to a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of answer read (a snapshot of thousands of ports is a few MiB).
const MAX_ANSWER: u64 = 64 << 20;

/// Why `vmq stats` got no stats.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The address is neither `HOST:PORT` nor a port.
    #[error(
        "{addr:?} is not an address: {message}; give HOST:PORT (e.g. {DEFAULT_LISTEN}) or a port"
    )]
    BadAddr {
        /// What was given.
        addr: String,
        /// Why it does not resolve.
        message: String,
    },
    /// Nothing listens there.
    #[error(
        "no vmq serve (or vmq run) listening on {addr}; start it with --metrics {addr} or set \
         [metrics] listen = \"{addr}\" in its config, or point --addr at its endpoint"
    )]
    NotListening {
        /// The address.
        addr: SocketAddr,
    },
    /// The connection failed otherwise.
    #[error("{addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint answered with an error.
    #[error("{addr} answered {status}: {body}")]
    Status {
        /// The address.
        addr: SocketAddr,
        /// The HTTP status.
        status: u16,
        /// What it said.
        body: String,
    },
    /// Whatever listens there does not speak HTTP.
    #[error(
        "{addr} did not answer like a vmq stats endpoint; is --addr the daemon's metrics address?"
    )]
    NotVmq {
        /// The address.
        addr: SocketAddr,
    },
}

/// Resolves `addr` (`HOST:PORT`, `IP:PORT` or a port on localhost) to its addresses.
fn resolve(addr: &str) -> Result<Vec<SocketAddr>, StatsError> {
    if let Ok(a) = parse_listen(addr) {
        return Ok(vec![a]);
    }
    let bad = |message: String| StatsError::BadAddr {
        addr: addr.to_string(),
        message,
    };
    let found: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .collect();
    if found.is_empty() {
        return Err(bad("it resolves to no address".into()));
    }
    Ok(found)
}

/// `GET path` from the endpoint at `addr` (`HOST:PORT` or a port on localhost); the body of
/// a `200` answer.
pub fn fetch(addr: &str, path: &str) -> Result<String, StatsError> {
    request(addr, "GET", path)
}

/// `POST path` (a command: `/drain?...`, `/reload`) to the endpoint at `addr`; the body of a
/// `200` answer, or [`StatsError::Status`] with what the daemon said.
pub fn post(addr: &str, path: &str) -> Result<String, StatsError> {
    request(addr, "POST", path)
}

/// `s` escaped for a query value: everything but letters, digits and `-._~` as `%XX`.
pub fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn request(addr: &str, method: &str, path: &str) -> Result<String, StatsError> {
    let addrs = resolve(addr)?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, TIMEOUT) {
            Ok(s) => return exchange(s, a, method, path),
            Err(e) => last = Some((a, e)),
        }
    }
    let (addr, source) = last.expect("resolve returns at least one address");
    Err(match source.kind() {
        ErrorKind::ConnectionRefused => StatsError::NotListening { addr },
        _ => StatsError::Io { addr, source },
    })
}

fn exchange(
    mut s: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> Result<String, StatsError> {
    let io = |source| StatsError::Io { addr, source };
    // A command runs to its end before the answer (a reload builds ports): allow for it.
    let wait = if method == "POST" {
        COMMAND_TIMEOUT
    } else {
        TIMEOUT
    };
    s.set_read_timeout(Some(wait)).map_err(io)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let command = if method == "POST" {
        format!("{}: 1\r\n", super::http::COMMAND_HEADER)
    } else {
        String::new()
    };
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: vmq-stats\r\n{command}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer).map_err(io)?;
    let (status, body) = split_answer(&answer).ok_or(StatsError::NotVmq { addr })?;
    if status != 200 {
        return Err(StatsError::Status {
            addr,
            status,
            body: body.trim().chars().take(500).collect(),
        });
    }
    Ok(body)
}

/// The status and body of an HTTP/1.x answer.
fn split_answer(answer: &[u8]) -> Option<(u16, String)> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..end]).ok()?;
    let mut status_line = head.lines().next()?.split(' ');
    if !status_line.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = status_line.next()?.parse().ok()?;
    Some((
        status,
        String::from_utf8_lossy(&answer[end + 4..]).into_owned(),
    ))
}
