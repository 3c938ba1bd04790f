//! The baseline: the same messages through rtrb rings and a relay thread that reads each
//! header, routes and stamps it.

use super::*;

/// The baseline's message: the same header and payload bytes, by value.
#[derive(Clone, Copy)]
#[repr(C)]
struct Msg<const N: usize> {
    hdr: [u8; HEADER_SIZE],
    payload: [u8; N],
}

type RbTx<const N: usize> = rtrb::Producer<Msg<N>>;
type RbRx<const N: usize> = rtrb::Consumer<Msg<N>>;

struct RtrbFrontend<const N: usize> {
    case: Case,
    tx: RbTx<N>,
    /// Replies (request/reply).
    rx: Option<RbRx<N>>,
    payload: [u8; N],
    buf: [u8; N],
    dsts: u32,
    next_dst: u32,
    id: u64,
    limit: u64,
    answered: u64,
    stopped: bool,
}

impl<const N: usize> Side for RtrbFrontend<N> {
    fn step(&mut self, ctl: &Ctl) {
        if let Some(rx) = self.rx.as_mut() {
            let n = rx.slots();
            if n > 0 {
                let chunk = rx.read_chunk(n).expect("slots are readable");
                let mut ids = 0u64;
                {
                    let (a, b) = chunk.as_slices();
                    for m in a.iter().chain(b) {
                        let h = MsgHeader::from_bytes(&m.hdr);
                        assert_eq!(h.status(), Some(Status::Ok), "an Ok reply");
                        self.buf.copy_from_slice(&m.payload);
                        black_box(&self.buf);
                        ids = ids.wrapping_add(h.msg_id());
                    }
                }
                chunk.commit_all();
                self.answered += n as u64;
                ctl.count(n as u64, ids);
            }
        }
        if self.stopped {
            return;
        }
        if self.id >= self.limit || ctl.stop.load(Ordering::Relaxed) {
            ctl.sent.store(self.id, Ordering::Release);
            self.stopped = true;
            return;
        }
        let mut room = self.tx.slots() as u64;
        if self.case == Case::RequestReply {
            // The switch's bound: a frontend's tx ring holds its outstanding requests.
            room = room.min(QUEUE_SIZE as u64 - (self.id - self.answered));
        }
        let n = room.min(BATCH as u64).min(self.limit - self.id) as usize;
        if n == 0 {
            return;
        }
        let chunk = self.tx.write_chunk_uninit(n).expect("slots are free");
        let (case, payload) = (self.case, self.payload);
        let (id, next_dst, dsts) = (&mut self.id, &mut self.next_dst, self.dsts);
        chunk.fill_from_iter((0..n).map(|_| {
            let hdr = match case {
                Case::OneWay => {
                    let d = *next_dst;
                    *next_dst = if d + 1 == dsts { 0 } else { d + 1 };
                    MsgHeader::new(MsgKind::OneWay, 1 + d, *id, N as u32)
                }
                Case::RequestReply => MsgHeader::request_to_service(0, *id, N as u32),
            };
            *id += 1;
            Msg {
                hdr: hdr.to_bytes(),
                payload,
            }
        }));
    }
}

struct RtrbBackend<const N: usize> {
    rx: RbRx<N>,
    /// Replies (request/reply).
    tx: Option<RbTx<N>>,
    buf: [u8; N],
    order: InOrder,
}

impl<const N: usize> Side for RtrbBackend<N> {
    fn step(&mut self, ctl: &Ctl) {
        match self.tx.as_mut() {
            None => {
                let n = self.rx.slots();
                if n == 0 {
                    return;
                }
                let chunk = self.rx.read_chunk(n).expect("slots are readable");
                let mut ids = 0u64;
                {
                    let (a, b) = chunk.as_slices();
                    for m in a.iter().chain(b) {
                        let h = MsgHeader::from_bytes(&m.hdr);
                        ids = ids.wrapping_add(self.order.take(h.msg_id()));
                        self.buf.copy_from_slice(&m.payload);
                        black_box(&self.buf);
                    }
                }
                chunk.commit_all();
                ctl.count(n as u64, ids);
            }
            Some(tx) => {
                let n = self.rx.slots().min(tx.slots());
                if n == 0 {
                    return;
                }
                let chunk = self.rx.read_chunk(n).expect("slots are readable");
                {
                    let (a, b) = chunk.as_slices();
                    let out = tx.write_chunk_uninit(n).expect("slots are free");
                    let buf = &mut self.buf;
                    out.fill_from_iter(a.iter().chain(b).map(|m| {
                        let h = MsgHeader::from_bytes(&m.hdr);
                        buf.copy_from_slice(&m.payload);
                        Msg {
                            hdr: MsgHeader::reply_to(&h, Status::Ok, N as u32).to_bytes(),
                            payload: *buf,
                        }
                    }));
                }
                chunk.commit_all();
            }
        }
    }
}

/// Moves up to [`BATCH`] messages from `input`, each to the output `route` picks (`None`: no
/// room anywhere, stop), with the source stamped. Returns how many it moved.
fn relay<const N: usize>(
    input: &mut RbRx<N>,
    src: u32,
    mut route: impl FnMut(&MsgHeader, &[RbTx<N>]) -> Option<usize>,
    outs: &mut [RbTx<N>],
) -> usize {
    let n = input.slots().min(BATCH as usize);
    if n == 0 {
        return 0;
    }
    let chunk = input.read_chunk(n).expect("slots are readable");
    let mut moved = 0;
    {
        let (a, b) = chunk.as_slices();
        for m in a.iter().chain(b) {
            let mut h = MsgHeader::from_bytes(&m.hdr);
            let Some(o) = route(&h, outs) else { break };
            h.set_src(src);
            if outs[o]
                .push(Msg {
                    hdr: h.to_bytes(),
                    payload: m.payload,
                })
                .is_err()
            {
                break;
            }
            moved += 1;
        }
    }
    chunk.commit(moved);
    moved
}

fn run_rtrb_n<const N: usize>(
    case: Case,
    backends: usize,
    budget: Budget,
    placement: SwitchPlacement,
) -> SwitchRun {
    assert!(backends >= 1, "at least one backend");
    let q = QUEUE_SIZE as usize;
    let (f_tx, mut f_in) = rtrb::RingBuffer::<Msg<N>>::new(q);
    let (mut to_back, mut back_rx): (Vec<RbTx<N>>, Vec<RbRx<N>>) = (0..backends)
        .map(|_| rtrb::RingBuffer::<Msg<N>>::new(q))
        .unzip();
    let echo = case == Case::RequestReply;
    let (mut back_tx, mut back_out): (Vec<Option<RbTx<N>>>, Vec<Option<RbRx<N>>>) = (0..backends)
        .map(|_| {
            if echo {
                let (t, r) = rtrb::RingBuffer::<Msg<N>>::new(q);
                (Some(t), Some(r))
            } else {
                (None, None)
            }
        })
        .unzip();
    let (mut to_front, f_rx) = {
        let (t, r) = rtrb::RingBuffer::<Msg<N>>::new(q);
        (vec![t], echo.then_some(r))
    };
    let front = RtrbFrontend::<N> {
        case,
        tx: f_tx,
        rx: f_rx,
        payload: [0xa5; N],
        buf: [0; N],
        dsts: backends as u32,
        next_dst: 0,
        id: 0,
        limit: limit(budget),
        answered: 0,
        stopped: false,
    };
    let backs =
        back_rx.drain(..).zip(back_tx.drain(..)).enumerate().map(
            |(i, (rx, tx))| RtrbBackend::<N> {
                rx,
                tx,
                buf: [0; N],
                order: InOrder::nth_of(i, backends),
            },
        );
    let sides = Sides::new(front, backs, echo);
    let mut back_out: Vec<RbRx<N>> = back_out.drain(..).flatten().collect();
    drive(budget, placement, sides, move |ctl: &Ctl| {
        let mut s = HubStats::start();
        let mut rr = 0usize;
        while !ctl.done.load(Ordering::Acquire) {
            let moved = match case {
                Case::OneWay => relay(
                    &mut f_in,
                    0,
                    |h, _| Some(h.dst() as usize - 1),
                    &mut to_back,
                ),
                Case::RequestReply => {
                    // Requests: round robin, passing over a full backend ring.
                    let mut moved = relay(
                        &mut f_in,
                        0,
                        |_, outs| {
                            let start = rr;
                            loop {
                                let i = rr;
                                rr = if rr + 1 == backends { 0 } else { rr + 1 };
                                if !outs[i].is_full() {
                                    return Some(i);
                                }
                                if rr == start {
                                    return None;
                                }
                            }
                        },
                        &mut to_back,
                    );
                    for (i, input) in back_out.iter_mut().enumerate() {
                        moved += relay(input, 1 + i as u32, |_, _| Some(0), &mut to_front);
                    }
                    moved
                }
            };
            s.pass(moved);
        }
        s
    })
}

/// Baseline: the same messages through rtrb rings and a relay thread.
pub fn run_rtrb(
    case: Case,
    size: u32,
    backends: usize,
    budget: Budget,
    placement: SwitchPlacement,
) -> SwitchRun {
    match size {
        64 => run_rtrb_n::<64>(case, backends, budget, placement),
        4096 => run_rtrb_n::<4096>(case, backends, budget, placement),
        other => panic!("rtrb relay is built for sizes {SIZES:?}, not {other}"),
    }
}
