//! `vmq serve` as an operator runs it, without guests: SIGHUP reloads its `--config` file,
//! `vmq drain` and `vmq reload` send their commands, and what cannot be reloaded is refused
//! with what to do.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Give-up limit for anything waited for (never a measure of speed).
const PATIENCE: Duration = Duration::from_secs(30);

struct Serve {
    child: Child,
    /// Its stderr, a line at a time.
    lines: Receiver<String>,
    addr: String,
}

impl Serve {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmq"))
            .args(["serve", "--config", &config.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vmq serve starts");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut serve = Self {
            child,
            lines,
            addr: String::new(),
        };
        let line = serve.line_with("metrics on http://");
        serve.addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .expect("an address")
            .to_string();
        serve
    }

    /// The next stderr line that contains `what`.
    fn line_with(&self, what: &str) -> String {
        let give_up = Instant::now() + PATIENCE;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => panic!("vmq serve never said {what:?}"),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with the pid of a child this test spawned and still owns.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(r, 0);
    }

    /// The snapshot once `ready` holds for it.
    fn snapshot_when(&self, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let give_up = Instant::now() + PATIENCE;
        loop {
            // Before the first snapshot (100 ms after start) the endpoint answers 503.
            let v = vmq::metrics::fetch(&self.addr, "/stats.json")
                .ok()
                .map(|text| serde_json::from_str::<serde_json::Value>(&text).unwrap());
            if let Some(v) = v.filter(|v| ready(v)) {
                return v;
            }
            assert!(Instant::now() < give_up, "never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `vmq ARGS --addr ADDR`: exit code, stdout, stderr.
    fn vmq(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_vmq"))
            .args(args)
            .args(["--addr", &self.addr])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, services: &str) -> String {
    config_of(dir, 5, services)
}

/// VMs 3 to `last`, then `services`.
fn config_of(dir: &Path, last: u64, services: &str) -> String {
    let mut text = String::new();
    for cid in 3..=last {
        text += &format!(
            "[[vm]]\ncid = {cid}\nsocket = \"{}\"\n\n",
            dir.join(format!("vm{cid}.sock")).display()
        );
    }
    text + services + "\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
}

fn service(name: &str, cid: u64, members: &str) -> String {
    format!("[[service]]\nname = \"{name}\"\ncid = {cid}\nport = 5000\nmembers = [{members}]\n\n")
}

/// Member `backend` of service `service` in snapshot `v`.
fn member<'a>(
    v: &'a serde_json::Value,
    service: &str,
    backend: &str,
) -> Option<&'a serde_json::Value> {
    v["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)?["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == backend)
}

fn services(v: &serde_json::Value) -> Vec<String> {
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sighup_and_the_commands_reload_and_drain_a_running_serve() {
    let dir: PathBuf = std::env::temp_dir().join(format!("vmq-serve-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("serve.toml");
    std::fs::write(
        &file,
        config(&dir, &service("echo", 100, "{ cid = 4 }, { cid = 5 }")),
    )
    .unwrap();
    let serve = Serve::start(&file);
    serve.snapshot_when(|v| services(v) == ["echo"]);

    // SIGHUP: member 5 leaves echo (it has nothing in flight: it drains and leaves at once),
    // service sea comes.
    let tables = service("echo", 100, "{ cid = 4 }") + &service("sea", 101, "{ cid = 5 }");
    let valid = config(&dir, &tables);
    std::fs::write(&file, &valid).unwrap();
    serve.signal(libc::SIGHUP);
    let said = serve.line_with("reload");
    assert!(
        said.contains("reloaded") && said.contains("service sea added"),
        "{said}"
    );
    let v = serve.snapshot_when(|v| {
        services(v) == ["echo", "sea"]
            && member(v, "echo", "svc-echo-vm5").is_some_and(|m| m["state"] == "gone")
    });
    assert_eq!(v["reload"]["applied"], 1, "{v}");

    // A file that changes the VMs is refused, with what to do; nothing changes.
    std::fs::write(&file, config_of(&dir, 6, &tables)).unwrap();
    serve.signal(libc::SIGHUP);
    let said = serve.line_with("reload");
    assert!(
        said.contains("refused, nothing changed") && said.contains("restart"),
        "{said}"
    );
    let v = serve.snapshot_when(|v| v["reload"]["refused"] == 1);
    assert_eq!(services(&v), ["echo", "sea"]);
    let (code, _, err) = serve.vmq(&["reload"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("VM CID 6 added"), "{err}");

    // vmq drain: sea's member 5 drains and leaves; a wrong name says so.
    let (code, out, err) = serve.vmq(&["drain", "--service", "sea", "--member", "5"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("member 5 drains"), "{out}");
    serve.snapshot_when(|v| member(v, "sea", "svc-sea-vm5").is_some_and(|m| m["state"] == "gone"));
    let (code, _, err) = serve.vmq(&["drain", "--service", "nope", "--member", "5"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no service \"nope\""), "{err}");

    // vmq reload of the valid file again: the member drained by command comes back, as the
    // file lists it.
    std::fs::write(&file, &valid).unwrap();
    let (code, out, err) = serve.vmq(&["reload"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("service sea: member 5 joins"), "{out}");
    serve
        .snapshot_when(|v| member(v, "sea", "svc-sea-vm5").is_some_and(|m| m["state"] == "active"));

    serve.signal(libc::SIGTERM);
    let mut serve = serve;
    let status = serve.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
