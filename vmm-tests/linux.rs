//! Stock Linux guests under QEMU (TCG): the guest image boots and loads its vsock stack, and
//! (ignored unless the peer is installed) two guests and the host exchange data through the
//! peer vhost-user vsock backend, rust-vmm's vhost-device-vsock. Counts and content only: no
//! assertion on time; timeouts are give-up limits.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use common::linux::{
    self, host_connect, host_listen, probe_line, GuestOptions, LinuxGuest, PeerBackend, VsockVm,
};

const T: Duration = Duration::from_secs(120);

/// `out` has the probe's ok line; returns it.
fn ok_line<'a>(g: &LinuxGuest, what: &str, out: &'a str) -> &'a str {
    match probe_line(out) {
        Some(l) if l.starts_with("VMQ-PROBE ok") => l,
        _ => panic!("{what}: no ok line:\n{out}\n{}", g.console_tail(20)),
    }
}

#[test]
fn linux_guest_boots_and_loads_vsock() {
    let Some(assets) = linux::require_linux_or_skip() else {
        return;
    };
    let mut g = LinuxGuest::boot(&assets, &GuestOptions::new("boot-only", None))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = g
        .run_ok("ls /dev/vsock", T)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.trim(), "/dev/vsock");
    let modules = g
        .run_ok("cat /proc/modules", T)
        .unwrap_or_else(|e| panic!("{e}"));
    for m in ["vsock ", "vmw_vsock_virtio_transport ", "virtio_pci "] {
        assert!(
            modules.lines().any(|l| l.starts_with(m)),
            "module {m}not loaded:\n{modules}"
        );
    }
    // The probe itself, over the loopback transport (CID 1): both socket types, and
    // SEQPACKET message sizes from 1 byte to 256 KiB with their boundaries.
    let (code, out) = g.run("vsock-probe bogus", T).unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("VMQ-PROBE fail bogus: unknown command"),
        "{out}"
    );
    for (port, ty) in [(5000, "stream"), (5001, "seqpacket")] {
        let server = g
            .spawn(&format!("vsock-probe serve --port {port} --type {ty}"))
            .unwrap();
        g.wait_output(&server, "VMQ-PROBE listening", T).unwrap();
        let out = g
            .run_ok(
                &format!(
                    "vsock-probe send --cid 1 --port {port} --type {ty} --size 1000 --count 200 --window 4"
                ),
                T,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        ok_line(&g, ty, &out);
        let (code, out) = g.wait_job(&server, T).unwrap();
        assert_eq!(code, 0, "{ty} server:\n{out}");
    }
    let server = g
        .spawn("vsock-probe serve --port 5002 --type seqpacket")
        .unwrap();
    g.wait_output(&server, "VMQ-PROBE listening", T).unwrap();
    let out = g
        .run_ok("vsock-probe sizes --cid 1 --port 5002", T)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", ok_line(&g, "sizes", &out));
    g.shutdown().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
#[ignore = "needs the vhost-device-vsock peer: guest-images/linux/install-peer.sh"]
fn linux_guests_exchange_stream_through_vhost_device_vsock_peer() {
    let Some(assets) = linux::require_linux_or_skip() else {
        return;
    };
    let bin = linux::peer_binary()
        .expect("no peer backend: run guest-images/linux/install-peer.sh first");
    // Unix socket paths must stay short (108 bytes): a folder in /tmp, not in the target dir.
    let dir = PathBuf::from(format!("/tmp/vmq-linux-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (v3, v4) = (VsockVm::new(&dir, 3), VsockVm::new(&dir, 4));
    let mut peer = PeerBackend::start(
        &bin,
        &[v3.clone(), v4.clone()],
        &assets.dir.join("logs/peer.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut guests = linux::boot_all(
        &assets,
        vec![
            GuestOptions::new("peer-cid3", Some(v3.socket.clone())),
            GuestOptions::new("peer-cid4", Some(v4.socket.clone())),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut g4 = guests.pop().unwrap();
    let mut g3 = guests.pop().unwrap();

    // Guest to guest, STREAM: echo round trips, then a one-way blast.
    let server = g4
        .spawn("vsock-probe serve --port 1234 --type stream")
        .unwrap();
    g4.wait_output(&server, "VMQ-PROBE listening", T).unwrap();
    let out = g3
        .run_ok(
            "vsock-probe send --cid 4 --port 1234 --type stream --size 64 --count 2000 --window 4",
            T,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest 3 -> guest 4 echo: {}", ok_line(&g3, "send", &out));
    let (code, out) = g4.wait_job(&server, T).unwrap();
    assert_eq!(code, 0, "server in guest 4:\n{out}");

    let sink = g4
        .spawn("vsock-probe sink --port 1235 --type stream")
        .unwrap();
    g4.wait_output(&sink, "VMQ-PROBE listening", T).unwrap();
    let out = g3
        .run_ok(
            "vsock-probe blast --cid 4 --port 1235 --type stream --size 64 --count 20000",
            T,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    ok_line(&g3, "blast", &out);
    let (code, out) = g4.wait_job(&sink, T).unwrap();
    assert_eq!(code, 0, "sink in guest 4:\n{out}");
    eprintln!("guest 3 -> guest 4 one-way: {}", ok_line(&g4, "sink", &out));

    // The peer has no SEQPACKET: the guest's connect fails (the device did not offer
    // VIRTIO_VSOCK_F_SEQPACKET) and nothing hangs.
    let (code, out) = g3
        .run("vsock-probe sizes --cid 4 --port 1236 --timeout 10", T)
        .unwrap();
    assert_ne!(
        code, 0,
        "SEQPACKET through the peer unexpectedly worked:\n{out}"
    );
    eprintln!("SEQPACKET through the peer: {}", out.trim());

    host_and_guest_over_uds(&mut g3, &mut g4, &v3.uds, &v4.uds);

    assert!(peer.alive(), "the peer died; see {}", peer.log.display());
    g3.shutdown().unwrap_or_else(|e| panic!("{e}"));
    g4.shutdown().unwrap_or_else(|e| panic!("{e}"));
    drop(peer);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Host to guest 4 over its hybrid socket (`CONNECT 1300`, then 100 echoes of 256 B), and guest
/// 3 to the host (CID 2 port 1400 reaches `<uds3>_1400`; 500 echoes of 512 B).
fn host_and_guest_over_uds(g3: &mut LinuxGuest, g4: &mut LinuxGuest, uds3: &Path, uds4: &Path) {
    let server = g4
        .spawn("vsock-probe serve --port 1300 --type stream")
        .unwrap();
    g4.wait_output(&server, "VMQ-PROBE listening", T).unwrap();
    let mut s = host_connect(uds4, 1300, T).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..100u32 {
        let msg: Vec<u8> = (0..256u32).map(|j| (i * 7 + j) as u8).collect();
        s.write_all(&msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg, "echo {i} from guest 4");
    }
    drop(s);
    let (code, out) = g4.wait_job(&server, T).unwrap();
    assert_eq!(code, 0, "server in guest 4:\n{out}");
    let listener = host_listen(uds3, 1400).unwrap();
    let host = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        linux::echo_stream(&mut s).unwrap()
    });
    let out = g3
        .run_ok(
            "vsock-probe send --cid 2 --port 1400 --type stream --size 512 --count 500",
            T,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "guest 3 -> host echo: {}",
        ok_line(g3, "send to host", &out)
    );
    assert_eq!(host.join().unwrap(), 512 * 500);
}

/// Guest `server_g` (CID `cid`) echoes on `port`; guest `client_g` sends 1000 messages of
/// 64 bytes and checks what comes back.
fn echo(server_g: &mut LinuxGuest, client_g: &mut LinuxGuest, cid: u64, port: u32, ty: &str) {
    let job = server_g
        .spawn(&format!("vsock-probe serve --port {port} --type {ty}"))
        .unwrap();
    server_g
        .wait_output(&job, "VMQ-PROBE listening", T)
        .unwrap();
    let out = client_g
        .run_ok(
            &format!(
                "vsock-probe send --cid {cid} --port {port} --type {ty} --size 64 --count 1000 --window 4"
            ),
            T,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{ty} to CID {cid}: {}", ok_line(client_g, ty, &out));
    let (code, out) = server_g.wait_job(&job, T).unwrap();
    assert_eq!(code, 0, "{ty} server in CID {cid}:\n{out}");
}

/// `vmq serve` in this process, serving guests 3 and 4 (one group) on sockets in `dir`, each
/// with a host side at `vm<cid>.vsock`.
fn vmq_server(dir: &std::path::Path) -> vmq::serve::Server {
    let mut cfg = vmq::serve::ServeConfig::default();
    for cid in [3u64, 4] {
        cfg.add_vm_flag(&format!(
            "guest-cid={cid},socket={d}/vm{cid}.sock,uds-path={d}/vm{cid}.vsock,groups=test",
            d = dir.display()
        ))
        .unwrap();
    }
    vmq::serve::Server::start(&cfg).unwrap_or_else(|e| panic!("vmq serve: {e}"))
}

#[test]
fn linux_guests_exchange_stream_and_seqpacket_through_vmq_serve() {
    let Some(assets) = linux::require_linux_or_skip() else {
        return;
    };
    let dir = PathBuf::from(format!("/tmp/vmq-serve-linux-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let server = vmq_server(&dir);
    let mut guests = linux::boot_all(
        &assets,
        vec![
            GuestOptions::new("vmq-cid3", Some(dir.join("vm3.sock"))),
            GuestOptions::new("vmq-cid4", Some(dir.join("vm4.sock"))),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut g4 = guests.pop().unwrap();
    let mut g3 = guests.pop().unwrap();

    // Both ways, both socket types: echo round trips, content and boundaries checked by the
    // probe.
    for (port, ty) in [(1234, "stream"), (1235, "seqpacket")] {
        echo(&mut g4, &mut g3, 4, port, ty);
        echo(&mut g3, &mut g4, 3, port + 10, ty);
    }
    // SEQPACKET message sizes from 1 byte to 64 KiB keep their boundaries.
    let job = g4
        .spawn("vsock-probe serve --port 1236 --type seqpacket")
        .unwrap();
    g4.wait_output(&job, "VMQ-PROBE listening", T).unwrap();
    let out = g3
        .run_ok(
            "vsock-probe sizes --cid 4 --port 1236 --sizes 1,2,63,64,65,4095,4096,4097,65536",
            T,
        )
        .unwrap_or_else(|e| panic!("{e}\ncounters: {:?}", server.counts()));
    eprintln!("SEQPACKET sizes: {}", ok_line(&g3, "sizes", &out));
    // A CID nobody serves: refused at once, never a hang.
    let (code, out) = g3
        .run(
            "vsock-probe send --cid 9 --port 1 --type stream --size 1 --count 1 --timeout 5",
            T,
        )
        .unwrap();
    assert_ne!(code, 0, "a connection to an unknown CID worked:\n{out}");
    host_and_guest_over_uds(
        &mut g3,
        &mut g4,
        &dir.join("vm3.vsock"),
        &dir.join("vm4.vsock"),
    );
    let c = server.counts();
    assert!(c.iter().all(|v| v.malformed == 0), "{c:?}");
    assert!(c.iter().all(|v| v.host_connections == 1), "{c:?}");
    eprintln!("counters: {c:?}");
    g3.shutdown().unwrap_or_else(|e| panic!("{e}"));
    g4.shutdown().unwrap_or_else(|e| panic!("{e}"));
    server.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `vmq demo --linux`'s scenario with one client (`vmq::linux_demo`, the code the demo runs):
/// a `message` service at CID 100 port 5000 over workers 4, 5, 6 (weights 1, 2, 3) for client
/// guest 3, all in one group; 6,000 requests of 64 bytes, 4 outstanding, each echo checked by
/// the client, in order; worker 5's application stops (SIGSTOP inside the guest) once a third
/// of them are answered.
#[test]
fn a_linux_client_gets_every_answer_once_from_a_message_service_when_a_worker_is_stopped() {
    let Some(s) = one_client_demo(vmq::linux_demo::Disruption::Stop) else {
        return;
    };
    let client = &s.clients[0];
    assert_eq!(client.exit_code, 0, "client:\n{}", client.output);
    assert!(client.ok(), "client: no ok line:\n{}", client.output);
    assert_eq!(s.answers, 6000, "one answer per request: {s:?}");
    assert!(
        s.redispatched > 0,
        "the stopped worker's requests moved: {s:?}"
    );
    // The demo's summary says the same.
    assert!(s.stopped_at_answers.is_some(), "{s:?}");
    assert!(s.each_answered_once, "{s:?}");
    assert_eq!((s.requests, s.lost, s.failed_back), (6000, 0, 0), "{s:?}");
    assert!(s.clean(), "{s:?}");
}

/// `vmq demo --linux`'s scenario with one client sending 6,000 requests, worker 5 disrupted
/// as `disruption` says; `None` when Linux guests are not available here (skipped).
fn one_client_demo(
    disruption: vmq::linux_demo::Disruption,
) -> Option<vmq::linux_demo::DemoSummary> {
    let assets = linux::require_linux_or_skip()?;
    let _one_at_a_time = linux::many_guests_lock();
    let cfg = vmq::linux_demo::DemoConfig {
        clients: 1,
        requests_per_client: 6000,
        stopped_worker: 5,
        disruption,
        ..Default::default()
    };
    let s = vmq::linux_demo::run(&assets, &cfg, &mut |l| eprintln!("{l}"))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{s}");
    Some(s)
}

/// The demo's service with one Linux client; worker 5 is drained on purpose a third of the way
/// in (no new request reaches it, it answers what it has and leaves), then a reload of the
/// same configuration brings it back, and it serves again. Nothing is lost or answered twice.
#[test]
fn a_linux_worker_drained_by_command_and_brought_back_by_a_reload_loses_nothing() {
    let Some(s) = one_client_demo(vmq::linux_demo::Disruption::DrainThenRejoin) else {
        return;
    };
    let client = &s.clients[0];
    assert!(client.ok(), "client:\n{}", client.output);
    assert!(s.clean(), "every request answered exactly once: {s:?}");
    let d = s.drain.as_ref().expect("the worker was drained");
    assert_eq!(
        d.picks_while_drained, 0,
        "a drained worker takes no request: {d:?}"
    );
    assert!(d.left, "it answered what it had and left: {d:?}");
    assert!(d.rejoined_at_answers.is_some(), "{d:?}");
    assert!(
        d.picks_after_rejoin > 0,
        "it serves again after the reload: {d:?}"
    );
}

/// Two `connection` services over workers 4, 5, 6 (weights 1, 2, 3, weighted round robin) for
/// client guest 3, all on sockets in `dir`: `conns` at CID 100 port 5000 (the workers' STREAM
/// servers) and `seq` at CID 101 port 6000 (their SEQPACKET servers).
///
/// The spread is the test, not failover: health is flat (every metric weighted 0), the stall
/// window 10 s and the connect timeout 30 s, so the effective weights are the configured
/// ones however slowly the host runs each TCG guest (with the vsock defaults a worker that
/// accepts a few times slower than another scores lower, or is passed over after 1 s).
fn connection_server(dir: &Path) -> vmq::serve::Server {
    let mut text = String::new();
    for cid in [3u64, 4, 5, 6] {
        text += &format!(
            "[[vm]]\ncid = {cid}\nsocket = \"{}/vm{cid}.sock\"\n\n",
            dir.display()
        );
    }
    for (name, cid, port) in [("conns", 100, 5000), ("seq", 101, 6000)] {
        text += &format!(
            "[[service]]\nname = \"{name}\"\ncid = {cid}\nport = {port}\nmode = \"connection\"\n\
             policy = {{ kind = \"wrr\" }}\n\
             health = {{ weights = {{ free_rx = 0.0, drain = 0.0, latency = 0.0, errors = 0.0, \
             in_flight = 0.0, load = 0.0 }} }}\n\
             failover = {{ stall_window_ns = 10000000000 }}\nconnect_timeout_ms = 30000\n\
             members = [{{ cid = 4, weight = 1.0 }}, {{ cid = 5, weight = 2.0 }}, {{ cid = 6, weight = 3.0 }}]\n\n"
        );
    }
    let cfg = vmq::serve::ServeConfig::parse(&text, "connection.toml").unwrap();
    vmq::serve::Server::start(&cfg).unwrap_or_else(|e| panic!("vmq serve: {e}"))
}

/// The `by_cid=4:20,5:40,6:60` field of a probe's ok line, as (CID, connections).
fn by_cid(line: &str) -> Vec<(u64, u64)> {
    let field = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("by_cid="))
        .unwrap_or_else(|| panic!("no by_cid in {line:?}"));
    field
        .split(',')
        .map(|kv| {
            let (c, n) = kv.split_once(':').expect("cid:count");
            (c.parse().unwrap(), n.parse().unwrap())
        })
        .collect()
}

#[test]
fn a_connection_service_spreads_new_stream_connections_by_weight() {
    const N: u64 = 120;
    let Some(assets) = linux::require_linux_or_skip() else {
        return;
    };
    let _one_at_a_time = linux::many_guests_lock();
    let dir = PathBuf::from(format!("/tmp/vmq-serve-conn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let server = connection_server(&dir);
    let mut guests = linux::boot_all(
        &assets,
        [3, 4, 5, 6]
            .iter()
            .map(|cid| {
                GuestOptions::new(
                    &format!("conn-cid{cid}"),
                    Some(dir.join(format!("vm{cid}.sock"))),
                )
            })
            .collect(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut client = guests.remove(0);
    // Each worker: a STREAM echo server that first tells each connection its own CID, and a
    // SEQPACKET echo server.
    let mut jobs = Vec::new();
    for w in guests.iter_mut() {
        let stream = w
            .spawn(
                "vsock-probe serve --port 5000 --type stream --count 0 --announce 1 --timeout 600",
            )
            .unwrap();
        let seq = w
            .spawn("vsock-probe serve --port 6000 --type seqpacket --count 0 --timeout 600")
            .unwrap();
        for job in [&stream, &seq] {
            w.wait_output(job, "VMQ-PROBE listening", T).unwrap();
        }
        jobs.push(stream);
    }
    // N STREAM connections one after another, each checked: the peer is the service's
    // address, the worker says who it is, one echo of 256 bytes.
    let out = client
        .run_ok(
            &format!(
                "vsock-probe conns --cid 100 --port 5000 --type stream --count {N} --size 256"
            ),
            T,
        )
        .unwrap_or_else(|e| panic!("{e}\n{:?}", server.snapshot()));
    let line = ok_line(&client, "conns", &out).to_string();
    eprintln!("client: {line}");
    let by = by_cid(&line);
    let n = |cid: u64| by.iter().find(|x| x.0 == cid).map_or(0, |x| x.1);
    let (a, b, c) = (n(4), n(5), n(6));
    assert_eq!(a + b + c, N, "only the workers served: {by:?}");
    assert!(a > 0 && a < b && b < c, "weights 1:2:3 gave {a}:{b}:{c}");
    // Each worker saw the service's CID as its peer, never the client's.
    for (w, job) in guests.iter_mut().zip(&jobs) {
        let out = w.output(job).unwrap();
        let accepted: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("VMQ-PROBE accepted"))
            .collect();
        assert!(!accepted.is_empty(), "{out}");
        assert!(
            accepted.iter().all(|l| l.contains(" cid=100 ")),
            "a worker saw another peer than the service:\n{out}"
        );
    }
    // SEQPACKET through a connection service: sizes from 1 byte to 64 KiB keep their
    // boundaries.
    let out = client
        .run_ok(
            "vsock-probe sizes --cid 101 --port 6000 --sizes 1,2,63,64,65,4095,4096,4097,65536",
            T,
        )
        .unwrap_or_else(|e| panic!("{e}\n{:?}", server.snapshot()));
    eprintln!("SEQPACKET sizes: {}", ok_line(&client, "sizes", &out));
    // Every connection was accepted once and closed in order; none was reset.
    let give_up = std::time::Instant::now() + T;
    let closed = |s: &vmq::switch::Snapshot| {
        s.ports
            .iter()
            .any(|p| p.name == "svc-conns" && p.counters["closed"] == N)
    };
    let snap = loop {
        match server.snapshot() {
            Some(s) if s.services[0].stats.replies >= N && closed(&s) => break s,
            s if std::time::Instant::now() > give_up => panic!("answers missing: {s:?}"),
            _ => thread::sleep(Duration::from_millis(20)),
        }
    };
    let front = snap.ports.iter().find(|p| p.name == "svc-conns").unwrap();
    eprintln!("front: {:?}", front.counters);
    eprintln!("service: {:?}", snap.services[0].stats);
    let c = &front.counters;
    assert_eq!(c["connections_accepted"], N, "{c:?}");
    assert_eq!(
        c["reset_no_backend"] + c["reset_by_vmq"] + c["reset_by_client"],
        0,
        "{c:?}"
    );
    client.shutdown().unwrap_or_else(|e| panic!("{e}"));
    for g in guests {
        g.shutdown().unwrap_or_else(|e| panic!("{e}"));
    }
    server.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
