//! Commands to a running `vmq serve`: drain a member of a service, reload the configuration.
//!
//! [`Control`] is the handle: `vmq serve`'s SIGHUP, the metrics endpoint's `POST /drain` and
//! `POST /reload`, and tests hold one. A command is a message to the switch thread, which acts
//! on it between two polls (within one loop sleep, 20 ms) and answers; the data path never
//! waits on a lock for it. A reload's file is read and checked by the caller's thread, never
//! the switch thread's.

use std::fmt;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::config::{ServeConfig, ServeConfigError};
use crate::switch::{ReloadStatus, SwitchError};

/// Where a reload reads its configuration: `vmq serve --config FILE` reads the file again and
/// adds the command line's `--vm` and `--metrics`.
#[derive(Clone)]
pub struct ConfigSource {
    /// The file, as errors name it.
    pub file: String,
    /// Reads and checks it.
    pub read: Arc<dyn Fn() -> Result<ServeConfig, ServeConfigError> + Send + Sync>,
}

/// Longest a command waits for the switch thread's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Why a command was refused (or did not finish).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The new configuration is invalid, or asks for what a reload cannot do.
    #[error("reload refused, nothing changed: {0}")]
    Config(#[from] ServeConfigError),
    /// No service of that name runs.
    #[error("no service {0:?} runs here; `vmq stats` lists the services")]
    UnknownService(String),
    /// The VM does not serve the service (or left it).
    #[error(
        "VM {member} is not a member of service {service:?} (or it left already); `vmq stats` \
         lists the members"
    )]
    NotAMember {
        /// The service.
        service: String,
        /// The member's CID.
        member: u64,
    },
    /// A member was not named by its CID.
    #[error("member {0:?}: give the backend VM's CID, a number")]
    BadMember(String),
    /// `vmq serve` was started without a file to read again.
    #[error("nothing to reload: vmq serve was started without --config")]
    NoConfigFile,
    /// A port the reload needs could not be made; nothing changed.
    #[error("reload refused, nothing changed: {0}")]
    Resources(String),
    /// The switch refused a step of a reload that had begun (a bug, not a bad file): what came
    /// before it was applied.
    #[error("reload stopped part way, at {step}: {source}; what came before it was applied")]
    Switch {
        /// The step.
        step: String,
        /// Why.
        source: SwitchError,
    },
    /// The switch thread did not answer.
    #[error("the switch thread did not answer within {0:?}; is vmq serve overloaded or stopping?")]
    NoAnswer(Duration),
    /// The switch thread has stopped.
    #[error("vmq serve is stopping; the command was not run")]
    Stopped,
}

/// A member's drain, as it began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// The service.
    pub service: String,
    /// The member's CID.
    pub member: u64,
    /// Requests it had in flight: it answers them, then leaves.
    pub in_flight: usize,
    /// Requests dispatched to it since it joined: no more are.
    pub dispatched: u64,
    /// Members of the service still taking requests.
    pub active_left: usize,
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {}: member {} drains: {} request(s) in flight, answered before it leaves; \
             {} member(s) take new requests",
            self.service, self.member, self.in_flight, self.active_left
        )?;
        if self.active_left == 0 {
            write!(
                f,
                " (none: new requests wait, then fail back after the deadline)"
            )?;
        }
        Ok(())
    }
}

/// A removed service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedService {
    /// Its name.
    pub name: String,
    /// Its clients' connections that were reset.
    pub clients_reset: u64,
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReloadReport {
    /// Services removed (their clients' connections reset, new ones refused).
    pub removed: Vec<RemovedService>,
    /// Services added.
    pub added: Vec<String>,
    /// Members that joined: service and CID.
    pub joined: Vec<(String, u64)>,
    /// Members that drain (and leave once they answered what they have).
    pub drained: Vec<DrainReport>,
    /// Members with a new weight: service, CID, weight.
    pub reweighted: Vec<(String, u64, f64)>,
    /// Services with their policy set again.
    pub policies: Vec<String>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for r in &self.removed {
            parts.push(format!(
                "service {} removed ({} client connection(s) reset)",
                r.name, r.clients_reset
            ));
        }
        for d in &self.drained {
            parts.push(format!(
                "service {}: member {} drains ({} in flight)",
                d.service, d.member, d.in_flight
            ));
        }
        for (s, cid) in &self.joined {
            parts.push(format!("service {s}: member {cid} joins"));
        }
        for (s, cid, w) in &self.reweighted {
            parts.push(format!("service {s}: member {cid} weight {w}"));
        }
        for s in &self.policies {
            parts.push(format!("service {s}: policy set"));
        }
        for s in &self.added {
            parts.push(format!("service {s} added"));
        }
        if parts.is_empty() {
            return write!(f, "no change");
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// What the switch thread is asked to do; it answers on `reply`.
pub(super) enum Command {
    Drain {
        service: String,
        member: u64,
        reply: Sender<Result<DrainReport, ControlError>>,
    },
    Reload {
        cfg: Box<ServeConfig>,
        file: String,
        reply: Sender<Result<ReloadReport, ControlError>>,
    },
}

/// A handle on a running server's commands. Cheap to clone; any thread may hold one.
#[derive(Clone)]
pub struct Control {
    tx: Sender<Command>,
    source: Option<ConfigSource>,
    status: Arc<Mutex<ReloadStatus>>,
}

impl Control {
    pub(super) fn new(
        tx: Sender<Command>,
        source: Option<ConfigSource>,
        status: Arc<Mutex<ReloadStatus>>,
    ) -> Self {
        Self { tx, source, status }
    }

    /// Drains member `member` (a VM's CID) of service `service`: it gets no new requests,
    /// answers those it has, and leaves (its port is removed, its connections from vmq
    /// closed). Until the next reload: a reload of a file that still lists it adds it back.
    pub fn drain(&self, service: &str, member: u64) -> Result<DrainReport, ControlError> {
        let (reply, answer) = mpsc::channel();
        self.ask(Command::Drain {
            service: service.to_string(),
            member,
            reply,
        })?;
        wait(answer)
    }

    /// Reads the configuration again (the file `vmq serve` was started with) and applies it.
    pub fn reload(&self) -> Result<ReloadReport, ControlError> {
        let Some(source) = &self.source else {
            return Err(self.refused(ControlError::NoConfigFile));
        };
        match (source.read)() {
            Ok(cfg) => self.apply(cfg, &source.file),
            Err(e) => Err(self.refused(e.into())),
        }
    }

    /// Applies `cfg` (read from `file`) as a reload does: checked, compared with what runs,
    /// refused whole if it asks for what a reload cannot do.
    pub fn apply(&self, cfg: ServeConfig, file: &str) -> Result<ReloadReport, ControlError> {
        if let Err(e) = cfg.check(file) {
            return Err(self.refused(e.into()));
        }
        let (reply, answer) = mpsc::channel();
        self.ask(Command::Reload {
            cfg: Box::new(cfg),
            file: file.to_string(),
            reply,
        })?;
        wait(answer)
    }

    fn ask(&self, c: Command) -> Result<(), ControlError> {
        self.tx.send(c).map_err(|_| ControlError::Stopped)
    }

    /// Counts a reload refused before it reached the switch thread.
    fn refused(&self, e: ControlError) -> ControlError {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.refused += 1;
        s.last_ok = false;
        s.last = e.to_string();
        e
    }
}

/// The switch thread's answer, within [`ANSWER_WITHIN`].
fn wait<T>(answer: mpsc::Receiver<Result<T, ControlError>>) -> Result<T, ControlError> {
    match answer.recv_timeout(ANSWER_WITHIN) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(ControlError::NoAnswer(ANSWER_WITHIN)),
        // It dropped the command unanswered: it stopped.
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(ControlError::Stopped),
    }
}

impl crate::metrics::Control for Control {
    fn drain(&self, service: &str, member: &str) -> Result<String, String> {
        let cid = member
            .parse::<u64>()
            .map_err(|_| ControlError::BadMember(member.to_string()).to_string())?;
        Control::drain(self, service, cid)
            .map(|r| r.to_string())
            .map_err(|e| e.to_string())
    }

    fn reload(&self) -> Result<String, String> {
        Control::reload(self)
            .map(|r| format!("reloaded: {r}"))
            .map_err(|e| e.to_string())
    }
}
