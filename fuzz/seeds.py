#!/usr/bin/env python3
"""Writes hand-made seed inputs into corpus/<target>/seed-*.

Each seed is a short, valid program in the target's input language (see src/session.rs,
src/mmio.rs, src/switch.rs): it gets the fuzzer past the first checks (a popped chain, an
activated device, traffic through the switch) so mutations start from deep states.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

u8 = lambda v: struct.pack("<B", v & 0xFF)
u16 = lambda v: struct.pack("<H", v & 0xFFFF)
u32 = lambda v: struct.pack("<I", v & 0xFFFFFFFF)
u64 = lambda v: struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)

# ---- session (chain and mmio) -------------------------------------------------------------

TX, RX = 1, 0
F_NEXT, F_WRITE = 1, 2


def raw(addr, data):
    return u8(0) + u16(addr) + u8(len(data)) + data


def desc(queue, i, addr, length, flags, nxt):
    return (u8(1) + u8(queue) + u8(i) + u8(2) + u16(addr) + u8(1) + u16(length)
            + u8(1) + u8(flags) + u8(1) + u8(nxt))


def avail(queue, head):
    return u8(2) + u8(queue) + u8(1) + u8(head)


def header(addr, kind, length, msg_id=7, dst=1):
    return (u8(4) + u16(addr) + u8(kind) + u8(dst) + u64(msg_id) + u8(1) + u16(length)
            + u8(0))


def pop(n=8):
    return u8(5) + u8(n)


def read(i=0):
    return u8(7) + u8(i) + u8(1)


def to_honest(i=0):
    return u8(8) + u8(i) + u32(0x1234)


def to_hostile(from_chain, length):
    return u8(10) + u8(from_chain) + u16(length)


def complete(i=0):
    return u8(13) + u8(1) + u8(i)


PUB_RX, PUB_TX = u8(11), u8(12)


def post_rx(head, addr, length):
    return [desc(RX, head, addr, length, F_WRITE, 0), avail(RX, head)]


def one_desc_message(head, addr, payload):
    return [header(addr, 3, payload), desc(TX, head, addr, 32 + payload, 0, 0), avail(TX, head)]


def split_message(first, addr, payload, parts):
    """A message whose bytes run over `parts` descriptors (the header split too)."""
    total = 32 + payload
    step = max(1, total // parts)
    out = [header(addr, 3, payload)]
    off = 0
    for k in range(parts):
        n = total - off if k == parts - 1 else step
        last = k == parts - 1
        out.append(desc(TX, first + k, addr + off, n, 0 if last else F_NEXT, first + k + 1))
        off += n
    return out + [avail(TX, first)]


def session_traffic():
    """Programs as lists of operations (the mmio target prefixes each with its own opcode)."""
    m = 0x5000  # message buffers
    r = 0x6000  # rx buffers
    return [
        one_desc_message(0, m, 16) + [pop(), read(), to_honest(), complete(), PUB_TX],
        post_rx(0, r, 200) + [to_hostile(0, 50), PUB_RX] + post_rx(1, r + 0x100, 200)
        + [to_hostile(1, 20), PUB_RX],
        split_message(0, m, 100, 3) + [pop(), read(), to_honest(), complete(), PUB_TX],
        split_message(0, m, 300, 6) + [pop(), read(), to_honest()]
        # Rewrite a descriptor of the held chain, then use it again.
        + [desc(TX, 3, 0xFFF0, 100, F_NEXT, 4), read(), to_honest(), complete()],
        one_desc_message(0, m, 16) + one_desc_message(1, m + 0x100, 40)
        + [pop(), pop(), to_honest(0), to_honest(1), complete(0), complete(0), PUB_TX]
        # Then a bad one.
        + [header(m + 0x200, 3, 500), desc(TX, 2, m + 0x200, 40, 0, 0), avail(TX, 2), pop(),
           read(), complete()],
    ]


def chain_seeds():
    seeds = []
    for cfg in (3, 3 | 0x08, 3 | 0x10, 4 | 0x08):
        for body in session_traffic():
            seeds.append(u8(cfg) + u8(2) + b"".join(body))
    return seeds


# ---- mmio ---------------------------------------------------------------------------------


def bring_up(size_shift=3):
    # features: DEVICE_FEATURES; size: 1 << shift; both queues contiguous and ready.
    return (u8(4) + u8(2) + u8(1) + u8(size_shift) + u8(1) + u8(1) + u8(1) + u8(1))


def mmio_session(ops):
    return b"".join(u8(6) + op for op in ops)


def mmio_seeds():
    seeds = []
    # The session's default rings are at 0x1000 (rx) and 0x3000 (tx) here.
    for body in session_traffic():
        seeds.append(u8(1) + u8(3) + u8(1) + bring_up() + mmio_session(body))
    # Plain register sequences: a read of every register, a reset, a half bring-up.
    regs = list(range(0, 0x100, 4))
    seeds.append(u8(1) + u8(3) + u8(1) + b"".join(u8(0) + u8(1) + u16(r) + u8(4) for r in regs))
    seeds.append(u8(1) + u8(3) + u8(1) + bring_up() + u8(5) + u8(0) + u8(0) + u8(2) + u16(0x64)
                 + u8(4) + u8(2) + u32(2) + bring_up(4))
    return seeds


# ---- switch -------------------------------------------------------------------------------


def sw_header():
    # batch index, small-pool flag, 4 x event_idx, 2 x policy kind.
    return u8(2) + u8(0) + u8(1) * 4 + u8(1) + u8(0)


POLL = u8(11) + u8(0)
RECV = u8(4)


def front_request(length, target):
    return u8(0) + u8(length) + u8(target)


def serve(n=8, status=0):
    return u8(3) + u8(n) + u8(status)


def hostile_answer(port_sel, how):
    return u8(6) + u8(port_sel) + u8(1) + u8(how) + u16(0) + u8(8)


def switch_seeds():
    seeds = []
    base = sw_header()
    traffic = b"".join(front_request(16, t) + POLL + serve() + POLL + RECV for t in range(8))
    seeds.append(base + traffic)
    seeds.append(base + traffic + hostile_answer(1, 2) + POLL + RECV + u8(10) + u8(4) + POLL + RECV)
    seeds.append(base + front_request(8, 0) + front_request(8, 3) + POLL
                 + u8(8) + u8(1) + u8(1) + u8(3) + POLL + serve() + POLL + RECV)
    seeds.append(base + front_request(8, 5) + POLL + u8(9) + u8(1) + hostile_answer(1, 0)
                 + POLL + RECV + u8(10) + u8(5) + POLL + RECV)
    seeds.append(u8(0) + u8(1) + u8(0) * 4 + u8(2) + u8(3)
                 + b"".join(front_request(4, 0) for _ in range(10)) + POLL + serve() + POLL + RECV)
    return seeds


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for i, s in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i:02}"), "wb") as f:
            f.write(s)


if __name__ == "__main__":
    write("chain", chain_seeds())
    write("mmio", mmio_seeds())
    write("switch", switch_seeds())
