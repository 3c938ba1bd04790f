//! `vmq demo --linux`: prepares the Linux guests (saying what to install when it cannot),
//! runs [`vmq::linux_demo`], prints its summary and turns it into the exit status.

use std::net::SocketAddr;
use std::process::ExitCode;

use vmq::linux::{LinuxAssets, PrepareError};
use vmq::linux_demo::{self, DemoConfig, DemoError, Disruption};

/// `vmq demo`'s flags for stock Linux guests.
#[derive(clap::Args, Debug)]
pub struct LinuxOpts {
    /// Stock Linux guests in QEMU (TCG) instead of vmq's own: client VMs send SEQPACKET
    /// requests over AF_VSOCK to a service of `vmq serve` (in this process) over three worker
    /// VMs (weights 1, 2, 3); one worker's application is stopped a third of the way in.
    /// Runs guest-images/linux/prepare.sh first (as root it installs QEMU and busybox).
    #[arg(long, conflicts_with = "console")]
    pub linux: bool,
    /// With --linux: requests each client sends (default 6000).
    #[arg(
        long,
        requires = "linux",
        value_parser = clap::value_parser!(u64).range(1..=linux_demo::MAX_REQUESTS)
    )]
    pub requests: Option<u64>,
    /// With --linux: client VMs, 1 or 2 (default 2).
    #[arg(long, requires = "linux", value_parser = clap::value_parser!(u32).range(1..=2))]
    pub clients: Option<u32>,
    /// With --linux: drain worker 5 on purpose instead of stopping its application (it takes
    /// no new request and answers what it has), then bring it back with a reload.
    #[arg(long, requires = "linux")]
    pub drain: bool,
}

/// Runs the demo: exit 0 when every request was answered exactly once, 1 when anything was
/// lost or a client saw a wrong answer, 2 when it could not run (packages missing, a guest
/// did not boot, interrupted).
pub fn main(o: &LinuxOpts, json: bool, metrics: Option<SocketAddr>) -> ExitCode {
    let cancel = super::signals::stop_flag("vmq demo");
    eprintln!(
        "preparing the Linux guests ({}): quick once done; the first time it installs QEMU \
         and busybox (as root, with apt), downloads a Debian kernel and builds an initramfs",
        vmq::linux::prepare_script().display()
    );
    let assets = match LinuxAssets::prepare(&mut |l| eprintln!("  {l}")) {
        Ok(a) => a,
        Err(_) if cancel.load(std::sync::atomic::Ordering::Relaxed) => {
            eprintln!("error: interrupted while preparing the guests");
            return ExitCode::from(2);
        }
        // prepare.sh's own lines, above, say what to install.
        Err(PrepareError::Missing { script, .. }) => {
            eprintln!(
                "error: the Linux guests need packages this machine cannot install itself: \
                 install what prepare.sh lists above (or run {} as root on a Debian-like \
                 machine), then run `cargo run --release -- demo --linux` again",
                script.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let d = DemoConfig::default();
    let cfg = DemoConfig {
        clients: o.clients.unwrap_or(d.clients),
        requests_per_client: o.requests.unwrap_or(d.requests_per_client),
        disruption: if o.drain {
            Disruption::DrainThenRejoin
        } else {
            Disruption::Stop
        },
        metrics,
        cancel: Some(cancel),
        ..d
    };
    match linux_demo::run(&assets, &cfg, &mut |l| eprintln!("{l}")) {
        Ok(s) => {
            if json {
                crate::emit(&serde_json::to_string(&s).unwrap_or_default());
            } else {
                crate::emit(&s.to_string());
            }
            if s.clean() {
                ExitCode::SUCCESS
            } else {
                eprintln!("vmq demo: not every request was answered exactly once (see above)");
                ExitCode::from(1)
            }
        }
        Err(e @ DemoError::Interrupted) => {
            eprintln!("vmq demo: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["vmq"].iter().chain(args))
    }

    #[test]
    fn linux_flags_need_linux_and_are_checked() {
        let cli = parse(&["demo", "--linux", "--requests", "900", "--clients", "1"]).unwrap();
        let Command::Demo(o) = cli.command else {
            panic!("not demo")
        };
        assert!(o.linux.linux);
        assert_eq!((o.linux.requests, o.linux.clients), (Some(900), Some(1)));
        for bad in [
            &["demo", "--requests", "900"][..],
            &["demo", "--clients", "1"],
            &["demo", "--linux", "--clients", "3"],
            &["demo", "--linux", "--requests", "0"],
            &["demo", "--linux", "--console"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
