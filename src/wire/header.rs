//! [`MsgHeader`]: fixed 32-byte little-endian layout.
//!
//! | offset | size | field    | meaning |
//! |-------:|-----:|----------|---------|
//! | 0      | 1    | version  | [`WIRE_VERSION`]; anything else is rejected |
//! | 1      | 1    | kind     | [`MsgKind`] |
//! | 2      | 1    | flags    | [`DST_SERVICE`]: `dst` names a service, else a port; [`LOAD_REPORT`]: `load` is a report; [`NOTIFY_IMMEDIATE`] / [`NOTIFY_DEFERRED`]: how the receiver is told, see [`Notify`]; [`HANDOFF`](crate::wire::pages::HANDOFF): the payload is a page list |
//! | 3      | 1    | class    | request class, selects a byte-share table (0 = default) |
//! | 4      | 4    | dst      | destination port id or service id |
//! | 8      | 4    | src      | source port id, stamped by the switch; a guest's value is ignored |
//! | 12     | 4    | len      | payload bytes that follow the header |
//! | 16     | 8    | msg_id   | chosen by the requester, echoed in the reply |
//! | 24     | 4    | key      | affinity key for key-hash policies |
//! | 28     | 2    | status   | [`Status`] of a reply |
//! | 30     | 2    | load     | cooperative load report, 0 (idle) ..= 1000 (saturated), when [`LOAD_REPORT`] is set |

/// Size of the encoded header in bytes.
pub const HEADER_SIZE: usize = 32;
/// The only header version this build speaks.
pub const WIRE_VERSION: u8 = 1;
/// Flag: `dst` is a service id, routed through that service's balancing policy.
pub const DST_SERVICE: u8 = 1 << 0;
/// Flag: `load` is the sender's load report. Without it the field says nothing: a reply of a
/// backend that does not report is not a claim to be idle.
pub const LOAD_REPORT: u8 = 1 << 1;
/// Flag: notify the receiver as soon as this message is delivered, even in the middle of the
/// switch's batch ([`Notify::Immediate`]).
pub const NOTIFY_IMMEDIATE: u8 = 1 << 3;
/// Flag: publish this message but send no notification for it ([`Notify::Deferred`]).
pub const NOTIFY_DEFERRED: u8 = 1 << 4;
/// Every flag this build knows.
const KNOWN_FLAGS: u8 =
    DST_SERVICE | LOAD_REPORT | NOTIFY_IMMEDIATE | NOTIFY_DEFERRED | crate::wire::pages::HANDOFF;
/// Largest payload a header may announce (1 MiB). Bigger messages are a protocol error.
pub const MAX_PAYLOAD: u32 = 1 << 20;
/// Highest meaningful value of the cooperative `load` field.
pub const LOAD_MAX: u16 = 1000;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgKind {
    /// Expects exactly one [`MsgKind::Reply`] with the same `msg_id`.
    Request = 1,
    /// Answers a request; `dst` is the requester's port.
    Reply = 2,
    /// Fire and forget.
    OneWay = 3,
    /// A backend's unsolicited load report (`load` field).
    LoadReport = 4,
    /// Sent by the switch when a port comes up: tells the guest its port id; payload is the
    /// service directory.
    Hello = 5,
    /// Sent by the switch to every live port when a port or service comes or goes (a VM
    /// added, removed, broken or revived; a service added or removed): `dst` is the receiver's
    /// port id, the payload is the whole new directory (as in a [`MsgKind::Hello`]), which
    /// replaces the one the guest holds. Not a hello: the receiver's own port did not change.
    DirectoryUpdate = 6,
    /// A receiver gives back pages it was handed ([`crate::wire::pages`]); the payload is the
    /// page list. Taken by its port, never routed.
    PageRelease = 7,
    /// Sent by the switch to a lender: pages it handed off came back; the payload is the page
    /// list (its own addresses).
    PageReturn = 8,
}

impl MsgKind {
    /// Decodes a kind byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Request,
            2 => Self::Reply,
            3 => Self::OneWay,
            4 => Self::LoadReport,
            5 => Self::Hello,
            6 => Self::DirectoryUpdate,
            7 => Self::PageRelease,
            8 => Self::PageReturn,
            _ => return None,
        })
    }
}

/// How the receiver of a message is told that it arrived (seed 004: immediate or deferred
/// notification), from flag bits 3 and 4. The switch honours it per message; a notification is
/// only ever sent to a guest that asked for one (EVENT_IDX), since a guest that did not ask is
/// running and reads its ring anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Notify {
    /// Neither flag: published and notified once per switch poll (the default).
    #[default]
    PerPoll,
    /// [`NOTIFY_IMMEDIATE`] (also when both flags are set: a contradiction never loses a
    /// notification): published and notified at once, before the rest of the batch.
    Immediate,
    /// [`NOTIFY_DEFERRED`]: published without a notification; the receiver sees it when it
    /// looks on its own, when the next immediate or per-poll message to it is notified, or
    /// when its port's coalescing deadline passes.
    Deferred,
}

/// Status carried by replies (and by requests the switch fails back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// No backend could take the request before its deadline.
    NoBackend = 1,
    /// The destination port or service does not exist.
    Unreachable = 2,
    /// The request was malformed.
    BadRequest = 3,
    /// The backend reported an application error.
    BackendError = 4,
    /// The reply does not fit the requester's posted rx buffer.
    TooLarge = 5,
    /// The request was dispatched but no reply came before its deadline.
    Timeout = 6,
    /// The sender's port or the destination port broke (virtio DEVICE_NEEDS_RESET).
    PortBroken = 7,
}

impl Status {
    /// Decodes a status value; unknown values map to `None`.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0 => Self::Ok,
            1 => Self::NoBackend,
            2 => Self::Unreachable,
            3 => Self::BadRequest,
            4 => Self::BackendError,
            5 => Self::TooLarge,
            6 => Self::Timeout,
            7 => Self::PortBroken,
            _ => return None,
        })
    }
}

/// Why a header was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The chain holds fewer readable bytes than a header.
    Truncated {
        /// Readable bytes in the chain.
        available: usize,
    },
    /// The version byte is not [`WIRE_VERSION`].
    BadVersion(u8),
    /// The kind byte is not a [`MsgKind`].
    UnknownKind(u8),
    /// Unknown flag bits are set.
    UnknownFlags(u8),
    /// `len` announces more payload than the chain carries (or more than [`MAX_PAYLOAD`]).
    LengthPastChain {
        /// Announced payload length.
        len: u32,
        /// Payload bytes actually readable after the header.
        available: usize,
    },
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated { available } => write!(
                f,
                "message chain holds {available} readable bytes, fewer than the {HEADER_SIZE}-byte header"
            ),
            Self::BadVersion(v) => write!(
                f,
                "header version {v} is not supported (expected {WIRE_VERSION}); rebuild the guest against this vmq"
            ),
            Self::UnknownKind(k) => write!(f, "header kind {k} is not a known message kind"),
            Self::UnknownFlags(fl) => write!(f, "header flags {fl:#x} set unknown bits"),
            Self::LengthPastChain { len, available } => write!(
                f,
                "header announces a {len}-byte payload but the chain carries only {available} bytes after the header"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WireError {}

/// The message header, kept in its little-endian wire layout.
///
/// Fields are private so that every access goes through the endian-converting accessors; the
/// struct is `repr(C)` with no padding, so it can be copied to and from guest memory directly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MsgHeader {
    version: u8,
    kind: u8,
    flags: u8,
    class: u8,
    dst: u32,
    src: u32,
    len: u32,
    msg_id: u64,
    key: u32,
    status: u16,
    load: u16,
}

const _: () = assert!(core::mem::size_of::<MsgHeader>() == HEADER_SIZE);

// SAFETY: `MsgHeader` is `repr(C)`, made only of integers, has no padding (checked by the size
// assertion above: 4x1 + 3x4 + 8 + 4 + 2x2 = 32), so every byte pattern is a valid value.
#[cfg(feature = "std")]
unsafe impl vm_memory::ByteValued for MsgHeader {}

impl MsgHeader {
    /// A header of `kind` to port or service `dst`, carrying `len` payload bytes.
    pub fn new(kind: MsgKind, dst: u32, msg_id: u64, len: u32) -> Self {
        Self {
            version: WIRE_VERSION,
            kind: kind as u8,
            dst: dst.to_le(),
            msg_id: msg_id.to_le(),
            len: len.to_le(),
            ..Self::default()
        }
    }

    /// A request to service `service`.
    pub fn request_to_service(service: u32, msg_id: u64, len: u32) -> Self {
        let mut h = Self::new(MsgKind::Request, service, msg_id, len);
        h.flags = DST_SERVICE;
        h
    }

    /// The reply to `req`: addressed to the requester, same id, class and notification
    /// ([`Notify`]: the requester chose how soon it wants to hear), given status.
    pub fn reply_to(req: &MsgHeader, status: Status, len: u32) -> Self {
        let mut h = Self::new(MsgKind::Reply, req.src(), req.msg_id(), len);
        h.class = req.class;
        h.set_notify(req.notify());
        h.set_status(status);
        h
    }

    /// Decodes and validates a header from its 32 wire bytes. `payload_available` is the number
    /// of readable bytes in the chain after the header.
    pub fn parse(bytes: &[u8], payload_available: usize) -> Result<Self, WireError> {
        let raw: &[u8; HEADER_SIZE] = bytes
            .get(..HEADER_SIZE)
            .and_then(|b| b.try_into().ok())
            .ok_or(WireError::Truncated {
                available: bytes.len(),
            })?;
        let h = Self::from_bytes(raw);
        h.validate(payload_available)?;
        Ok(h)
    }

    /// Reinterprets 32 wire bytes without validating them.
    #[inline]
    pub fn from_bytes(raw: &[u8; HEADER_SIZE]) -> Self {
        let mut h = Self::default();
        // SAFETY: `MsgHeader` is `repr(C)`, exactly `HEADER_SIZE` bytes with no padding (checked
        // at compile time above) and made only of integers, so any byte pattern is a valid
        // value. Its fields hold little-endian values, so its memory image is the wire layout
        // on any host.
        unsafe {
            core::ptr::copy_nonoverlapping(
                raw.as_ptr(),
                (&mut h as *mut Self).cast::<u8>(),
                HEADER_SIZE,
            )
        };
        h
    }

    /// The 32 wire bytes of this header.
    #[inline]
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        // SAFETY: as in `from_bytes`: the struct's memory image is its 32 wire bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (self as *const Self).cast::<u8>(),
                b.as_mut_ptr(),
                HEADER_SIZE,
            )
        };
        b
    }

    /// Checks version, kind, flags and that `len` fits in `payload_available` bytes.
    pub fn validate(&self, payload_available: usize) -> Result<(), WireError> {
        if self.version != WIRE_VERSION {
            return Err(WireError::BadVersion(self.version));
        }
        if MsgKind::from_u8(self.kind).is_none() {
            return Err(WireError::UnknownKind(self.kind));
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::UnknownFlags(self.flags));
        }
        let len = self.len();
        if len > MAX_PAYLOAD || len as usize > payload_available {
            return Err(WireError::LengthPastChain {
                len,
                available: payload_available,
            });
        }
        Ok(())
    }

    /// Header version byte.
    pub fn version(&self) -> u8 {
        self.version
    }
    /// Message kind; `None` only for a header that was not validated.
    pub fn kind(&self) -> Option<MsgKind> {
        MsgKind::from_u8(self.kind)
    }
    /// Whether `dst` names a service.
    pub fn dst_is_service(&self) -> bool {
        self.flags & DST_SERVICE != 0
    }
    /// Request class (selects a byte-share table).
    pub fn class(&self) -> u8 {
        self.class
    }
    /// Destination port or service id.
    pub fn dst(&self) -> u32 {
        u32::from_le(self.dst)
    }
    /// Source port id (meaningful only once stamped by the switch).
    pub fn src(&self) -> u32 {
        u32::from_le(self.src)
    }
    /// Payload length in bytes.
    pub fn len(&self) -> u32 {
        u32::from_le(self.len)
    }
    /// Whether the message has no payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Message id, echoed in the reply.
    pub fn msg_id(&self) -> u64 {
        u64::from_le(self.msg_id)
    }
    /// Affinity key.
    pub fn key(&self) -> u32 {
        u32::from_le(self.key)
    }
    /// Reply status; `None` for an unknown value.
    pub fn status(&self) -> Option<Status> {
        Status::from_u16(self.status_raw())
    }
    /// Raw reply status.
    pub fn status_raw(&self) -> u16 {
        u16::from_le(self.status)
    }
    /// Cooperative load report, 0 ..= [`LOAD_MAX`] (larger values are clamped by readers).
    pub fn load(&self) -> u16 {
        u16::from_le(self.load)
    }
    /// The load report it carries, if it carries one ([`LOAD_REPORT`]).
    pub fn load_report(&self) -> Option<u16> {
        (self.flags & LOAD_REPORT != 0).then(|| self.load())
    }

    /// Whether the payload is a page-reference list ([`crate::wire::pages::HANDOFF`]).
    pub fn handoff(&self) -> bool {
        self.flags & crate::wire::pages::HANDOFF != 0
    }

    /// Marks the payload as a page-reference list, or as plain bytes.
    pub fn set_handoff(&mut self, on: bool) {
        if on {
            self.flags |= crate::wire::pages::HANDOFF;
        } else {
            self.flags &= !crate::wire::pages::HANDOFF;
        }
    }

    /// How the receiver is to be notified ([`Notify`]).
    pub fn notify(&self) -> Notify {
        if self.flags & NOTIFY_IMMEDIATE != 0 {
            Notify::Immediate
        } else if self.flags & NOTIFY_DEFERRED != 0 {
            Notify::Deferred
        } else {
            Notify::PerPoll
        }
    }
    /// Sets how the receiver is to be notified.
    pub fn set_notify(&mut self, n: Notify) {
        self.flags &= !(NOTIFY_IMMEDIATE | NOTIFY_DEFERRED);
        self.flags |= match n {
            Notify::PerPoll => 0,
            Notify::Immediate => NOTIFY_IMMEDIATE,
            Notify::Deferred => NOTIFY_DEFERRED,
        };
    }

    /// Sets the kind.
    pub fn set_kind(&mut self, kind: MsgKind) {
        self.kind = kind as u8;
    }
    /// Addresses the message to a port.
    pub fn set_dst_port(&mut self, port: u32) {
        self.dst = port.to_le();
        self.flags &= !DST_SERVICE;
    }
    /// Addresses the message to a service.
    pub fn set_dst_service(&mut self, service: u32) {
        self.dst = service.to_le();
        self.flags |= DST_SERVICE;
    }
    /// Stamps the source port (the switch does this; guests' values are overwritten).
    pub fn set_src(&mut self, src: u32) {
        self.src = src.to_le();
    }
    /// Sets the payload length.
    pub fn set_len(&mut self, len: u32) {
        self.len = len.to_le();
    }
    /// Sets the message id.
    pub fn set_msg_id(&mut self, id: u64) {
        self.msg_id = id.to_le();
    }
    /// Sets the request class.
    pub fn set_class(&mut self, class: u8) {
        self.class = class;
    }
    /// Sets the affinity key.
    pub fn set_key(&mut self, key: u32) {
        self.key = key.to_le();
    }
    /// Sets the reply status.
    pub fn set_status(&mut self, status: Status) {
        self.status = (status as u16).to_le();
    }
    /// Sets the cooperative load report (clamped to [`LOAD_MAX`]) and flags it [`LOAD_REPORT`].
    pub fn set_load(&mut self, load: u16) {
        self.load = load.min(LOAD_MAX).to_le();
        self.flags |= LOAD_REPORT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_little_endian_and_documented() {
        let mut h = MsgHeader::request_to_service(0x0102_0304, 0x1122_3344_5566_7788, 5);
        h.set_src(7);
        h.set_class(9);
        h.set_key(0xdead_beef);
        h.set_load(999);
        let b = h.to_bytes();
        assert_eq!(b[0], WIRE_VERSION);
        assert_eq!(b[1], MsgKind::Request as u8);
        assert_eq!(b[2], DST_SERVICE | LOAD_REPORT);
        assert_eq!(b[3], 9);
        assert_eq!(&b[4..8], &[4, 3, 2, 1]);
        assert_eq!(&b[8..12], &[7, 0, 0, 0]);
        assert_eq!(&b[12..16], &[5, 0, 0, 0]);
        assert_eq!(&b[16..24], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[24..28], &0xdead_beefu32.to_le_bytes());
        assert_eq!(&b[30..32], &999u16.to_le_bytes());
        assert_eq!(MsgHeader::parse(&b, 5).unwrap(), h);
    }

    #[test]
    fn validation_errors_are_typed() {
        let h = MsgHeader::new(MsgKind::OneWay, 1, 1, 10);
        let mut b = h.to_bytes();
        assert_eq!(
            MsgHeader::parse(&b[..31], 10),
            Err(WireError::Truncated { available: 31 })
        );
        assert_eq!(
            MsgHeader::parse(&b, 9),
            Err(WireError::LengthPastChain {
                len: 10,
                available: 9
            })
        );
        b[0] = 2;
        assert_eq!(MsgHeader::parse(&b, 10), Err(WireError::BadVersion(2)));
        b[0] = WIRE_VERSION;
        b[1] = 0;
        assert_eq!(MsgHeader::parse(&b, 10), Err(WireError::UnknownKind(0)));
        b[1] = MsgKind::Reply as u8;
        b[2] = 0x80;
        assert_eq!(MsgHeader::parse(&b, 10), Err(WireError::UnknownFlags(0x80)));
    }

    #[test]
    fn a_load_field_is_a_report_only_when_flagged() {
        let mut h = MsgHeader::new(MsgKind::Reply, 1, 1, 0);
        assert_eq!(h.load_report(), None, "0 without the flag claims nothing");
        h.set_load(0);
        assert_eq!(h.load_report(), Some(0));
        h.set_load(5000);
        assert_eq!(h.load_report(), Some(LOAD_MAX));
        let b = h.to_bytes();
        assert_eq!(
            MsgHeader::parse(&b, 0).unwrap().load_report(),
            Some(LOAD_MAX)
        );
    }

    #[test]
    fn notification_flags_round_trip_and_replies_echo_them() {
        let mut h = MsgHeader::new(MsgKind::Request, 1, 1, 0);
        assert_eq!(h.notify(), Notify::PerPoll);
        for n in [Notify::Immediate, Notify::Deferred, Notify::PerPoll] {
            h.set_notify(n);
            let parsed = MsgHeader::parse(&h.to_bytes(), 0).unwrap();
            assert_eq!(parsed.notify(), n);
            assert_eq!(MsgHeader::reply_to(&parsed, Status::Ok, 0).notify(), n);
        }
        h.set_notify(Notify::Deferred);
        assert_eq!(h.to_bytes()[2], NOTIFY_DEFERRED);
        let mut b = h.to_bytes();
        b[2] |= NOTIFY_IMMEDIATE;
        let both = MsgHeader::parse(&b, 0).unwrap();
        assert_eq!(
            both.notify(),
            Notify::Immediate,
            "both flags: immediate wins"
        );
    }

    #[test]
    fn oversized_length_is_rejected_even_if_chain_is_large() {
        let h = MsgHeader::new(MsgKind::OneWay, 1, 1, MAX_PAYLOAD + 1);
        assert!(matches!(
            MsgHeader::parse(&h.to_bytes(), usize::MAX),
            Err(WireError::LengthPastChain { .. })
        ));
    }

    #[test]
    fn reply_echoes_request() {
        let mut req = MsgHeader::request_to_service(3, 42, 8);
        req.set_src(11);
        req.set_class(2);
        let rep = MsgHeader::reply_to(&req, Status::BackendError, 4);
        assert_eq!(rep.kind(), Some(MsgKind::Reply));
        assert_eq!(rep.dst(), 11);
        assert!(!rep.dst_is_service());
        assert_eq!(rep.msg_id(), 42);
        assert_eq!(rep.class(), 2);
        assert_eq!(rep.status(), Some(Status::BackendError));
    }
}
