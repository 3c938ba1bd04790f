//! The one place the switch rewrites headers: what a message carries into the port it is
//! delivered to.

use super::core::SWITCH_PORT;
use super::inflight::Token;
use super::outbox::Outbound;
use crate::port::PortId;
use crate::wire::{MsgHeader, MsgKind, Status};

/// The header a message carries into port `d`: with [`request_header`], the one place headers
/// are rewritten. Replies get the frontend's id back and the backend as source; everything the
/// switch makes itself comes from [`SWITCH_PORT`]. `None` for a request, whose header comes
/// from its in-flight record.
pub(super) fn outbound_header(d: PortId, item: &Outbound) -> Option<MsgHeader> {
    Some(match *item {
        Outbound::OneWay { src, ref chain } => {
            let mut h = chain.header;
            h.set_src(src);
            h
        }
        Outbound::Request(_) => return None,
        Outbound::Reply {
            backend,
            ref chain,
            msg_id,
            ..
        } => {
            let mut h = chain.header;
            h.set_msg_id(msg_id);
            h.set_src(backend);
            h.set_dst_port(d);
            h
        }
        Outbound::CopiedReply { header, .. } => header,
        Outbound::Error {
            status,
            msg_id,
            class,
            ..
        } => switch_reply(d, msg_id, class, status),
        Outbound::Notice { msg_id, status } => switch_reply(d, msg_id, 0, status),
        Outbound::Hello => {
            let mut h = MsgHeader::new(MsgKind::Hello, d, 0, 0);
            h.set_src(SWITCH_PORT);
            h
        }
        Outbound::Directory => {
            let mut h = MsgHeader::new(MsgKind::DirectoryUpdate, d, 0, 0);
            h.set_src(SWITCH_PORT);
            h
        }
    })
}

/// A request as its backend sees it: the frontend's header, stamped with the frontend as
/// source (never what the guest wrote) and the in-flight token as id.
pub(super) fn request_header(
    frontend_header: &MsgHeader,
    frontend: PortId,
    tok: Token,
) -> MsgHeader {
    let mut h = *frontend_header;
    h.set_src(frontend);
    h.set_msg_id(tok.0);
    h
}

fn switch_reply(d: PortId, msg_id: u64, class: u8, status: Status) -> MsgHeader {
    let mut h = MsgHeader::new(MsgKind::Reply, d, msg_id, 0);
    h.set_src(SWITCH_PORT);
    h.set_class(class);
    h.set_status(status);
    h
}
