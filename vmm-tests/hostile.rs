//! Hostile guests on real KVM: one `evil` VM per test, among honest clients and workers, doing
//! one thing a guest controls and should not get away with (`abi::mode::evil`).
//!
//! Each test checks that the switch confined the harm to the evil VM's own port: the port is
//! down with exactly one fault and the guest saw `DEVICE_NEEDS_RESET` (for protocol faults), no
//! other port faulted or went down, every honest client got every reply exactly once, and every
//! request the switch accepted got exactly one answer. Counts only, never time. Without a
//! usable `/dev/kvm` each test prints "skipping" and passes, unless `CI=true` or
//! `VMQ_REQUIRE_KVM=1`.

mod common;

use common::*;
use vmq::abi::image::{driver, evil, exit};
use vmq::abi::mode;
use vmq::runner::RunReport;

/// Requests of each honest client.
const COUNT: u64 = 2000;
/// Requests of the evil VM's honest phase.
const EVIL_COUNT: u64 = 100;
const CLIENTS: [&str; 2] = ["client0", "client1"];

/// Honest clients `client0` and `client1` and an `evil` VM (ports 0, 2 and 1) against service
/// "echo" (workers w0 and w1). `evil_params` go into the evil VM's inline params table after
/// its honest-phase ones; `extra` is more TOML (VMs, services).
fn topology(mode: u64, evil_params: &str, extra: &str) -> String {
    let params = format!(
        "mode = {mode}, service = \"echo\", count = {EVIL_COUNT}, size = 64, window = 16, \
         wait = \"doorbell\"{evil_params}"
    );
    beside_honest_clients(COUNT, "evil", "evil", &params, extra)
}

/// The honest side of every run: clients clean, workers up and healthy, no port but `evil`
/// faulted, every accepted request answered exactly once.
fn assert_others_unharmed(r: &RunReport) {
    assert_clients_clean(r, &CLIENTS, COUNT);
    assert_faults_confined_to(r, "evil");
    for w in ["w0", "w1"] {
        assert_eq!(vm(r, w).outcome, "Stopped", "{w} ran until the end\n{r}");
    }
    // Requests from the honest clients were attributed to them, never to someone else.
    for c in CLIENTS {
        assert_eq!(port(r, c).stats.requests, COUNT, "{c}\n{r}");
    }
}

/// The evil VM broke the ring protocol once: its port alone is down with one fault, it saw
/// DEVICE_NEEDS_RESET, and its honest phase (`sent` requests, `answered` of them answered)
/// went through cleanly first.
fn assert_evil_isolated(r: &RunReport, sent: u64, answered: u64) {
    assert_others_unharmed(r);
    let e = vm(r, "evil");
    assert_eq!(e.exit_status, Some(exit::RING_FAULT), "{r}");
    assert_eq!(
        e.results[evil::result::NEEDS_RESET],
        1,
        "the evil VM saw DEVICE_NEEDS_RESET\n{r}"
    );
    assert_eq!(
        (e.sent, e.received, e.ok),
        (sent, answered, answered),
        "{r}"
    );
    assert_eq!((e.duplicates, e.mismatches), (0, 0), "{r}");
    let ep = port(r, "evil");
    assert!(ep.down, "{r}");
    assert_eq!(ep.stats.faults, 1, "{r}");
    assert_eq!(r.switch.totals.port_faults, 1, "{r}");
    // Nothing of the honest service moved: no failover, no ejection (a port that breaks is
    // ejected from the services it serves, which only the rewrite test's evil VM does).
    let echo = &r.switch.services[0];
    assert_eq!(echo.name, "echo");
    assert_eq!(
        (echo.stats.redispatches, echo.stats.ejections),
        (0, 0),
        "{r}"
    );
    assert_eq!(r.failovers, 0, "{r}");
}

fn protocol_fault(name: &str, mode: u64) {
    if !require_kvm() {
        return;
    }
    let r = run(name, &topology(mode, "", ""));
    assert_evil_isolated(&r, EVIL_COUNT, EVIL_COUNT);
    assert_eq!(vm(&r, "evil").results[evil::result::ATTACKS], 1, "{r}");
}

#[test]
fn a_descriptor_loop_breaks_only_its_own_port() {
    protocol_fault("evil-loop.toml", mode::evil::LOOP);
}

#[test]
fn a_buffer_outside_guest_memory_breaks_only_its_own_port() {
    protocol_fault("evil-outside.toml", mode::evil::OUTSIDE);
}

#[test]
fn a_buffer_in_mmio_space_breaks_only_its_own_port() {
    protocol_fault("evil-mmio.toml", mode::evil::MMIO);
}

#[test]
fn a_giant_buffer_length_breaks_only_its_own_port() {
    protocol_fault("evil-giant.toml", mode::evil::GIANT_LEN);
}

#[test]
fn a_buffer_whose_end_overflows_breaks_only_its_own_port() {
    protocol_fault("evil-overflow.toml", mode::evil::ADDR_OVERFLOW);
}

#[test]
fn an_avail_index_jump_breaks_only_its_own_port() {
    protocol_fault("evil-jump.toml", mode::evil::AVAIL_JUMP);
}

#[test]
fn descriptors_rewritten_after_publishing_change_nothing_or_break_only_their_port() {
    if !require_kvm() {
        return;
    }
    // The evil VM serves "mirror" itself, so that its requests there wait in the switch (held,
    // not yet copied) while it has no rx buffer, and it decides when they go.
    let r = run(
        "evil-rewrite.toml",
        &topology(
            mode::evil::REWRITE,
            ", side_service = \"mirror\", queue_size = 16",
            &format!(
                "[[service]]\nname = \"mirror\"\nfailover = {{ {PATIENT} }}\n\
                 request_timeout_ms = 30000\n{FLAT_HEALTH}\nmembers = [{{ vm = \"evil\" }}]\n"
            ),
        ),
    );
    // Sent: the honest phase, the short chain (answered) and the long one (never delivered).
    assert_evil_isolated(&r, EVIL_COUNT + 2, EVIL_COUNT + 1);
    let e = vm(&r, "evil");
    assert_eq!(
        e.results[evil::result::SNAPSHOT_OK],
        1,
        "a short chain rewritten into a loop outside memory after the switch took it was \
         delivered as it was taken, without a fault\n{r}"
    );
    assert_eq!(e.results[evil::result::ATTACKS], 2, "{r}");
    // The long chain was accepted (it was walked and checked when taken) and then orphaned
    // when its port broke; the fault came from the second walk, at delivery.
    let ep = port(&r, "evil");
    assert_eq!(ep.stats.requests, EVIL_COUNT + 2, "{r}");
    assert_eq!(ep.stats.orphaned, 1, "{r}");
    assert_eq!(r.switch.totals.orphaned, 1, "{r}");
}

#[test]
fn a_forged_source_is_restamped_and_replies_go_to_the_real_sender() {
    if !require_kvm() {
        return;
    }
    // The evil VM claims to be client0 in every request, then sends replies with guessed
    // in-flight tokens although it serves nothing.
    let r = run(
        "evil-forge.toml",
        &topology(mode::evil::FORGE_SRC, ", target = \"client0\"", ""),
    );
    // client0 got exactly its own COUNT replies: none of the evil's (same ids, same payloads)
    // and none of the forged ones.
    assert_others_unharmed(&r);
    let e = vm(&r, "evil");
    assert_eq!(e.exit_status, Some(0), "{r}");
    assert_eq!(
        (e.sent, e.received, e.ok),
        (EVIL_COUNT, EVIL_COUNT, EVIL_COUNT),
        "every reply to the forged-source requests reached the evil VM\n{r}"
    );
    assert_eq!((e.duplicates, e.mismatches), (0, 0), "{r}");
    assert_eq!(
        e.results[evil::result::ATTACKS],
        mode::evil::FORGED_REPLIES,
        "{r}"
    );
    let ep = port(&r, "evil");
    assert_eq!(
        ep.stats.faults, 0,
        "a forged source is not a protocol fault\n{r}"
    );
    assert_eq!(
        ep.stats.requests, EVIL_COUNT,
        "attributed to the evil port\n{r}"
    );
    assert_eq!(r.switch.totals.port_faults, 0, "{r}");
    assert_eq!(
        r.switch.totals.late_replies_dropped,
        mode::evil::FORGED_REPLIES,
        "every forged reply was dropped, none matched a request\n{r}"
    );
}

#[test]
fn a_flooding_guest_does_not_starve_the_others() {
    if !require_kvm() {
        return;
    }
    const FLOOD: u64 = 20_000;
    let r = run(
        "evil-flood.toml",
        &topology(mode::evil::FLOOD, "", "").replace(
            &format!("count = {EVIL_COUNT}, size = 64, window = 16"),
            &format!("count = {FLOOD}, size = 64, window = 0"),
        ),
    );
    assert_others_unharmed(&r);
    let e = vm(&r, "evil");
    assert_eq!(e.exit_status, Some(0), "{r}");
    assert_eq!((e.sent, e.received, e.ok), (FLOOD, FLOOD, FLOOD), "{r}");
    assert_eq!(port(&r, "evil").stats.faults, 0, "{r}");
    assert_eq!(r.switch.totals.port_faults, 0, "{r}");
}

#[test]
fn a_reset_mid_flight_orphans_its_requests_and_the_port_comes_back() {
    if !require_kvm() {
        return;
    }
    // "slow" takes tens of milliseconds per request: the evil VM's batch there is still in
    // flight when it resets its device.
    let r = run(
        "evil-reset.toml",
        &topology(
            mode::evil::RESET,
            ", side_service = \"slow\"",
            &format!(
                "[[vm]]\nname = \"slowpoke\"\nimage = \"worker\"\n\
                 params = {{ wait = \"doorbell\", slow = 1000000 }}\n\
                 [[service]]\nname = \"slow\"\nfailover = {{ {PATIENT} }}\n\
                 request_timeout_ms = 30000\n{FLAT_HEALTH}\nmembers = [{{ vm = \"slowpoke\" }}]\n"
            ),
        ),
    );
    assert_others_unharmed(&r);
    const BATCH: u64 = mode::evil::RESET_BATCH;
    let e = vm(&r, "evil");
    assert_eq!(e.exit_status, Some(0), "{r}");
    assert_eq!(
        e.results[evil::result::REVIVED],
        1,
        "hello after the reset\n{r}"
    );
    let before = e.results[evil::result::BEFORE_RESET];
    // Sent: honest phase, batch, honest phase again, batch again. Received: all but the
    // batch's requests that were in flight at the reset.
    assert_eq!(e.sent, 2 * EVIL_COUNT + 2 * BATCH, "{r}");
    assert_eq!(e.received, 2 * EVIL_COUNT + BATCH + before, "{r}");
    assert_eq!(e.ok, e.received, "{r}");
    assert_eq!((e.duplicates, e.mismatches), (0, 0), "{r}");
    let ep = port(&r, "evil");
    assert_eq!(ep.stats.faults, 0, "a reset is not a fault\n{r}");
    assert_eq!(ep.stats.revivals, 1, "{r}");
    let t = &r.switch.totals;
    assert!(
        before < BATCH,
        "some requests were in flight at the reset\n{r}"
    );
    assert!(t.orphaned >= 1 && t.orphaned <= BATCH - before, "{r}");
    assert_eq!(ep.stats.orphaned, t.orphaned, "{r}");
    // slowpoke answers in order, so it answered every orphaned request before the evil's
    // second batch; each of those answers was dropped.
    assert_eq!(t.late_replies_dropped, t.orphaned, "{r}");
    assert_eq!(t.port_faults, 0, "{r}");
}

#[test]
fn messages_sent_before_a_reset_never_complete_on_the_revived_queues() {
    if !require_kvm() {
        return;
    }
    // slowpoke has four rx buffers and takes tens of milliseconds per request: the evil
    // VM's batch fills them, so its one-way messages to slowpoke wait in slowpoke's backlog,
    // still held in the evil VM's tx queue, when it resets its device. They belong to queues
    // that no longer exist: the switch must neither deliver them from there nor return their
    // descriptors on the queues the evil VM set up after the reset.
    let r = run(
        "evil-reset-stale.toml",
        &topology(
            mode::evil::RESET,
            ", side_service = \"slow\", target = \"slowpoke\"",
            &format!(
                "[[vm]]\nname = \"slowpoke\"\nimage = \"worker\"\n\
                 params = {{ wait = \"doorbell\", slow = 1000000, queue_size = 4 }}\n\
                 [[service]]\nname = \"slow\"\nfailover = {{ {PATIENT} }}\n\
                 request_timeout_ms = 30000\n{FLAT_HEALTH}\nmembers = [{{ vm = \"slowpoke\" }}]\n"
            ),
        ),
    );
    assert_others_unharmed(&r);
    const BATCH: u64 = mode::evil::RESET_BATCH;
    let e = vm(&r, "evil");
    assert_eq!(
        e.exit_status,
        Some(0),
        "the revived queues saw only their own completions\n{r}"
    );
    assert_eq!(e.results[driver::result::RING_ERRORS], 0, "{r}");
    assert_eq!(e.results[evil::result::REVIVED], 1, "{r}");
    assert_eq!(
        e.results[evil::result::ATTACKS],
        1 + mode::evil::RESET_ONEWAYS,
        "{r}"
    );
    let before = e.results[evil::result::BEFORE_RESET];
    assert_eq!(e.received, 2 * EVIL_COUNT + BATCH + before, "{r}");
    assert_eq!(
        (e.ok, e.duplicates, e.mismatches),
        (e.received, 0, 0),
        "{r}"
    );
    // Nothing of the old queues reached slowpoke after the reset: it got no one-way message
    // (it counts any as a ring error).
    assert_eq!(
        vm(&r, "slowpoke").results[driver::result::RING_ERRORS],
        0,
        "{r}"
    );
    let ep = port(&r, "evil");
    assert_eq!((ep.stats.faults, ep.stats.revivals), (0, 1), "{r}");
    assert!(r.switch.totals.orphaned >= 1, "{r}");
    assert!(
        r.switch.totals.oneway_undeliverable >= mode::evil::RESET_ONEWAYS,
        "the stranded one-way messages were counted as undeliverable\n{r}"
    );
}
