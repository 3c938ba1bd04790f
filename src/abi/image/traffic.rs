//! Result slots of the traffic counters every image that moves messages keeps (`client`,
//! `worker`, `peer`, `evil`); the runner reads them from every VM. What each counts depends on
//! the image.

/// Messages sent (client, evil: requests; worker: replies; peer: one-way messages).
pub const SENT: usize = 0;
/// Messages received (client, evil: replies of any status; worker: requests; peer: one-way
/// messages), not counting the hello.
pub const RECEIVED: usize = 1;
/// Client, evil: replies with `Status::Ok` and the right payload; worker: replies sent with
/// `Status::Ok`; peer: messages that arrived in order and intact.
pub const OK: usize = 2;
/// Client: replies with an error status (the sum of its `STATUS_*` slots); evil: replies with
/// an error status; worker: replies sent with `Status::BackendError`; peer: error notices from
/// the switch.
pub const ERRORS: usize = 3;
/// Client, evil: replies whose id is not outstanding (never sent, or answered twice); peer:
/// messages from a sender id it cannot track.
pub const DUPLICATES: usize = 4;
/// Client, evil: `Ok` replies whose payload is not the worker's transform of the request;
/// peer: messages out of order or with a corrupt payload.
pub const MISMATCHES: usize = 5;
/// Client, peer (page hand-off, `mode` = 2): page return notices taken from the switch (its
/// lent pages came home).
pub const PAGE_RETURNS: usize = 23;
