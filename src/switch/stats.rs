//! Switch counters and the snapshot that prints as a table and as JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use vm_memory::GuestMemoryBackend;

use super::failover::BackendStatus;
use super::service::ServiceStats;
use super::slot::PortStats;
use super::{PortId, Switch};

/// Switch-wide counters. Every accepted request ends in exactly one of `replies_delivered`,
/// `failed_back` or `orphaned`, or is still in flight:
/// `requests_accepted = replies_delivered + failed_back + orphaned + refused + in_flight`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Requests taken from frontends.
    pub requests_accepted: u64,
    /// Replies delivered to frontends.
    pub replies_delivered: u64,
    /// Requests answered by the switch with an error status, counted when the error reaches
    /// the frontend (until then the request is in flight).
    pub failed_back: u64,
    /// Requests dropped because their frontend went away (their late replies are dropped).
    pub orphaned: u64,
    /// Requests refused at once because the in-flight table was full.
    pub refused: u64,
    /// Of `failed_back`: dispatched requests that timed out.
    pub timeouts: u64,
    /// Re-dispatches after an ejection or a broken backend.
    pub redispatches: u64,
    /// Replies dropped because their request was already answered or re-dispatched.
    pub late_replies_dropped: u64,
    /// One-way messages delivered.
    pub oneway_delivered: u64,
    /// One-way messages that could not be delivered (the sender got an error notice).
    pub oneway_undeliverable: u64,
    /// Ports marked broken by a guest fault.
    pub port_faults: u64,
    /// Replies copied out of their backend's queue because their frontend could not take them
    /// yet (the backend's descriptors went back at once).
    pub replies_copied: u64,
    /// Replies whose frontend did not take them before the request's deadline: the backend's
    /// descriptors went back and the frontend gets a `Timeout` error instead.
    pub replies_unread_dropped: u64,
    /// Directory updates queued for live ports because ports or services came or went (at
    /// most one waits per port: a waiting one carries every later change).
    pub directory_updates: u64,
}

/// One port in a snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct PortSnapshot {
    /// Port id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Broken or removed.
    pub down: bool,
    /// Counters.
    #[serde(flatten)]
    pub stats: PortStats,
    /// The counters its kind of port keeps ([`crate::port::Port::counters`]), by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<&'static str, u64>,
}

/// One backend of a service in a snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct MemberSnapshot {
    /// Port id.
    pub port: u32,
    /// Port name.
    pub name: String,
    /// Configured weight.
    pub base_weight: f64,
    /// Effective weight the policy sees (base x health x slow start; 0 out of rotation).
    pub weight: f64,
    /// Health score in [0, 1].
    pub health: f64,
    /// `healthy`, `stalled`, `ejected` or `warming`.
    pub status: &'static str,
    /// `active`, `draining` (takes no new requests, answers what it has) or `gone` (left
    /// the service).
    pub state: &'static str,
    /// Requests dispatched to it.
    pub dispatched: u64,
    /// Its share of the service's dispatches.
    pub share: f64,
    /// Requests in flight.
    pub in_flight: u32,
    /// Sessions its port holds (a `connection` service's established connections), as of the
    /// last sweep.
    pub held: u32,
    /// Drain rate, rx buffers per second.
    pub drain_per_s: f64,
    /// Reply latency EWMA in microseconds.
    pub latency_us: Option<f64>,
    /// Its load reports disagree with the drain the switch observes.
    pub load_report_suspect: bool,
    /// Times its load reports became suspect (the cross-check caught them disagreeing with
    /// the drain the switch observes), over its life in the service.
    pub load_reports_suspected: u64,
}

/// One service in a snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceSnapshot {
    /// Service id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Policy name.
    pub policy: &'static str,
    /// In panic mode (all backends used).
    pub panic: bool,
    /// Requests waiting for a backend.
    pub waiting: usize,
    /// Counters.
    #[serde(flatten)]
    pub stats: ServiceStats,
    /// Backends.
    pub members: Vec<MemberSnapshot>,
}

/// Configuration reloads and commands of the daemon that runs the switch (`vmq serve`), as it
/// reports them in its snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReloadStatus {
    /// Reloads applied.
    pub applied: u64,
    /// Reloads refused (an invalid file, or a change a reload cannot make): nothing changed.
    pub refused: u64,
    /// Members drained by command.
    pub drains: u64,
    /// Whether the last reload was applied (`true` before the first).
    pub last_ok: bool,
    /// What the last reload did, or why it was refused.
    pub last: String,
}

/// A point-in-time view of the switch.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Clock reading.
    pub now_ns: u64,
    /// Requests accepted and not yet answered.
    pub in_flight: usize,
    /// In-flight table subpools.
    pub pool_subpools: usize,
    /// Switch-wide counters.
    pub totals: Totals,
    /// Ports.
    pub ports: Vec<PortSnapshot>,
    /// Services (not those removed).
    pub services: Vec<ServiceSnapshot>,
    /// Reloads and commands, when the daemon running the switch takes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadStatus>,
}

impl<M: GuestMemoryBackend + Clone> Switch<M> {
    /// The switch-wide counters, as [`Switch::snapshot`] reports them, without building the
    /// rest of a snapshot (names, health, shares): cheap enough to read after every operation.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The counters of port `id`, as [`Switch::snapshot`] reports them.
    pub fn port_stats(&self, id: PortId) -> Option<PortStats> {
        self.ports.get(id as usize).map(|p| p.stats)
    }

    /// Counters and current health.
    pub fn snapshot(&self) -> Snapshot {
        let now = self.clock.now_ns();
        let ports = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| PortSnapshot {
                id: i as u32,
                name: p.name.clone(),
                down: p.down,
                stats: p.stats,
                counters: p.port.counters().into_iter().collect(),
            })
            .collect();
        let services =
            self.services
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.removed)
                .map(|(id, s)| {
                    let total: u64 = s.members.iter().map(|m| m.dispatched).sum();
                    let members =
                        s.members
                            .iter()
                            .enumerate()
                            .map(|(i, m)| MemberSnapshot {
                                port: m.port,
                                name: self.ports[m.port as usize].name.clone(),
                                base_weight: m.base_weight,
                                weight: s.candidates[i].weight,
                                health: m.health.last_score(),
                                status: match s.failover.status(i) {
                                    Some(
                                        BackendStatus::Healthy | BackendStatus::Warming { .. },
                                    ) if s.failover.descheduled(i) => "descheduled",
                                    Some(BackendStatus::Healthy) | None => "healthy",
                                    Some(BackendStatus::Stalled) => "stalled",
                                    Some(BackendStatus::Ejected { .. }) => "ejected",
                                    Some(BackendStatus::Warming { .. }) => "warming",
                                },
                                state: m.state.name(),
                                dispatched: m.dispatched,
                                share: if total > 0 {
                                    m.dispatched as f64 / total as f64
                                } else {
                                    0.0
                                },
                                in_flight: m.health.in_flight(),
                                held: m.held,
                                drain_per_s: m.health.drain_per_s(now),
                                latency_us: m.health.latency_ns().map(|l| l / 1e3),
                                load_report_suspect: m.health.load_report_suspect(),
                                load_reports_suspected: m.health.stats().reports_suspected,
                            })
                            .collect();
                    ServiceSnapshot {
                        id: id as u32,
                        name: s.name.clone(),
                        policy: s.policy.name(),
                        panic: s.panic,
                        waiting: s.wait.len(),
                        stats: s.stats,
                        members,
                    }
                })
                .collect();
        Snapshot {
            now_ns: now,
            in_flight: self.inflight.len(),
            pool_subpools: self.inflight.subpools(),
            totals: self.totals,
            ports,
            services,
            reload: None,
        }
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.totals;
        writeln!(
            f,
            "requests {}  replies {}  failed back {}  orphaned {}  in flight {}  redispatched {}  late dropped {}  one-way {} (undeliverable {})  port faults {}",
            t.requests_accepted, t.replies_delivered, t.failed_back, t.orphaned, self.in_flight,
            t.redispatches, t.late_replies_dropped, t.oneway_delivered, t.oneway_undeliverable,
            t.port_faults
        )?;
        if let Some(r) = &self.reload {
            writeln!(
                f,
                "reloads {} (refused {})  drains {}  last reload: {}{}",
                r.applied,
                r.refused,
                r.drains,
                if r.last_ok { "" } else { "REFUSED: " },
                if r.last.is_empty() { "-" } else { &r.last }
            )?;
        }
        for p in self.ports.iter().filter(|p| !p.counters.is_empty()) {
            write!(f, "port {}{}:", p.name, if p.down { " (down)" } else { "" })?;
            for (name, v) in &p.counters {
                write!(f, " {name} {v}")?;
            }
            writeln!(f)?;
        }
        for s in &self.services {
            writeln!(
                f,
                "service {} ({}, {}{}): requests {} replies {} errors {} redispatched {} late {} failed back {} stalls {} ejections {} waiting {}",
                s.name, s.id, s.policy, if s.panic { ", PANIC" } else { "" },
                s.stats.requests, s.stats.replies, s.stats.backend_errors, s.stats.redispatches,
                s.stats.late_replies_dropped, s.stats.failed_back, s.stats.stalls,
                s.stats.ejections, s.waiting
            )?;
            writeln!(
                f,
                "  {:<12} {:>6} {:>8} {:>7} {:>8} {:>7} {:>9} {:>5} {:>10} {:>9}",
                "backend",
                "weight",
                "eff",
                "health",
                "status",
                "share",
                "in-flight",
                "held",
                "drain/s",
                "lat us"
            )?;
            for m in &s.members {
                writeln!(
                    f,
                    "  {:<12} {:>6.1} {:>8.2} {:>7.2} {:>8} {:>6.1}% {:>9} {:>5} {:>10.0} {:>9}{}",
                    m.name,
                    m.base_weight,
                    m.weight,
                    m.health,
                    // A member drained on purpose, or gone, shows that rather than its health.
                    if m.state == "active" {
                        m.status
                    } else {
                        m.state
                    },
                    m.share * 100.0,
                    m.in_flight,
                    m.held,
                    m.drain_per_s,
                    m.latency_us.map_or("-".into(), |l| format!("{l:.1}")),
                    if m.load_report_suspect {
                        "  load report suspect".to_string()
                    } else if m.load_reports_suspected > 0 {
                        format!("  load report suspected {}x", m.load_reports_suspected)
                    } else {
                        String::new()
                    }
                )?;
            }
        }
        Ok(())
    }
}
