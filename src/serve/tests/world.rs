//! The world the service tests run in: a `vmq serve` with one service over played backend
//! VMs, a played client VM, and the loops that drive them (exchange numbered messages, wait for
//! a snapshot).

use std::collections::HashMap;
use std::time::Instant;

use super::app::App;
use super::*;
use crate::vsock::endpoint::EndpointState;

pub(in crate::serve::tests) const SERVICE_CID: u64 = 100;
pub(in crate::serve::tests) const SERVICE_PORT: u32 = 5000;

pub(in crate::serve::tests) fn service_config(
    dir: &Dir,
    workers: &[(u64, f64)],
    extra: &str,
) -> ServeConfig {
    service_config_with(dir, workers, 32, extra)
}

pub(in crate::serve::tests) fn service_config_with(
    dir: &Dir,
    workers: &[(u64, f64)],
    in_flight: u32,
    extra: &str,
) -> ServeConfig {
    let mut text = String::new();
    for cid in std::iter::once(3).chain(workers.iter().map(|w| w.0)) {
        text += &format!(
            "[[vm]]\ncid = {cid}\nsocket = \"{}\"\n\n",
            dir.sock(cid).display()
        );
    }
    text += &format!(
        "[[service]]\nname = \"echo\"\ncid = {SERVICE_CID}\nport = {SERVICE_PORT}\n{extra}\nmembers = ["
    );
    for (cid, w) in workers {
        text += &format!("{{ cid = {cid}, weight = {w}, max_in_flight = {in_flight} }},");
    }
    text += "]\n";
    ServeConfig::parse(&text, "test.toml").expect("a valid config")
}

/// A server with one service over `workers` (CID, weight; `in_flight` each, `extra` lines in
/// its table), client guest 3 and the workers' applications, every device started.
pub(in crate::serve::tests) fn world(
    name: &str,
    workers: &[(u64, f64)],
    in_flight: u32,
    extra: &str,
) -> (Dir, Server, App, Vec<App>) {
    let dir = Dir::new(name);
    let server = Server::start(&service_config_with(&dir, workers, in_flight, extra)).unwrap();
    let client = App::new(&dir, 3, None);
    let apps = workers
        .iter()
        .map(|&(c, _)| App::new(&dir, c, Some(SERVICE_PORT)))
        .collect();
    wait_connected(&server);
    (dir, server, client, apps)
}

/// Runs every app until `done` says so (or the patience runs out).
pub(in crate::serve::tests) fn run_until(
    apps: &mut [&mut App],
    mut done: impl FnMut(&mut [&mut App]) -> bool,
) {
    let give_up = Instant::now() + PATIENCE;
    while !done(apps) {
        assert!(Instant::now() < give_up, "gave up waiting");
        let mut moved = false;
        for a in apps.iter_mut() {
            moved |= a.pump();
        }
        if !moved {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Sends `n` numbered messages from `client` on `conns` connections, `window` outstanding per
/// connection, and checks each answer: the request's bytes plus one byte (the worker's CID),
/// in order. Returns the answers per worker CID.
pub(in crate::serve::tests) fn exchange(
    client: &mut App,
    workers: &mut [App],
    conns: u32,
    n: u32,
    window: u32,
    on_answer: impl FnMut(u32, &mut [App]),
) -> HashMap<u8, u32> {
    let mut by_worker = HashMap::new();
    for per_conn in exchange_per_conn(client, workers, conns, n, window, on_answer) {
        for (w, k) in per_conn {
            *by_worker.entry(w).or_insert(0) += k;
        }
    }
    by_worker
}

/// [`exchange`], with the answers per worker CID of each connection.
pub(in crate::serve::tests) fn exchange_per_conn(
    client: &mut App,
    workers: &mut [App],
    conns: u32,
    n: u32,
    window: u32,
    mut on_answer: impl FnMut(u32, &mut [App]),
) -> Vec<HashMap<u8, u32>> {
    let keys: Vec<_> = (0..conns).map(|_| client.connect()).collect();
    let mut sent = vec![0u32; conns as usize];
    let mut got = vec![0u32; conns as usize];
    let per_conn = n / conns;
    let mut by_worker = vec![HashMap::new(); conns as usize];
    let give_up = Instant::now() + PATIENCE;
    let mut answers = 0;
    while got.iter().sum::<u32>() < per_conn * conns {
        assert!(
            Instant::now() < give_up,
            "answers missing: {got:?} of {per_conn} each"
        );
        for (i, key) in keys.iter().enumerate() {
            let ep = client.eps.get_mut(key).expect("the connection lives");
            assert_ne!(ep.state(), EndpointState::Closed, "connection {i} reset");
            while let Some(m) = ep.read_message() {
                let seq = got[i];
                let want = format!("conn {i} msg {seq}");
                assert_eq!(
                    &m.data[..m.data.len() - 1],
                    want.as_bytes(),
                    "answers in order"
                );
                *by_worker[i].entry(m.data[m.data.len() - 1]).or_insert(0) += 1;
                got[i] += 1;
                answers += 1;
                on_answer(answers, workers);
            }
            while sent[i] < per_conn && sent[i] - got[i] < window {
                let msg = format!("conn {i} msg {}", sent[i]);
                ep.write_message(msg.as_bytes(), true).unwrap();
                sent[i] += 1;
            }
        }
        let mut moved = client.pump();
        for w in workers.iter_mut() {
            moved |= w.pump();
        }
        if !moved {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    by_worker
}

/// The switch's snapshot once `ready` holds for it (it is renewed every 100 ms).
pub(in crate::serve::tests) fn snapshot_when(
    server: &Server,
    mut ready: impl FnMut(&Snapshot) -> bool,
) -> Snapshot {
    let give_up = Instant::now() + PATIENCE;
    loop {
        if let Some(s) = server.snapshot().filter(|s| ready(s)) {
            return s;
        }
        assert!(Instant::now() < give_up, "{:?}", server.snapshot());
        std::thread::sleep(Duration::from_millis(10));
    }
}
