//! Injected faults on real KVM, each checked against the one promise that matters: every
//! request the switch accepted gets exactly one answer (a reply, or an error status at its
//! deadline) or is orphaned with its frontend, and the in-flight table ends empty.
//!
//! Backends killed mid-request, draining but never answering, answering only with errors, all
//! dead; a frontend that disappears with requests in flight. Counts only, never time. Without
//! a usable `/dev/kvm` each test prints "skipping" and passes, unless `CI=true` or
//! `VMQ_REQUIRE_KVM=1`.

mod common;

use common::*;
use vmq::abi::image::exit;

#[test]
fn a_backend_killed_mid_request_loses_nothing() {
    if !require_kvm() {
        return;
    }
    const COUNT: u64 = 1500;
    // w2 is slow, so it always holds requests when the host kills it.
    let t = format!(
        "{RUN_HEAD}{}{}{}{}[[fault]]\nvm = \"w2\"\nkill_after_ms = 60\n",
        clients(&["client0", "client1"], "echo", COUNT),
        workers(&["w0", "w1"], ""),
        workers(&["w2"], ", slow = 100000"),
        service(
            "echo",
            &["w0", "w1", "w2"],
            &format!("policy = {{ kind = \"wrr\" }}\nfailover = {{ {PATIENT} }}\nrequest_timeout_ms = 30000"),
        ),
    );
    let r = run("fault-kill.toml", &t);
    assert_clients_clean(&r, &["client0", "client1"], COUNT);
    assert_eq!(vm(&r, "w2").exit_status, None, "killed, not exited\n{r}");
    assert!(port(&r, "w2").down, "{r}");
    assert!(
        r.failovers > 0,
        "the killed worker's requests were re-dispatched\n{r}"
    );
    assert_eq!(r.switch.totals.port_faults, 0, "{r}");
}

#[test]
fn a_backend_that_drains_but_never_answers_is_ejected_and_its_requests_fail_over() {
    if !require_kvm() {
        return;
    }
    const COUNT: u64 = 3000;
    const MUTE_AFTER: u64 = 300;
    // As in the stall test: any number of backends may be ejected at once and there is no
    // panic mode, so a healthy worker that the loaded cores delay is handled too.
    let t = format!(
        "{RUN_HEAD}{}{}{}[[fault]]\nvm = \"w2\"\nmute_after = {MUTE_AFTER}\n",
        clients(&["client0", "client1"], "echo", COUNT),
        workers(&["w0", "w1", "w2"], ""),
        service(
            "echo",
            &["w0", "w1", "w2"],
            "policy = { kind = \"wrr\" }\nrequest_timeout_ms = 30000\n\
             failover = { stall_window_ns = 20000000, max_ejection_percent = 100, \
             panic_threshold = 0.0 }",
        ),
    );
    let r = run("fault-mute.toml", &t);
    assert_clients_clean(&r, &["client0", "client1"], COUNT);
    let w2 = vm(&r, "w2");
    assert_eq!(
        w2.sent, MUTE_AFTER,
        "w2 answered exactly what it did before going mute\n{r}"
    );
    assert!(
        w2.received > MUTE_AFTER,
        "w2 went on draining requests it never answered\n{r}"
    );
    assert!(r.ejections >= 1, "{r}");
    assert!(
        r.failovers > 0,
        "its unanswered requests were re-dispatched\n{r}"
    );
    assert!(
        !port(&r, "w2").down,
        "a mute backend breaks no protocol\n{r}"
    );
    assert_eq!(r.switch.totals.port_faults, 0, "{r}");
}

#[test]
fn a_backend_that_only_errors_gives_exactly_one_error_per_request() {
    if !require_kvm() {
        return;
    }
    const COUNT: u64 = 500;
    let t = format!(
        "{RUN_HEAD}{}{}{}[[fault]]\nvm = \"bad\"\nerror_every = 1\n",
        clients(&["client0", "client1"], "echo", COUNT),
        workers(&["bad"], ""),
        service(
            "echo",
            &["bad"],
            &format!("failover = {{ {PATIENT} }}\nrequest_timeout_ms = 30000"),
        ),
    );
    let r = run("fault-errors.toml", &t);
    assert!(!r.timed_out, "{r}");
    for c in ["client0", "client1"] {
        let (ok, errors) = assert_client_answered(&r, c, COUNT);
        assert_eq!((ok, errors), (0, COUNT), "client {c}\n{r}");
    }
    assert_eq!(
        (r.clients.lost, r.clients.duplicates, r.clients.mismatches),
        (0, 0, 0),
        "{r}"
    );
    // Every answer is the worker's own error reply, at once. Once its health score falls below
    // the threshold it is the only backend left, so the service panics and keeps using it
    // rather than holding every request until its deadline: nothing is failed back. (Whether
    // the score has crossed the threshold by the end depends on how fast the run went, so
    // the panic flag itself is not asserted.)
    let bad = vm(&r, "bad");
    let svc = &r.switch.services[0];
    assert_eq!(svc.stats.backend_errors, 2 * COUNT, "{r}");
    assert_eq!(svc.stats.failed_back, 0, "{r}");
    assert_eq!((bad.errors, bad.ok), (2 * COUNT, 0), "{r}");
    assert_every_request_answered_once(&r);
    assert_eq!(r.switch.totals.port_faults, 0, "{r}");
}

#[test]
fn a_frontend_that_disappears_with_requests_in_flight_has_them_orphaned() {
    if !require_kvm() {
        return;
    }
    const COUNT: u64 = 300;
    // "doomed" would send far more than it gets to; the host kills it once the switch took 8
    // of its requests, while they sit at the slow worker (a count, not a time: on a loaded
    // machine a VM may not have sent anything yet a fixed time into the run).
    let t = format!(
        "{RUN_HEAD}{}{}{}{}[[fault]]\nvm = \"doomed\"\nkill_after_requests = 8\n",
        clients(&["client0"], "slow", COUNT),
        clients(&["doomed"], "slow", 1_000_000),
        workers(&["slowpoke"], ", slow = 100000"),
        service(
            "slow",
            &["slowpoke"],
            &format!("failover = {{ {PATIENT} }}\nrequest_timeout_ms = 30000\n{FLAT_HEALTH}"),
        ),
    );
    let r = run("fault-frontend-gone.toml", &t);
    assert!(!r.timed_out, "{r}");
    let (ok, _) = assert_client_answered(&r, "client0", COUNT);
    assert_eq!(ok, COUNT, "{r}");
    let doomed = vm(&r, "doomed");
    assert_eq!(doomed.exit_status, None, "killed, not exited\n{r}");
    let t = &r.switch.totals;
    let dp = port(&r, "doomed");
    assert!(t.orphaned >= 1, "doomed had requests in flight\n{r}");
    assert_eq!(dp.stats.orphaned, t.orphaned, "{r}");
    // Every request doomed got accepted was answered or orphaned, never both.
    assert_eq!(
        dp.stats.requests,
        dp.stats.replies + dp.stats.failed_back + dp.stats.orphaned,
        "{r}"
    );
    assert!(doomed.sent - doomed.received >= t.orphaned, "{r}");
    // slowpoke answers in order and client0 kept it busy past the kill, so every orphaned
    // request was answered, and every such answer dropped.
    assert_eq!(t.late_replies_dropped, t.orphaned, "{r}");
    assert_every_request_answered_once(&r);
    assert_eq!(r.clients.duplicates, 0, "{r}");
    assert_eq!(t.port_faults, 0, "{r}");
}

#[test]
fn when_every_backend_is_dead_requests_fail_back_at_their_deadline() {
    if !require_kvm() {
        return;
    }
    const COUNT: u64 = 100;
    const CRASH_AFTER: u64 = 5;
    // w0 crashes after a few replies; w1 is slow (tens of milliseconds a request) and the
    // host kills it as soon as the run starts.
    let t = format!(
        "{RUN_HEAD}{}{}{}{}[[fault]]\nvm = \"w0\"\ncrash_after = {CRASH_AFTER}\n\
         [[fault]]\nvm = \"w1\"\nkill_after_ms = 1\n",
        clients(&["client0", "client1"], "echo", COUNT),
        workers(&["w0"], ""),
        workers(&["w1"], ", slow = 1000000"),
        service(
            "echo",
            &["w0", "w1"],
            &format!("failover = {{ {PATIENT} }}\nrequest_timeout_ms = 200"),
        ),
    );
    let r = run("fault-all-dead.toml", &t);
    assert!(!r.timed_out, "{r}");
    let mut ok = 0;
    let mut errors = 0;
    for c in ["client0", "client1"] {
        let (o, e) = assert_client_answered(&r, c, COUNT);
        ok += o;
        errors += e;
    }
    assert_eq!(
        (r.clients.lost, r.clients.duplicates, r.clients.mismatches),
        (0, 0, 0),
        "{r}"
    );
    let (w0, w1) = (vm(&r, "w0"), vm(&r, "w1"));
    assert_eq!(w0.exit_status, Some(exit::CRASHED), "{r}");
    assert_eq!(w0.sent, CRASH_AFTER, "{r}");
    // Good replies are exactly the ones the workers sent before dying; every other request
    // was failed back by the switch once its deadline passed.
    assert_eq!(ok, w0.ok + w1.ok, "{r}");
    assert!(errors >= 2 * COUNT - CRASH_AFTER - w1.ok, "{r}");
    assert!(errors > COUNT, "most requests found no backend\n{r}");
    assert_eq!(errors, r.switch.totals.failed_back, "{r}");
    assert_every_request_answered_once(&r);
    assert!(port(&r, "w0").down && port(&r, "w1").down, "{r}");
}
