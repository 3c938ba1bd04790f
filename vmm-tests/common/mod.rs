//! Helpers shared by the tests on real KVM: inline topologies (built from the pieces below)
//! through `runner::run`, lookups in the report, and the accounting every run must satisfy.
//! Counts only, never time.

#![allow(dead_code)]

pub mod guest;
pub mod linux;

use std::sync::{Mutex, MutexGuard};

use vmq::runner::{self, RunOptions, RunReport, VmReport};
use vmq::switch::{MemberSnapshot, PortSnapshot};
use vmq::topology::Topology;
use vmq::vmm::images;

/// Failover settings for services whose test is not about stalls: a stall window no healthy
/// guest reaches on these shared, loaded cores.
pub const PATIENT: &str = "stall_window_ns = 10000000000";

/// Health weights that keep a backend's score at 1 whatever it does (for services whose only
/// backend is under test for something else).
pub const FLAT_HEALTH: &str = "health = { weights = { free_rx = 0.0, drain = 0.0, latency = 0.0, \
     errors = 0.0, in_flight = 0.0, load = 0.0 } }";

/// The `[run]` table of a whole-run test: at most 60 s, no live progress.
pub const RUN_HEAD: &str = "[run]\nmax_duration_ms = 60000\nprogress_ms = 0\n";

/// `[[vm]]` entries for clients `names`, each sending `count` requests of 64 bytes to
/// `service`, at most 16 outstanding.
pub fn clients(names: &[&str], service: &str, count: u64) -> String {
    names
        .iter()
        .map(|c| {
            format!(
                "[[vm]]\nname = \"{c}\"\nimage = \"client\"\nparams = {{ service = \"{service}\", \
                 count = {count}, size = 64, window = 16, wait = \"doorbell\" }}\n"
            )
        })
        .collect()
}

/// `[[vm]]` entries for workers `names` with extra inline `params` (each starting with `, `).
pub fn workers(names: &[&str], params: &str) -> String {
    names
        .iter()
        .map(|w| {
            format!(
                "[[vm]]\nname = \"{w}\"\nimage = \"worker\"\nparams = {{ wait = \"doorbell\"{params} }}\n"
            )
        })
        .collect()
}

/// A `[[service]]` table named `name` with `members` (weight 1) and more `lines`.
pub fn service(name: &str, members: &[&str], lines: &str) -> String {
    let m: Vec<String> = members
        .iter()
        .map(|w| format!("{{ vm = \"{w}\" }}"))
        .collect();
    format!(
        "[[service]]\nname = \"{name}\"\nmembers = [{}]\n{lines}\n",
        m.join(", ")
    )
}

/// Whether KVM tests can run here; panics where KVM is required (`CI=true`,
/// `VMQ_REQUIRE_KVM=1`).
pub fn require_kvm() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            let required = std::env::var("CI").is_ok_and(|v| v == "true")
                || std::env::var("VMQ_REQUIRE_KVM").is_ok_and(|v| v == "1");
            if required {
                panic!(
                    "/dev/kvm is required (CI=true or VMQ_REQUIRE_KVM=1) but cannot be opened: {e}"
                );
            }
            eprintln!("skipping: /dev/kvm not available ({e})");
            false
        }
    }
}

/// One KVM run at a time in a test binary (a failed test must not poison the others).
pub fn kvm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parses `toml` (errors name `name`), runs it without live progress and prints the summary
/// (shown with `--nocapture`, or when the test fails).
pub fn run(name: &str, toml: &str) -> RunReport {
    run_beside(name, toml, || ())
}

/// [`run`], with what `beside` starts (say, threads that load the CPUs) alive for the run only,
/// under the same one-run-at-a-time lock, so no other test's guests run beside it.
#[allow(dead_code)]
pub fn run_beside<T>(name: &str, toml: &str, beside: impl FnOnce() -> T) -> RunReport {
    let names: Vec<&str> = images::ALL.iter().map(|(n, _)| *n).collect();
    let topo = Topology::parse(toml, name, &names).unwrap_or_else(|e| panic!("{e}"));
    let _guard = kvm_lock();
    let _beside = beside();
    let r = runner::run(&topo, &RunOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("=== {name}\n{r}");
    r
}

pub fn vm<'a>(r: &'a RunReport, name: &str) -> &'a VmReport {
    r.vms
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VM {name} in the report"))
}

pub fn port<'a>(r: &'a RunReport, name: &str) -> &'a PortSnapshot {
    r.switch
        .ports
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no port {name} in the snapshot"))
}

pub fn member<'a>(r: &'a RunReport, service: &str, name: &str) -> &'a MemberSnapshot {
    r.switch
        .services
        .iter()
        .find(|s| s.name == service)
        .and_then(|s| s.members.iter().find(|m| m.name == name))
        .unwrap_or_else(|| panic!("no member {name} of {service} in the snapshot"))
}

/// Every request the switch accepted has exactly one fate, and none is still open: replied,
/// failed back, orphaned (its frontend went away) or refused; the in-flight table is empty.
pub fn assert_every_request_answered_once(r: &RunReport) {
    let t = &r.switch.totals;
    assert_eq!(
        r.switch.in_flight, 0,
        "blocks left in the in-flight table\n{r}"
    );
    assert_eq!(
        t.requests_accepted,
        t.replies_delivered + t.failed_back + t.orphaned + t.refused,
        "the switch's totals do not add up\n{r}"
    );
}

/// Client `c` exited 0 having sent `count` requests and received exactly `count` answers,
/// none twice, none corrupted; returns its (ok, errors).
pub fn assert_client_answered(r: &RunReport, c: &str, count: u64) -> (u64, u64) {
    let v = vm(r, c);
    assert_eq!(v.exit_status, Some(0), "client {c}\n{r}");
    assert_eq!(v.sent, count, "client {c} sent\n{r}");
    assert_eq!(v.received, count, "client {c} answers\n{r}");
    assert_eq!(v.ok + v.errors, count, "client {c}\n{r}");
    assert_eq!((v.duplicates, v.mismatches), (0, 0), "client {c}\n{r}");
    (v.ok, v.errors)
}

/// Every client in `clients` finished with status 0 and `count` good replies, each exactly
/// once; nothing lost, duplicated, corrupted or answered with an error.
pub fn assert_clients_clean(r: &RunReport, clients: &[&str], count: u64) {
    assert!(!r.timed_out, "the run timed out\n{r}");
    for &c in clients {
        let (ok, errors) = assert_client_answered(r, c, count);
        assert_eq!((ok, errors), (count, 0), "client {c}\n{r}");
    }
    assert_eq!(r.clients.lost, 0, "{r}");
    assert_eq!(r.clients.duplicates, 0, "{r}");
    assert_eq!(r.clients.mismatches, 0, "{r}");
    assert_eq!(r.clients.error_replies, 0, "{r}");
    assert_every_request_answered_once(r);
}

/// Honest clients `client0` and `client1` (`count` requests each) with one more VM `name`
/// between them (ports 0, 2 and 1), of image `image` with inline `params`, against service
/// "echo" (workers w0 and w1, a patient failover, a 30 s deadline); `extra` is more TOML.
pub fn beside_honest_clients(
    count: u64,
    name: &str,
    image: &str,
    params: &str,
    extra: &str,
) -> String {
    format!(
        "{RUN_HEAD}{}[[vm]]\nname = \"{name}\"\nimage = \"{image}\"\nparams = {{ {params} }}\n\
         {}{}{}{extra}",
        clients(&["client0"], "echo", count),
        clients(&["client1"], "echo", count),
        workers(&["w0", "w1"], ""),
        service(
            "echo",
            &["w0", "w1"],
            &format!("failover = {{ {PATIENT} }}\nrequest_timeout_ms = 30000"),
        ),
    )
}

/// No port but `bad`'s has a protocol fault, and the workers of [`beside_honest_clients`] are
/// up and healthy.
pub fn assert_faults_confined_to(r: &RunReport, bad: &str) {
    for p in &r.switch.ports {
        if p.name != bad {
            assert_eq!(p.stats.faults, 0, "port {}\n{r}", p.name);
        }
    }
    for w in ["w0", "w1"] {
        assert!(!port(r, w).down, "{w}\n{r}");
        assert_eq!(member(r, "echo", w).status, "healthy", "{w}\n{r}");
    }
}
