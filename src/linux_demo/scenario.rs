//! The demo's cast: which guests, what `vmq serve` serves them, and the commands they run.

use std::path::Path;
use std::time::Duration;

use crate::serve::{ServeConfig, ServeConfigError};
use crate::switch::PolicyKind;

use super::DemoConfig;

/// The service's name, address and port.
pub const SERVICE: &str = "echo";
/// The service's own CID (no VM's): clients connect to `SERVICE_CID:SERVICE_PORT`.
pub const SERVICE_CID: u64 = 100;
/// The port clients connect to and workers listen on.
pub const SERVICE_PORT: u32 = 5000;
/// The workers' CIDs and weights.
pub const WORKERS: [(u64, f64); 3] = [(4, 1.0), (5, 2.0), (6, 3.0)];
/// The clients' CIDs (the first `clients` of them).
pub const CLIENTS: [u64; 2] = [3, 7];
/// Payload of each request, bytes.
pub const SIZE: u32 = 64;
/// Requests each client keeps outstanding.
pub const WINDOW: u32 = 4;
/// The stall window: a TCG guest on two busy cores can take a hundred milliseconds to answer
/// when it is healthy; 300 ms tells a stopped application from a slow one there.
pub const STALL_WINDOW: Duration = Duration::from_millis(300);
/// The probe's give-up limit per blocking call, seconds: the client waits this long for one
/// answer; a worker's connection may idle this long between requests (the pool keeps eight).
pub const PROBE_TIMEOUT_S: u32 = 600;

/// The vhost-user socket of guest `cid` in `dir`.
pub fn socket(dir: &Path, cid: u64) -> std::path::PathBuf {
    dir.join(format!("vm{cid}.sock"))
}

/// What `vmq serve` serves: every guest in one group, and the service over the workers
/// (weighted round robin, so the picks follow the weights 1, 2, 3 while all are healthy).
pub fn serve_config(dir: &Path, cfg: &DemoConfig) -> Result<ServeConfig, ServeConfigError> {
    let mut text = String::new();
    for cid in guest_cids(cfg.clients) {
        text += &format!(
            "[[vm]]\ncid = {cid}\nsocket = \"{}\"\n\n",
            socket(dir, cid).display()
        );
    }
    let members: Vec<String> = WORKERS
        .iter()
        .map(|(cid, w)| format!("{{ cid = {cid}, weight = {w:.1} }}"))
        .collect();
    text += &format!(
        "[[service]]\nname = \"{SERVICE}\"\ncid = {SERVICE_CID}\nport = {SERVICE_PORT}\n\
         members = [{}]\n",
        members.join(", ")
    );
    let mut sc = ServeConfig::parse(&text, "<demo --linux>")?;
    let s = &mut sc.service[0];
    s.policy.kind = PolicyKind::Wrr;
    // The vsock defaults otherwise (ejection 1 s, doubling up to 10 s; latency target 2 ms):
    // what a user's service gets.
    s.failover.stall_window_ns = STALL_WINDOW.as_nanos() as u64;
    s.failover.max_ejection_percent = 50;
    sc.metrics = cfg
        .metrics
        .map(|listen| crate::metrics::MetricsConfig { listen });
    sc.check("<demo --linux>")?;
    Ok(sc)
}

/// Every guest's CID: the clients', then the workers'.
pub fn guest_cids(clients: u32) -> Vec<u64> {
    CLIENTS
        .iter()
        .take(clients as usize)
        .copied()
        .chain(WORKERS.iter().map(|w| w.0))
        .collect()
}

/// A guest's name (its console log is `<name>.console.log`).
pub fn guest_name(cid: u64) -> String {
    if WORKERS.iter().any(|w| w.0 == cid) {
        format!("demo-worker{cid}")
    } else {
        format!("demo-client{cid}")
    }
}

/// The workers' echo server: any number of connections, each message echoed.
pub fn worker_command() -> String {
    format!(
        "vsock-probe serve --port {SERVICE_PORT} --type seqpacket --count 0 --timeout {PROBE_TIMEOUT_S}"
    )
}

/// A client: `count` requests, each answer checked (content and order, so each exactly once).
pub fn client_command(count: u64) -> String {
    format!(
        "vsock-probe send --cid {SERVICE_CID} --port {SERVICE_PORT} --type seqpacket --size {SIZE} \
         --count {count} --window {WINDOW} --timeout {PROBE_TIMEOUT_S}"
    )
}

/// Stops (or resumes) the application in a worker guest.
pub fn signal_command(sig: &str) -> String {
    format!("kill -{sig} $(pidof vsock-probe)")
}
