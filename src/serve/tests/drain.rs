//! Draining a member and reloading the configuration lose nothing: VMMs played in Rust, the
//! commands sent as `vmq drain` and `vmq reload` send them, over the metrics endpoint.

use std::collections::HashMap;
use std::time::Instant;

use super::app::App;
use super::world::{run_until, service_config_with, snapshot_when, SERVICE_CID, SERVICE_PORT};
use super::*;
use crate::metrics::{post, MetricsConfig, StatsError};
use crate::vsock::endpoint::EndpointState;

/// A client streaming numbered messages to a service on a few connections, `window`
/// outstanding on each; every answer is checked: the request's bytes and the answering
/// worker's CID, each once, in order, and no connection is reset.
struct Stream {
    tag: &'static str,
    keys: Vec<(u32, u64, u32)>,
    sent: Vec<u32>,
    got: Vec<u32>,
    per_conn: u32,
    window: u32,
    by_worker: HashMap<u8, u32>,
}

impl Stream {
    fn open(client: &mut App, tag: &'static str, cid: u64, conns: usize, per_conn: u32) -> Self {
        Self {
            tag,
            keys: (0..conns)
                .map(|_| client.connect_at(cid, SERVICE_PORT))
                .collect(),
            sent: vec![0; conns],
            got: vec![0; conns],
            per_conn,
            window: 4,
            by_worker: HashMap::new(),
        }
    }

    fn answers(&self) -> u32 {
        self.got.iter().sum()
    }

    fn done(&self) -> bool {
        self.got.iter().all(|&g| g == self.per_conn)
    }

    /// Reads the answers that came, sends what the window allows.
    fn step(&mut self, client: &mut App) {
        for (i, key) in self.keys.iter().enumerate() {
            let ep = client.eps.get_mut(key).expect("the connection lives");
            assert_ne!(ep.state(), EndpointState::Closed, "{} {i} reset", self.tag);
            while let Some(m) = ep.read_message() {
                let want = format!("{} conn {i} msg {}", self.tag, self.got[i]);
                let (body, worker) = m.data.split_at(m.data.len() - 1);
                assert_eq!(body, want.as_bytes(), "answers once each, in order");
                *self.by_worker.entry(worker[0]).or_insert(0) += 1;
                self.got[i] += 1;
            }
            while self.sent[i] < self.per_conn && self.sent[i] - self.got[i] < self.window {
                let msg = format!("{} conn {i} msg {}", self.tag, self.sent[i]);
                ep.write_message(msg.as_bytes(), true).unwrap();
                self.sent[i] += 1;
            }
        }
    }
}

/// Moves the client's streams and every app until `done` holds.
fn drive(
    client: &mut App,
    workers: &mut [App],
    streams: &mut [&mut Stream],
    mut done: impl FnMut(&[App], &[&mut Stream]) -> bool,
) {
    let give_up = Instant::now() + PATIENCE;
    while !done(workers, streams) {
        assert!(Instant::now() < give_up, "gave up waiting");
        for s in streams.iter_mut() {
            s.step(client);
        }
        let mut moved = client.pump();
        for w in workers.iter_mut() {
            moved |= w.pump();
        }
        if !moved {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Whether worker `w`'s application holds messages it has not read (requests in flight).
fn holds_requests(w: &App) -> bool {
    w.eps.values().any(|e| e.messages_ready() > 0)
}

/// Member `name` of service `service` in `s`.
fn member<'a>(
    s: &'a Snapshot,
    service: &str,
    name: &str,
) -> Option<&'a crate::switch::MemberSnapshot> {
    s.services
        .iter()
        .find(|v| v.name == service)?
        .members
        .iter()
        .find(|m| m.name == name)
}

fn port<'a>(s: &'a Snapshot, name: &str) -> &'a crate::switch::PortSnapshot {
    s.ports.iter().find(|p| p.name == name).expect("the port")
}

fn local_metrics() -> Option<MetricsConfig> {
    Some(MetricsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
    })
}

#[test]
fn a_drained_member_answers_what_it_has_takes_nothing_new_and_leaves() {
    let dir = Dir::new("svc-drain");
    // A stall window far beyond the test: what moves requests here is the drain alone.
    let mut cfg = service_config_with(
        &dir,
        &[(4, 1.0), (5, 1.0)],
        32,
        "policy = { kind = \"wrr\" }\nfailover = { stall_window_ns = 30000000000 }",
    );
    cfg.metrics = local_metrics();
    let server = Server::start(&cfg).unwrap();
    let addr = server.metrics_addr().unwrap().to_string();
    let mut client = App::new(&dir, 3, None);
    let mut workers = vec![
        App::new(&dir, 4, Some(SERVICE_PORT)),
        App::new(&dir, 5, Some(SERVICE_PORT)),
    ];
    wait_connected(&server);
    let mut a = Stream::open(&mut client, "a", SERVICE_CID, 2, 300);
    drive(&mut client, &mut workers, &mut [&mut a], |_, s| {
        s[0].answers() >= 100
    });
    // Worker 5's application stops reading until it holds requests: the drain finds it
    // with work in flight.
    workers[1].reading = false;
    drive(&mut client, &mut workers, &mut [&mut a], |w, _| {
        holds_requests(&w[1])
    });

    // What `vmq drain --service echo --member 5` sends.
    let said = post(&addr, "/drain?service=echo&member=5").unwrap();
    assert!(
        said.contains("member 5 drains") && said.contains("1 member(s)"),
        "{said}"
    );
    let snap = snapshot_when(&server, |s| {
        member(s, "echo", "svc-echo-vm5").is_some_and(|m| m.state == "draining")
    });
    let dispatched = member(&snap, "echo", "svc-echo-vm5").unwrap().dispatched;
    workers[1].reading = true;
    drive(&mut client, &mut workers, &mut [&mut a], |_, s| s[0].done());

    // It answered what it had and nothing more came to it; nothing was moved or lost.
    assert_eq!(
        workers[1].answered, dispatched,
        "worker 5 got nothing after the drain"
    );
    assert_eq!(a.by_worker[&5] as u64, dispatched);
    assert_eq!(a.by_worker.values().sum::<u32>(), 600);
    // Then it left: its port is removed and its connections from the service are reset.
    let snap = snapshot_when(&server, |s| {
        member(s, "echo", "svc-echo-vm5").is_some_and(|m| m.state == "gone")
            && port(s, "svc-echo-vm5").down
            && s.services[0].stats.replies == 600
    });
    let svc = &snap.services[0];
    assert_eq!(svc.stats.replies, 600, "{svc:?}");
    assert_eq!(
        (
            svc.stats.redispatches,
            svc.stats.late_replies_dropped,
            svc.stats.failed_back
        ),
        (0, 0, 0),
        "{svc:?}"
    );
    assert_eq!(port(&snap, "svc-echo-vm5").counters["conns_open"], 0);
    assert_eq!(snap.reload.as_ref().unwrap().drains, 1);
    run_until(&mut [&mut workers[1]], |w| w[0].eps.is_empty());
    let text = crate::metrics::fetch(&addr, "/metrics").unwrap();
    assert!(
        text.contains(
            "vmq_backend_state{service=\"echo\",backend=\"svc-echo-vm5\",state=\"gone\"} 1"
        ),
        "{text}"
    );

    // Refusals say why.
    for (path, what) in [
        ("/drain?service=echo&member=5", "not a member"),
        ("/drain?service=nope&member=4", "no service \"nope\""),
        ("/drain?service=echo&member=four", "the backend VM's CID"),
        ("/reload", "without --config"),
    ] {
        match post(&addr, path) {
            Err(StatsError::Status {
                status: 409, body, ..
            }) => {
                assert!(body.contains(what), "{path}: {body}")
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    assert!(matches!(
        post(&addr, "/drain?service=echo"),
        Err(StatsError::Status { status: 400, .. })
    ));
    assert!(matches!(
        crate::metrics::fetch(&addr, "/drain?service=echo&member=4"),
        Err(StatsError::Status { status: 405, .. })
    ));
    server.shutdown().unwrap();
}

/// A config of VMs 3 to 8 (3 the client) and `services`, with the metrics endpoint.
fn reload_config(dir: &Dir, services: &str) -> String {
    let mut text = String::new();
    for cid in 3..=8 {
        text += &format!(
            "[[vm]]\ncid = {cid}\nsocket = \"{}\"\n\n",
            dir.sock(cid).display()
        );
    }
    text += services;
    text += "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    text
}

/// Service `name` at `cid` over `members`, with a stall window far beyond the test.
fn service(name: &str, cid: u64, members: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\ncid = {cid}\nport = {SERVICE_PORT}\n\
         failover = {{ stall_window_ns = 30000000000 }}\nmembers = [{members}]\n\n"
    )
}

#[test]
fn a_reload_adds_and_drains_members_and_services_and_loses_nothing() {
    let dir = Dir::new("svc-reload");
    let file = dir.0.join("serve.toml");
    let before = reload_config(
        &dir,
        &(service("echo", SERVICE_CID, "{ cid = 4 }, { cid = 5 }")
            + &service("bee", 101, "{ cid = 7 }")),
    );
    std::fs::write(&file, &before).unwrap();
    let path = file.display().to_string();
    let source = ConfigSource {
        file: path.clone(),
        read: Arc::new(move || ServeConfig::load(&path)),
    };
    let server =
        Server::start_with(&ServeConfig::load(&source.file).unwrap(), Some(source)).unwrap();
    let addr = server.metrics_addr().unwrap().to_string();
    let mut client = App::new(&dir, 3, None);
    let mut workers: Vec<App> = (4..=8)
        .map(|cid| App::new(&dir, cid, Some(SERVICE_PORT)))
        .collect();
    wait_connected(&server);
    let (w5, w6) = (1, 2);

    // Service bee works, and its connection stays open.
    let mut b = Stream::open(&mut client, "b", 101, 1, 5);
    drive(&mut client, &mut workers, &mut [&mut b], |_, s| s[0].done());
    assert_eq!(b.by_worker[&7], 5);
    // A stream to echo runs across the reload, with worker 5 holding requests.
    let mut a = Stream::open(&mut client, "a", SERVICE_CID, 2, 400);
    drive(&mut client, &mut workers, &mut [&mut a], |_, s| {
        s[0].answers() >= 100
    });
    workers[w5].reading = false;
    drive(&mut client, &mut workers, &mut [&mut a], |w, _| {
        holds_requests(&w[w5])
    });

    // An invalid file is refused and changes nothing.
    std::fs::write(
        &file,
        before.replace("{ cid = 4 }", "{ cid = 4, weight = 0.0 }"),
    )
    .unwrap();
    match post(&addr, "/reload") {
        Err(StatsError::Status {
            status: 409, body, ..
        }) => assert!(
            body.contains("nothing changed") && body.contains("members[0].weight"),
            "{body}"
        ),
        other => panic!("{other:?}"),
    }
    // So is one that changes the VMs, with what to do instead.
    std::fs::write(&file, before.replace("cid = 8\n", "cid = 9\n")).unwrap();
    match post(&addr, "/reload") {
        Err(StatsError::Status {
            status: 409, body, ..
        }) => {
            assert!(
                body.contains("VM CID 9 added") && body.contains("restart"),
                "{body}"
            )
        }
        other => panic!("{other:?}"),
    }
    let snap = snapshot_when(&server, |s| {
        s.reload.as_ref().is_some_and(|r| r.refused == 2)
    });
    let names: Vec<&str> = snap.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["echo", "bee"]);
    assert!(snap.services[0].members.iter().all(|m| m.state == "active"));

    // echo: 6 joins, 5 drains; bee goes; sea comes.
    let after = reload_config(
        &dir,
        &(service("echo", SERVICE_CID, "{ cid = 4 }, { cid = 6 }")
            + &service("sea", 102, "{ cid = 8 }")),
    );
    std::fs::write(&file, after).unwrap();
    let said = post(&addr, "/reload").unwrap();
    for what in [
        "service bee removed (1 client connection(s) reset)",
        "service echo: member 5 drains",
        "service echo: member 6 joins",
        "service sea added",
    ] {
        assert!(said.contains(what), "{what}: {said}");
    }
    let snap = snapshot_when(&server, |s| {
        member(s, "echo", "svc-echo-vm5").is_some_and(|m| m.state == "draining")
    });
    let dispatched_to_5 = member(&snap, "echo", "svc-echo-vm5").unwrap().dispatched;
    workers[w5].reading = true;
    drive(&mut client, &mut workers, &mut [&mut a], |_, s| s[0].done());

    // echo's client saw every answer once, in order, on connections never reset; 6 took
    // requests, 5 only those it had.
    assert_eq!(a.by_worker.values().sum::<u32>(), 800);
    assert!(
        a.by_worker.get(&6).is_some_and(|&n| n > 0),
        "{:?}",
        a.by_worker
    );
    assert_eq!(a.by_worker[&5] as u64, dispatched_to_5);
    assert_eq!(workers[w5].answered, dispatched_to_5);
    assert!(workers[w6].answered > 0);
    // bee's client was reset, and bee's address refuses new connections.
    run_until(&mut [&mut client], |c| !c[0].eps.contains_key(&b.keys[0]));
    let refused = client.connect_at(101, SERVICE_PORT);
    run_until(&mut [&mut client], |c| !c[0].eps.contains_key(&refused));
    // sea answers.
    let mut c = Stream::open(&mut client, "c", 102, 1, 20);
    drive(&mut client, &mut workers, &mut [&mut c], |_, s| s[0].done());
    assert_eq!(c.by_worker[&8], 20);

    let snap = snapshot_when(&server, |s| {
        member(s, "echo", "svc-echo-vm5").is_some_and(|m| m.state == "gone")
            && port(s, "svc-echo-vm5").down
            && s.services[0].stats.replies == 800
    });
    let echo = snap.services.iter().find(|s| s.name == "echo").unwrap();
    assert_eq!(
        (
            echo.stats.replies,
            echo.stats.redispatches,
            echo.stats.late_replies_dropped
        ),
        (800, 0, 0),
        "{echo:?}"
    );
    let names: Vec<&str> = snap.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["echo", "sea"]);
    assert!(port(&snap, "svc-bee").down && port(&snap, "svc-bee-vm7").down);
    assert_eq!(port(&snap, "svc-bee").counters["reset_removed"], 1);
    let r = snap.reload.as_ref().unwrap();
    assert_eq!((r.applied, r.refused, r.last_ok), (1, 2, true), "{r:?}");
    let text = crate::metrics::fetch(&addr, "/metrics").unwrap();
    assert!(
        text.contains("vmq_reloads_total{result=\"applied\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("vmq_reloads_total{result=\"refused\"} 2"),
        "{text}"
    );

    // The same file again changes nothing; bee can come back under its old name.
    assert_eq!(
        post(&addr, "/reload").unwrap().trim(),
        "reloaded: no change"
    );
    let back = server
        .apply(
            ServeConfig::parse(
                &reload_config(
                    &dir,
                    &(service("echo", SERVICE_CID, "{ cid = 4 }, { cid = 6 }")
                        + &service("sea", 102, "{ cid = 8 }")
                        + &service("bee", 101, "{ cid = 7 }, { cid = 5 }")),
                ),
                "t.toml",
            )
            .unwrap(),
        )
        .unwrap();
    assert_eq!(back.added, ["bee"]);
    let mut b = Stream::open(&mut client, "b2", 101, 1, 40);
    drive(&mut client, &mut workers, &mut [&mut b], |_, s| s[0].done());
    assert_eq!(b.by_worker.values().sum::<u32>(), 40);
    server.shutdown().unwrap();
}
