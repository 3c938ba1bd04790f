//! [`VsockPort`]: a Linux guest's virtio-vsock device, served over vhost-user, as a port of the
//! switch.
//!
//! What the guest sends (its tx queue) is read, checked and copied out at once, so its
//! descriptors go straight back: one connection that waits never holds the others' buffers.
//! A packet for a sibling becomes one or more switch messages (pieces of at most
//! [`PIECE_PAYLOAD`] bytes, what a Linux rx buffer holds) in the port's [`Staging`] memory,
//! addressed to the sibling's port; the switch routes them like any one-way message and the
//! sibling's port writes them into its guest's rx queue. Who may reach whom, and what each
//! connection may send, is decided before a packet is staged: the guest's source CID is
//! stamped (never trusted), unknown CIDs and CIDs outside the guest's groups get an RST, and
//! the relay ([`crate::vsock::relay`]) checks every packet against its connection's state and
//! credit. What vmq itself owes a guest (RSTs) goes through the guest's control queue in the
//! [`VsockNetwork`], written into its rx queue ahead of switch deliveries.
//!
//! Bounds (per guest): staged pieces at most `staging slots` (the switch holds nothing else of
//! a vsock guest's), and each connection at most the relay's credit cap; control packets at
//! most [`network::CONTROL_QUEUE_MAX`]. A guest with every slot staged (many connections to
//! receivers that take nothing) has its tx queue left alone until slots come back.
//!
//! Files: `guest` ([`VsockPort`]: what becomes of each packet the guest sends) and its
//! `queues` (the device's rings: taking tx, delivering rx, control packets, the [`Port`] impl);
//! `staging` (also the [`Port`] methods every staging-backed port answers alike), `network`,
//! `host` (a guest's host side) and `service` (load-balanced services).
//!
//! [`Port`]: crate::port::Port

mod guest;
mod host;
mod network;
pub mod service;
mod staging;

pub use guest::VsockPort;
pub use host::{HostConfig, HostPort, HostPortError, CHUNK, MAX_PENDING};
pub use network::{
    DeliveryWatch, NetworkError, ServiceRoute, VmAddress, VmCounters, VmCounts, VmEntry,
    VsockNetwork, CONTROL_QUEUE_MAX, SERVICE_BACKEND_PORTS,
};
pub use staging::{
    read_piece, read_piece_between, Owed, Piece, Staging, MAX_SLOTS, PIECE_PAYLOAD, SLOT_SIZE,
};
pub(crate) use staging::{ringless_port, staged_port_memory};

use std::sync::{Arc, Mutex};

use crate::vhost_user::DeviceQueues;

/// The queues of a vsock device while its VMM runs them: set by the device's owner when they
/// start, taken away (under this lock, so never in the middle of a batch) when they stop.
pub type SharedQueues = Arc<Mutex<Option<DeviceQueues>>>;
