//! One host<->guest connection: its Unix stream beside the endpoint that faces the guest,
//! and the bytes moved between them.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use super::CHUNK;
use crate::vsock::endpoint::{Endpoint, EndpointState};
use crate::vsock::hybrid::ok_line;
use crate::vsock::packet::SHUTDOWN_SEND;

/// One host<->guest connection: the Unix stream, the endpoint facing the guest, and bytes on
/// their way to the host program.
pub(super) struct HostConn {
    pub(super) stream: UnixStream,
    pub(super) token: u64,
    pub(super) ep: Endpoint,
    /// Bytes for the host program not yet written (`out[out_at..]`); at most [`CHUNK`] plus
    /// the `OK` line.
    pub(super) out: Vec<u8>,
    pub(super) out_at: usize,
    /// The host program opened it (its local port was allocated here).
    pub(super) host_initiated: bool,
    /// Host-initiated: the `OK <port>` line is owed once the guest accepts.
    pub(super) ok_owed: bool,
    /// The host program will send no more.
    pub(super) read_eof: bool,
    /// The stream's write side was shut (the guest will send no more).
    pub(super) write_shut: bool,
    /// When it was opened.
    pub(super) opened_ns: u64,
    /// When the endpoint was first seen closed.
    pub(super) closed_ns: Option<u64>,
}

/// Moves bytes between a connection's stream and its endpoint as far as either side takes;
/// returns whether anything moved.
pub(super) fn pump_stream(c: &mut HostConn, chunk: &mut [u8]) -> bool {
    let mut moved = false;
    // Host program -> endpoint, while the send buffer has room.
    while !c.read_eof && c.ep.state() != EndpointState::Closed {
        let room = c.ep.send_space().min(chunk.len());
        if room == 0 {
            break;
        }
        match c.stream.read(&mut chunk[..room]) {
            Ok(0) => {
                c.read_eof = true;
                c.ep.shutdown(SHUTDOWN_SEND);
                moved = true;
            }
            Ok(n) => {
                c.ep.write(&chunk[..n]);
                moved = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.ep.reset();
                return true;
            }
        }
    }
    // Endpoint -> host program: the OK line first, then what the guest sent.
    if c.ok_owed && c.ep.state() == EndpointState::Established {
        c.ok_owed = false;
        c.out = ok_line(c.ep.peer().port).into_bytes();
        c.out_at = 0;
    }
    if c.ok_owed {
        return moved;
    }
    loop {
        if c.out_at >= c.out.len() {
            c.out.clear();
            c.out_at = 0;
            c.out.resize(CHUNK, 0);
            let n = c.ep.read(&mut c.out);
            c.out.truncate(n);
            if n == 0 {
                break;
            }
            moved = true;
        }
        match c.stream.write(&c.out[c.out_at..]) {
            Ok(n) => c.out_at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return moved,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                // The host program is gone: the guest hears an RST.
                c.ep.reset();
                c.out.clear();
                c.out_at = 0;
                return true;
            }
        }
    }
    if c.ep.is_eof() && !c.write_shut {
        // The guest sends no more and all it sent is written: the host program sees EOF.
        c.write_shut = true;
        let _ = c.stream.shutdown(Shutdown::Write);
        moved = true;
    }
    moved
}
