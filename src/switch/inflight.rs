//! The in-flight record of one request, kept in the switch's [`BlockPool`](super::BlockPool).

use crate::virtio::TxChain;

use super::port::PortId;

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Accepted, waiting for a backend (or for the addressed port's rx buffer).
    Waiting,
    /// Delivered to `backend`; the reply is awaited.
    Dispatched,
    /// Answered (reply or error) but the answer waits for the frontend's rx buffer.
    Answering,
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A service, by id.
    Service(u32),
    /// A port, by id.
    Port(PortId),
}

/// One request between acceptance and its one answer. The frontend's tx chain is held (not
/// returned to its used ring) for the whole time, so the request stays readable in the
/// frontend's own memory for re-dispatch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Inflight {
    pub frontend: PortId,
    pub chain: TxChain,
    pub target: Target,
    pub stage: Stage,
    /// Backend port and, for services, the member index it was dispatched to.
    pub backend: Option<(PortId, Option<usize>)>,
    pub accepted_ns: u64,
    pub dispatched_ns: u64,
    pub deadline_ns: u64,
    pub dispatches: u32,
}
