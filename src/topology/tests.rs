//! The topology file's format and checks: what parses, and what is refused with which file,
//! line and field.

use super::*;
use crate::switch::DEFAULT_NOTIFY_DEADLINE_NS;

const IMAGES: &[&str] = &["client", "worker"];

fn err(text: &str) -> String {
    Topology::parse(text, "t.toml", IMAGES)
        .unwrap_err()
        .to_string()
}

#[test]
fn the_demo_parses() {
    let t = Topology::parse(
        super::DEMO_TOML,
        "<demo>",
        &["client", "worker", "peer", "hello"],
    )
    .unwrap();
    assert!(t.vms.len() >= 5);
    assert_eq!(t.services.len(), 1);
}

#[test]
fn the_notification_mix_example_parses() {
    let t = Topology::parse(
        include_str!("../../topologies/notify-mix.toml"),
        "notify-mix.toml",
        &["client", "worker", "peer"],
    )
    .unwrap();
    let rx = t.vms.iter().position(|v| v.name.get_ref() == "rx").unwrap();
    assert_eq!(t.vms[rx].notify_deadline_ns(), 2_000_000);
    let client = t.params_of(0).unwrap();
    assert!(client.contains(&(crate::abi::image::client::param::IMMEDIATE_EVERY, 16)));
}

#[test]
fn a_vm_sets_its_ports_coalescing_deadline_in_range() {
    let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\nnotify_deadline_us = 1000001\n");
    assert!(e.starts_with("t.toml:4: field `notify_deadline_us`"), "{e}");
    let t = Topology::parse(
        "[[vm]]\nname = \"a\"\nimage = \"client\"\nnotify_deadline_us = 250\n\
         [[vm]]\nname = \"b\"\nimage = \"client\"\n",
        "t.toml",
        &["client"],
    )
    .unwrap();
    assert_eq!(t.vms[0].notify_deadline_ns(), 250_000);
    assert_eq!(t.vms[1].notify_deadline_ns(), DEFAULT_NOTIFY_DEADLINE_NS);
}

#[test]
fn errors_name_the_line_and_the_field() {
    let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\nbogus = 1\n");
    assert!(e.starts_with("t.toml:4:"), "{e}");
    assert!(e.contains("bogus"), "{e}");
    let e = err("[[vm]]\nname = \"a\"\nimage = \"nope\"\n");
    assert!(e.starts_with("t.toml:3: field `image`"), "{e}");
    let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\n[[service]]\nname = \"s\"\nmembers = [{ vm = \"b\" }]\n");
    assert!(e.starts_with("t.toml:6: field `vm`"), "{e}");
    let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\nmemory_mib = 3\n");
    assert!(e.starts_with("t.toml:4: field `memory_mib`"), "{e}");
    let e =
        err("[[vm]]\nname = \"a\"\nimage = \"client\"\n[[vm]]\nname = \"a\"\nimage = \"worker\"\n");
    assert!(e.starts_with("t.toml:5: field `name`"), "{e}");
    let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\n[[fault]]\nvm = \"a\"\nslow = 1\nstall_after = 2\n");
    assert!(e.starts_with("t.toml:5: field `fault`"), "{e}");
    let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\n[[vm]]\nname = \"w\"\nimage = \"worker\"\n[[service]]\nname = \"s\"\nmembers = [{ vm = \"w\", weight = -1.0 }]\n");
    assert!(e.starts_with("t.toml:9: field `weight`"), "{e}");
    let e = err("[switch]\nbatch = \"x\"\n[[vm]]\nname = \"a\"\nimage = \"client\"\n");
    assert!(e.starts_with("t.toml:2:"), "{e}");
}

/// A client `c` and a worker `w` (lines 1-6), then `more`.
fn with(more: &str) -> String {
    format!(
        "[[vm]]\nname = \"c\"\nimage = \"client\"\n[[vm]]\nname = \"w\"\nimage = \"worker\"\n{more}"
    )
}

/// A service `s` of worker `w` at line 7, then `more` on lines 10.. .
fn service(more: &str) -> String {
    with(&format!(
        "[[service]]\nname = \"s\"\nmembers = [{{ vm = \"w\" }}]\n{more}"
    ))
}

fn assert_at(e: &str, line: usize, field: &str) {
    let want = format!("t.toml:{line}: field `{field}`");
    assert!(e.starts_with(&want), "want {want:?}, got: {e}");
}

#[test]
fn unknown_keys_are_refused_in_every_table() {
    for (text, line, key) in [
        ("[switch]\nbacth = 4\n", 2, "bacth"),
        ("[switch]\npool = { max_subpool = 4 }\n", 2, "max_subpool"),
        ("[run]\nmax_duration = 4\n", 2, "max_duration"),
        ("[[fault]]\nvm = \"w\"\nstall = 4\n", 3, "stall"),
    ] {
        let e = err(&with(text));
        assert!(e.starts_with(&format!("t.toml:{}:", line + 6)), "{e}");
        assert!(e.contains(key), "{e}");
    }
    for (text, key) in [
        ("health = { threshhold = 0.5 }", "threshhold"),
        ("health = { weights = { eror = 1.0 } }", "eror"),
        ("failover = { stall_windw_ns = 5 }", "stall_windw_ns"),
        ("policy = { kind = \"p2c\", p2c = { bais = 2.0 } }", "bais"),
        (
            "policy = { kind = \"maglev\", maglev = { size = 7 } }",
            "`size`",
        ),
        ("request_timeout = 5", "request_timeout"),
    ] {
        let e = err(&service(text));
        assert!(e.starts_with("t.toml:10:"), "{e}");
        assert!(e.contains(key), "{e}");
    }
}

#[test]
fn switch_settings_are_range_checked_with_their_line() {
    let e = err(&with("[switch]\nsweep_interval_ns = 5\nbatch = 0\n"));
    assert_at(&e, 9, "switch.batch");
    let e = err(&with(
        "[switch]\nbatch = 8\npool = { subpool_size = 1, max_subpools = 4294967295 }\n",
    ));
    assert_at(&e, 9, "switch.pool.max_subpools");
    let e = err(&with("[switch]\nport_request_timeout_ns = 0\n"));
    assert_at(&e, 8, "switch.port_request_timeout_ns");
    let e = err(&with("[run]\nmax_duration_ms = 0\n"));
    assert_at(&e, 8, "run.max_duration_ms");
}

#[test]
fn service_settings_are_range_checked_with_their_line() {
    for (text, field) in [
        ("health = { threshold = nan }", "health.threshold"),
        (
            "health = { threshold = 1.5, rejoin_threshold = 2.0 }",
            "health.threshold",
        ),
        (
            "health = { weights = { errors = -1.0 } }",
            "health.weights.errors",
        ),
        (
            "failover = { stall_window_ns = 0 }",
            "failover.stall_window_ns",
        ),
        (
            "failover = { panic_threshold = 7.0 }",
            "failover.panic_threshold",
        ),
        (
            "failover = { max_ejection_percent = 500 }",
            "failover.max_ejection_percent",
        ),
        (
            "policy = { kind = \"maglev\", maglev = { table_size = 2147483647 } }",
            "policy.maglev.table_size",
        ),
        (
            "policy = { kind = \"maglev\", maglev = { table_size = 4294967291 } }",
            "policy.maglev.table_size",
        ),
        ("policy = { p2c = { bias = -1.0 } }", "policy.p2c.bias"),
        ("request_timeout_ms = 0", "request_timeout_ms"),
        // Used to wrap to 0.45 ms.
        ("request_timeout_ms = 18446744073710", "request_timeout_ms"),
    ] {
        let e = err(&service(text));
        assert_at(&e, 10, field);
    }
    // On its own line inside a multi-line service table.
    let e = err(&service("policy = { kind = \"wrr\" }\nfailover = { stall_window_ns = 5 }\nhealth = { in_flight_limit = 0 }\n"));
    assert_at(&e, 12, "health.in_flight_limit");
}

#[test]
fn guest_parameter_limits_are_checked_before_booting() {
    for (params, field) in [
        ("size = 5000", "size"),
        ("queue_size = 48", "queue_size"),
        ("queue_size = 65536", "queue_size"),
        ("wait = 2", "wait"),
        ("mode = 9", "mode"),
        ("count = 18446744073709551615", "count"),
        ("target = 2", "target"),
        ("target = 18446744073709551615", "target"),
        ("service = 1", "service"),
        ("service = \"nope\"", "service"),
    ] {
        let text = format!(
            "[[vm]]\nname = \"c\"\nimage = \"client\"\nparams = {{ {params} }}\n\
             [[vm]]\nname = \"w\"\nimage = \"worker\"\n\
             [[service]]\nname = \"s\"\nmembers = [{{ vm = \"w\" }}]\n"
        );
        assert_at(&err(&text), 4, field);
    }
    // In range: accepted, and numeric ids resolve.
    let t = Topology::parse(
        &service("").replace(
            "image = \"client\"\n",
            "image = \"client\"\nparams = { service = 0, target = 1, size = 4096, queue_size = 256 }\n",
        ),
        "t.toml",
        IMAGES,
    )
    .unwrap();
    // Numbers (the old form) still name VMs and services, in file order; the guest gets
    // the names.
    let p = t.names_of(0).unwrap();
    assert!(
        p.contains(&(crate::abi::image::client::param::TARGET, "w".to_string())),
        "{p:?}"
    );
    assert!(
        p.contains(&(crate::abi::image::client::param::SERVICE, "s".to_string())),
        "{p:?}"
    );
    assert!(t.params_of(0).unwrap().iter().all(|&(slot, _)| slot
        != crate::abi::image::client::param::TARGET
        && slot != crate::abi::image::client::param::SERVICE));
}

#[test]
fn name_parameters_need_a_directory_a_guest_can_keep() {
    // 120 workers with 8-byte names: 120 x 14 bytes, more than a guest keeps.
    let mut text =
        String::from("[[vm]]\nname = \"c\"\nimage = \"client\"\nparams = { service = \"s\" }\n");
    let mut members = Vec::new();
    for i in 0..120 {
        text += &format!("[[vm]]\nname = \"worker{i:02}\"\nimage = \"worker\"\n");
        members.push(format!("{{ vm = \"worker{i:02}\" }}"));
    }
    text += &format!(
        "[[service]]\nname = \"s\"\nmembers = [{}]\n",
        members.join(", ")
    );
    let e = err(&text);
    assert_at(&e, 4, "service");
    assert!(e.contains("directory"), "{e}");
}

#[test]
fn roles_are_checked() {
    // A client as a service member.
    let e = err(&with(
        "[[service]]\nname = \"s\"\nmembers = [{ vm = \"c\" }]\n",
    ));
    assert_at(&e, 9, "vm");
    assert!(e.contains("is a client"), "{e}");
    // A member twice.
    let e = err(&with(
        "[[service]]\nname = \"s\"\nmembers = [{ vm = \"w\" },\n { vm = \"w\" }]\n",
    ));
    assert_at(&e, 10, "vm");
    // No client: the run could never finish.
    let e = err("[[vm]]\nname = \"w\"\nimage = \"worker\"\n");
    assert_at(&e, 2, "vm");
    assert!(e.contains("never finish"), "{e}");
    // A worker fault on a client.
    let e = err(&with("[[fault]]\nvm = \"c\"\nstall_after = 3\n"));
    assert_at(&e, 9, "stall_after");
    // A built-in image with another role.
    let e = err("[[vm]]\nname = \"c\"\nimage = \"client\"\nrole = \"worker\"\n");
    assert_at(&e, 4, "role");
    // hello has no vmq device.
    let e = Topology::parse(
        "[[vm]]\nname = \"h\"\nimage = \"hello\"\n",
        "t.toml",
        &["client", "worker", "hello"],
    )
    .unwrap_err()
    .to_string();
    assert_at(&e, 3, "image");
    assert!(e.contains("no vmq device"), "{e}");
}

#[test]
fn a_custom_image_needs_a_role() {
    let path = std::env::temp_dir().join(format!("vmq-role-{}.elf", std::process::id()));
    std::fs::write(&path, b"\x7fELF").unwrap();
    let p = path.display();
    let e = err(&format!("[[vm]]\nname = \"c\"\nimage = \"{p}\"\n"));
    assert_at(&e, 3, "role");
    let t = Topology::parse(
        &format!("[[vm]]\nname = \"c\"\nimage = \"{p}\"\nrole = \"client\"\n"),
        "t.toml",
        IMAGES,
    )
    .unwrap();
    assert_eq!(t.role(&t.vms[0]), Role::Client);
    let e = err(&format!(
        "[[vm]]\nname = \"c\"\nimage = \"{p}\"\nrole = \"boss\"\n"
    ));
    assert!(e.starts_with("t.toml:4:"), "{e}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_handoff_table_is_range_checked_with_its_line() {
    let t = Topology::parse(
        &with("[handoff]\nwindow_pages = 64\nmin_bytes = 0\n"),
        "t.toml",
        IMAGES,
    )
    .unwrap();
    let h = t.handoff.unwrap();
    assert_eq!((h.window_pages, h.cap(), h.config().min_bytes), (64, 64, 0));
    let dflt = Topology::parse(&with("[handoff]\n"), "t.toml", IMAGES).unwrap();
    assert_eq!(dflt.handoff.unwrap().config().min_bytes, u64::MAX);
    assert!(Topology::parse(&with(""), "t.toml", IMAGES)
        .unwrap()
        .handoff
        .is_none());
    // Half of a 16 MiB VM is 2048 pages.
    assert_at(
        &err(&with("[handoff]\nwindow_pages = 2049\n")),
        8,
        "handoff.window_pages",
    );
    assert_at(
        &err(&with("[handoff]\nwindow_pages = 0\n")),
        8,
        "handoff.window_pages",
    );
    assert_at(
        &err(&with("[handoff]\nwindow_pages = 8\ncap_pages = 9\n")),
        9,
        "handoff.cap_pages",
    );
    let e = err(&with("[handoff]\nwindow = 8\n"));
    assert!(e.starts_with("t.toml:8:") && e.contains("window"), "{e}");
}

#[test]
fn the_handoff_example_parses() {
    let t = Topology::parse(
        include_str!("../../topologies/handoff.toml"),
        "handoff.toml",
        IMAGES,
    )
    .unwrap();
    let h = t.handoff.unwrap();
    assert_eq!(
        (h.window_pages, h.cap(), h.config().min_bytes),
        (64, 16, 4096)
    );
}

#[test]
fn the_handoff_stream_example_parses() {
    let t = Topology::parse(
        include_str!("../../topologies/handoff-stream.toml"),
        "handoff-stream.toml",
        &["peer"],
    )
    .unwrap();
    assert_eq!(t.handoff.unwrap().config().min_bytes, 0);
}

/// Peers `a` and `b` (b sends nothing), `a`'s params `params`, then `more`.
fn peers(params: &str, memory_mib: u64, more: &str) -> Result<Topology, String> {
    Topology::parse(
        &format!(
            "{more}[[vm]]\nname = \"a\"\nimage = \"peer\"\nmemory_mib = {memory_mib}\n\
             params = {{ target = \"b\", count = 1, {params} }}\n\
             [[vm]]\nname = \"b\"\nimage = \"peer\"\nparams = {{ expect = 1 }}\n"
        ),
        "t.toml",
        &["peer"],
    )
    .map_err(|e| e.to_string())
}

#[test]
fn a_peer_carries_up_to_a_mebibyte_in_the_memory_its_queues_leave() {
    assert!(peers("size = 1048576, queue_size = 4", 64, "").is_ok());
    assert!(peers(
        "size = 65536, mode = 2, queue_size = 16, check_stride = 4096",
        16,
        ""
    )
    .is_ok());
    let e = peers("size = 1048577, queue_size = 4", 64, "").unwrap_err();
    assert!(e.contains("at most 1048576"), "{e}");
    // 256 slots of 1 MiB each way: far more than 64 MiB.
    let e = peers("size = 1048576", 64, "").unwrap_err();
    assert!(e.contains("lower queue_size or raise memory_mib"), "{e}");
    // The hand-off window comes off the top: 4 slots fit 24 MiB, not beside an 8 MiB window.
    assert!(peers("size = 1048576, queue_size = 4", 24, "").is_ok());
    let e = peers(
        "size = 1048576, queue_size = 4",
        24,
        "[handoff]\nwindow_pages = 2048\n",
    )
    .unwrap_err();
    assert!(e.contains("raise memory_mib"), "{e}");
    // A client still carries at most a page.
    let c = Topology::parse(
        "[[vm]]\nname = \"c\"\nimage = \"client\"\nparams = { target = \"c\", size = 8192 }\n",
        "t.toml",
        &["client"],
    )
    .unwrap_err()
    .to_string();
    assert!(c.contains("at most 4096"), "{c}");
}

#[test]
fn a_peer_copies_or_hands_off_and_nothing_else() {
    assert!(peers("mode = 0", 16, "").is_ok());
    assert!(peers("mode = 2", 16, "").is_ok());
    let e = peers("mode = 1", 16, "").unwrap_err();
    assert!(
        e.contains("peer modes are 0 (copy) and 2 (page hand-off)"),
        "{e}"
    );
}
