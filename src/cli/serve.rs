//! `vmq serve` and the commands that talk to a running one: `vmq stats`, `vmq drain`,
//! `vmq reload`.

use std::process::ExitCode;

use crate::emit;

/// `vmq stats`: the table (or JSON) of a running daemon, once or every `watch` seconds.
/// Exit 2 when the daemon cannot be reached.
pub fn stats(addr: &str, watch: Option<u64>, json: bool) -> ExitCode {
    use std::io::IsTerminal;
    let path = if json { "/stats.json" } else { "/stats" };
    let tty = std::io::stdout().is_terminal();
    loop {
        let text = match vmq::metrics::fetch(addr, path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let Some(every) = watch else {
            emit(text.trim_end());
            return ExitCode::SUCCESS;
        };
        if tty && !json {
            // Home and clear, as `watch` does.
            emit(&format!(
                "\x1b[H\x1b[2Jvmq stats {addr}, every {every} s\n\n{}",
                text.trim_end()
            ));
        } else {
            emit(text.trim_end());
            if !json {
                emit("");
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(every));
    }
}

/// `vmq drain` / `vmq reload`: one command to a running daemon; what it answered goes to
/// stdout. Exit 2 when the daemon cannot be reached or refused.
pub fn command(addr: &str, path: &str) -> ExitCode {
    match vmq::metrics::post(addr, path) {
        Ok(text) => {
            emit(text.trim_end());
            ExitCode::SUCCESS
        }
        Err(vmq::metrics::StatsError::Status { body, .. }) => {
            eprintln!("error: {body}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `vmq serve`: serves until SIGINT or SIGTERM, printing the switch's table every
/// `stats_every` seconds (0: never) and, at the end, the table to stderr and its JSON to
/// stdout; with `metrics` (or a `[metrics]` table), serves live stats there too. Exit 0 after
/// a clean stop, 2 when it could not start.
pub fn serve(
    config: Option<&str>,
    vms: &[String],
    stats_every: u64,
    metrics: Option<std::net::SocketAddr>,
) -> ExitCode {
    // The file with the command line's VMs and endpoint: read at start and on each reload.
    let read = {
        let (config, vms) = (config.map(str::to_string), vms.to_vec());
        move || {
            let mut cfg = match &config {
                Some(path) => vmq::serve::ServeConfig::load(path)?,
                None => vmq::serve::ServeConfig::default(),
            };
            for v in &vms {
                cfg.add_vm_flag(v)?;
            }
            if let Some(listen) = metrics {
                cfg.metrics = Some(vmq::metrics::MetricsConfig { listen });
            }
            cfg.check(config.as_deref().unwrap_or("<command line>"))?;
            Ok::<_, vmq::serve::ServeConfigError>(cfg)
        }
    };
    let cfg = read();
    let source = config.map(|file| vmq::serve::ConfigSource {
        file: file.to_string(),
        read: std::sync::Arc::new(read),
    });
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // SIGINT, SIGTERM and SIGHUP are blocked in every thread (the server's threads inherit
    // this mask) and taken here with sigtimedwait.
    let set = super::signals::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    let server = match vmq::serve::Server::start_with(&cfg, source) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "vmq serve: {} VM(s); stop with Ctrl-C or SIGTERM{}",
        cfg.vm.len(),
        if config.is_some() {
            ", reload the config with SIGHUP"
        } else {
            ""
        }
    );
    if let Some(addr) = server.metrics_addr() {
        eprintln!("vmq serve: metrics on http://{addr}/metrics (vmq stats --addr {addr})");
    }
    let sig = loop {
        let wait = libc::timespec {
            tv_sec: if stats_every == 0 {
                libc::time_t::MAX
            } else {
                stats_every.min(libc::time_t::MAX as u64) as libc::time_t
            },
            tv_nsec: 0,
        };
        // SAFETY: `set` was initialised above; `wait` lives across the call; no siginfo wanted.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &wait) };
        if sig == libc::SIGHUP {
            match server.reload() {
                Ok(report) => eprintln!("vmq serve: reloaded: {report}"),
                Err(e) => eprintln!("vmq serve: {e}"),
            }
            continue;
        }
        if sig > 0 {
            break sig;
        }
        if let Some(s) = server.snapshot() {
            eprint!("{s}");
        }
    };
    eprintln!("vmq serve: stopping (signal {sig})");
    let (stopped, snapshot) = server.shutdown_with_snapshot();
    if let Some(s) = snapshot {
        eprint!("{s}");
        emit(&serde_json::to_string_pretty(&s).unwrap_or_default());
    }
    match stopped {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
