//! The hybrid-vsock convention (Firecracker, vhost-device-vsock) for the host side.
//!
//! Host to guest: a host program connects to the VM's Unix socket (`uds-path`) and writes
//! `CONNECT <port>\n`; vmq opens a vsock connection to that guest port and, once the guest
//! accepted, answers `OK <port>\n` with the same guest port, as vhost-device-vsock does
//! (Firecracker answers with the host-side port it allocated instead). After that line the Unix socket carries the stream's bytes. Guest to host: a guest connecting
//! to CID 2 port `P` reaches whoever listens on the Unix socket `<uds-path>_P`
//! ([`guest_listener_path`]).
//!
//! [`LineParser`] reads either line incrementally from a nonblocking socket, holding at most
//! [`MAX_LINE`] bytes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The longest line accepted, newline included: `CONNECT 4294967295\n` is 19 bytes, so this
/// leaves room for stray spaces and a `\r` but not for a client that never ends its line.
pub const MAX_LINE: usize = 64;

/// A malformed hybrid-vsock line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HybridError {
    /// No newline within [`MAX_LINE`] bytes.
    #[error("no newline within {MAX_LINE} bytes")]
    LineTooLong,
    /// Not valid UTF-8, or not `<WORD> <port>`.
    #[error("expected `{expected} <port>`, got {line:?}")]
    Malformed {
        /// The keyword expected (`CONNECT` or `OK`).
        expected: &'static str,
        /// The line (lossy, without the newline).
        line: String,
    },
    /// The port is not a decimal number below 2^32.
    #[error("bad port {0:?} (a decimal number up to 4294967295)")]
    BadPort(String),
    /// The parser already returned its line; the rest of the socket is stream data.
    #[error("line already parsed")]
    Done,
}

/// Which line a [`LineParser`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// `CONNECT <port>`: what the host program sends vmq.
    Connect,
    /// `OK <port>`: vmq's answer (a host-side test client reads it).
    Ok,
}

impl LineKind {
    fn keyword(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::Ok => "OK",
        }
    }
}

/// Reads one `CONNECT <port>\n` or `OK <port>\n` line fed in pieces.
#[derive(Debug, Clone)]
pub struct LineParser {
    kind: LineKind,
    buf: [u8; MAX_LINE],
    len: usize,
    done: bool,
}

impl LineParser {
    /// A parser for a line of `kind`.
    pub fn new(kind: LineKind) -> Self {
        Self {
            kind,
            buf: [0; MAX_LINE],
            len: 0,
            done: false,
        }
    }

    /// Feeds bytes read from the socket. Returns `Ok(None)` while the line is incomplete (all of
    /// `data` consumed), or `Ok(Some((port, used)))` once it is: `used` bytes of `data` belonged
    /// to the line, the rest is stream data. Accepts `\r\n` and runs of spaces; the keyword is
    /// case-sensitive as in Firecracker.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<(u32, usize)>, HybridError> {
        if self.done {
            return Err(HybridError::Done);
        }
        let newline = data.iter().position(|&b| b == b'\n');
        let take = newline.map_or(data.len(), |i| i + 1);
        if self.len + take > MAX_LINE {
            return Err(HybridError::LineTooLong);
        }
        self.buf[self.len..self.len + take].copy_from_slice(&data[..take]);
        self.len += take;
        if newline.is_none() {
            return Ok(None);
        }
        self.done = true;
        let port = parse_line(self.kind, &self.buf[..self.len - 1])?;
        Ok(Some((port, take)))
    }
}

/// Parses a line without its `\n`.
fn parse_line(kind: LineKind, line: &[u8]) -> Result<u32, HybridError> {
    let malformed = || HybridError::Malformed {
        expected: kind.keyword(),
        line: String::from_utf8_lossy(line).into_owned(),
    };
    let text = std::str::from_utf8(line).map_err(|_| malformed())?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let mut words = text.split(' ').filter(|w| !w.is_empty());
    let (Some(word), Some(port), None) = (words.next(), words.next(), words.next()) else {
        return Err(malformed());
    };
    if word != kind.keyword() {
        return Err(malformed());
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HybridError::BadPort(port.to_owned()));
    }
    port.parse()
        .map_err(|_| HybridError::BadPort(port.to_owned()))
}

/// The line vmq sends a host program whose connection to guest port `port` was accepted.
pub fn ok_line(port: u32) -> String {
    format!("OK {port}\n")
}

/// The line a host program sends to reach guest port `port`.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// Where a guest connecting to the host's port `port` is sent: `<uds_path>_<port>`. Works on
/// the raw path bytes, so a non-UTF-8 path stays intact.
pub fn guest_listener_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s: OsString = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}
