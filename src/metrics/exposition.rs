//! A [`Snapshot`] as Prometheus text (format 0.0.4), encoded by `prometheus-client`.
//!
//! Every name starts with `vmq_`; counters end in `_total`. Families, by what they describe:
//!
//! - the switch as a whole (no label): `vmq_switch_<field>_total` for each [`Totals`] field
//!   (`vmq_switch_requests_accepted_total`, `vmq_switch_redispatches_total`, ...), and the
//!   gauges `vmq_switch_in_flight` and `vmq_switch_pool_subpools`;
//! - each port (a VM, a host side; label `port`, its name: `vm3`, `host3`, ...):
//!   `vmq_port_up` (0 while broken or removed), `vmq_port_<field>_total` for each
//!   [`PortStats`] field (`vmq_port_requests_total`, `vmq_port_bytes_sent_total`, ...), and
//!   one family per counter its kind of port keeps ([`crate::port::Port::counters`]): levels
//!   (names `conns_*`, `pending_*`, `staged`, `cid`) as gauges `vmq_port_<name>`
//!   (`vmq_port_conns_established`), every other name as a counter `vmq_port_<name>_total`
//!   (`vmq_port_tx_packets_total`, `vmq_port_rx_stalls_total`). A kind's name that is also a
//!   switch field's becomes `vmq_port_kind_<name>`;
//! - each service (label `service`): `vmq_service_<field>_total` for each [`ServiceStats`]
//!   field (`vmq_service_requests_total`, `vmq_service_ejections_total`, ...), the gauges
//!   `vmq_service_waiting` and `vmq_service_panic` (1 in panic mode), and
//!   `vmq_service_info{policy}` (always 1);
//! - each backend of a service (labels `service`, `backend`): `vmq_backend_dispatched_total`,
//!   the gauges `vmq_backend_health` (0 to 1), `vmq_backend_weight` (effective),
//!   `vmq_backend_base_weight`, `vmq_backend_in_flight`, `vmq_backend_connections_held` (a
//!   `connection` service's established connections), `vmq_backend_drain_per_second`,
//!   `vmq_backend_latency_seconds` (once measured), `vmq_backend_load_report_suspect`, and
//!   the state set `vmq_backend_status{status}`: 1 for its status (`healthy`, `warming`,
//!   `stalled`, `ejected`, `descheduled`), 0 for the others, and the state set
//!   `vmq_backend_state{state}` of its membership (`active`, `draining`, `gone`);
//! - a daemon that reloads its configuration (`vmq serve`): `vmq_reloads_total{result}`
//!   (`applied`, `refused`), `vmq_reload_last_success` (1 when the last was applied) and
//!   `vmq_drains_total` (members drained by command).
//!
//! The values are the snapshot's, unchanged: the sums the snapshot keeps hold here too
//! (`vmq_service_dispatches_total` is the sum of its backends' `vmq_backend_dispatched_total`;
//! requests accepted = replies delivered + failed back + orphaned + refused + in flight).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::switch::{PortStats, ServiceStats, Snapshot, Totals};

/// The `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A snapshot's metrics as Prometheus text (format 0.0.4).
pub fn encode(snapshot: &Snapshot) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("vmq");
    registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// A field of a counters struct: its name (in the struct and in the metric), help, value.
pub(crate) type Field<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Every [`Totals`] field, exported as `vmq_switch_<name>_total`.
pub(crate) const TOTALS: &[Field<Totals>] = &[
    ("requests_accepted", "Requests taken from frontends", |t| {
        t.requests_accepted
    }),
    ("replies_delivered", "Replies delivered to frontends", |t| {
        t.replies_delivered
    }),
    (
        "failed_back",
        "Requests answered by the switch with an error status",
        |t| t.failed_back,
    ),
    (
        "orphaned",
        "Requests dropped because their frontend went away",
        |t| t.orphaned,
    ),
    (
        "refused",
        "Requests refused at once because the in-flight table was full",
        |t| t.refused,
    ),
    (
        "timeouts",
        "Dispatched requests that timed out (part of failed_back)",
        |t| t.timeouts,
    ),
    (
        "redispatches",
        "Failovers: re-dispatches after an ejection or a broken backend",
        |t| t.redispatches,
    ),
    (
        "late_replies_dropped",
        "Replies dropped because their request was already answered or re-dispatched",
        |t| t.late_replies_dropped,
    ),
    ("oneway_delivered", "One-way messages delivered", |t| {
        t.oneway_delivered
    }),
    (
        "oneway_undeliverable",
        "One-way messages that could not be delivered",
        |t| t.oneway_undeliverable,
    ),
    ("port_faults", "Ports marked broken by a guest fault", |t| {
        t.port_faults
    }),
    (
        "replies_copied",
        "Replies copied out of their backend's queue to wait for their frontend",
        |t| t.replies_copied,
    ),
    (
        "replies_unread_dropped",
        "Replies their frontend did not take before the request's deadline",
        |t| t.replies_unread_dropped,
    ),
    (
        "directory_updates",
        "Directory updates queued for ports (ports or services came or went)",
        |t| t.directory_updates,
    ),
];

/// Every [`PortStats`] field, exported as `vmq_port_<name>_total`.
pub(crate) const PORT_STATS: &[Field<PortStats>] = &[
    ("sent", "Messages taken from the port", |p| p.sent),
    ("received", "Messages delivered into the port", |p| {
        p.received
    }),
    ("bytes_sent", "Payload bytes sent by the port", |p| {
        p.bytes_sent
    }),
    (
        "bytes_received",
        "Payload bytes delivered into the port",
        |p| p.bytes_received,
    ),
    ("requests", "Requests the port sent", |p| p.requests),
    ("replies", "Replies delivered to the port", |p| p.replies),
    (
        "failed_back",
        "Requests of the port failed back with an error status",
        |p| p.failed_back,
    ),
    (
        "undeliverable",
        "One-way messages it sent that could not be delivered",
        |p| p.undeliverable,
    ),
    (
        "orphaned",
        "Replies for the port dropped because it went away or broke",
        |p| p.orphaned,
    ),
    (
        "faults",
        "Protocol faults (it broke the queue or header rules)",
        |p| p.faults,
    ),
    ("notifies", "Notifications sent to its guest", |p| {
        p.notifies
    }),
    ("revivals", "Times it came back after going down", |p| {
        p.revivals
    }),
    (
        "notices_dropped",
        "Error notices dropped because a queue's worth already waited",
        |p| p.notices_dropped,
    ),
    (
        "notifies_immediate",
        "Notifications sent at once for an immediate message",
        |p| p.notifies_immediate,
    ),
    (
        "notifies_withheld",
        "Notifications withheld because only deferred messages were new",
        |p| p.notifies_withheld,
    ),
    (
        "notifies_deadline",
        "Withheld notifications sent at the port's coalescing deadline",
        |p| p.notifies_deadline,
    ),
];

/// Every [`ServiceStats`] field, exported as `vmq_service_<name>_total`.
pub(crate) const SERVICE_STATS: &[Field<ServiceStats>] = &[
    ("requests", "Requests addressed to the service", |s| {
        s.requests
    }),
    (
        "dispatches",
        "Deliveries to backends (first dispatches and re-dispatches)",
        |s| s.dispatches,
    ),
    ("replies", "Replies delivered to frontends", |s| s.replies),
    (
        "backend_errors",
        "Replies with an error status from a backend",
        |s| s.backend_errors,
    ),
    (
        "redispatches",
        "Failovers: requests re-dispatched after their backend was ejected or broke",
        |s| s.redispatches,
    ),
    (
        "late_replies_dropped",
        "Replies dropped because their request had been re-dispatched or answered already",
        |s| s.late_replies_dropped,
    ),
    (
        "failed_back",
        "Requests failed back with an error status (no backend before the deadline)",
        |s| s.failed_back,
    ),
    ("stalls", "Backend stalls detected", |s| s.stalls),
    ("ejections", "Backend ejections", |s| s.ejections),
    ("returns", "Backend returns from ejection", |s| s.returns),
    (
        "descheduled",
        "Backends found not scheduled (waiting for a CPU) while work waited for them",
        |s| s.descheduled,
    ),
];

/// The statuses a backend can have ([`crate::switch::MemberSnapshot::status`]).
const STATUSES: &[&str] = &["healthy", "warming", "stalled", "ejected", "descheduled"];

/// The membership states of a backend ([`crate::switch::MemberSnapshot::state`]).
const STATES: &[&str] = &["active", "draining", "gone"];

/// Whether a port kind's counter `name` is a level (goes down as well as up) rather than a
/// count of events; see [`crate::port::Port::counters`].
pub(crate) fn is_level(name: &str) -> bool {
    name.starts_with("conns_") || name.starts_with("pending_") || name == "staged" || name == "cid"
}

/// The metric name (without `vmq_` and `_total`) of a port kind's counter `name`.
pub(crate) fn port_kind_metric(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if clean == "up" || PORT_STATS.iter().any(|(n, _, _)| *n == clean) {
        format!("port_kind_{clean}")
    } else {
        format!("port_{clean}")
    }
}

/// The label set of a port's series.
type PortLabel = [(&'static str, String); 1];

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let none: [(&str, &str); 0] = [];
        for (name, help, get) in TOTALS {
            counter(
                &mut enc,
                &format!("switch_{name}"),
                help,
                [(none, get(&s.totals))],
            )?;
        }
        gauge(
            &mut enc,
            "switch_in_flight",
            "Requests accepted and not yet answered",
            [(none, s.in_flight as u64)],
        )?;
        gauge(
            &mut enc,
            "switch_pool_subpools",
            "Subpools of the in-flight table",
            [(none, s.pool_subpools as u64)],
        )?;

        let port = |p: &crate::switch::PortSnapshot| -> PortLabel { [("port", p.name.clone())] };
        gauge(
            &mut enc,
            "port_up",
            "1 while the port runs, 0 while it is broken or removed",
            s.ports.iter().map(|p| (port(p), u64::from(!p.down))),
        )?;
        for (name, help, get) in PORT_STATS {
            counter(
                &mut enc,
                &format!("port_{name}"),
                help,
                s.ports.iter().map(|p| (port(p), get(&p.stats))),
            )?;
        }
        // A port kind's counters, grouped by name across ports (a family's samples go
        // together).
        let mut kinds: BTreeMap<&str, Vec<(PortLabel, u64)>> = BTreeMap::new();
        for p in &s.ports {
            for (&name, &v) in &p.counters {
                kinds.entry(name).or_default().push((port(p), v));
            }
        }
        let mut seen = BTreeSet::new();
        for (name, samples) in kinds {
            let metric = port_kind_metric(name);
            if !seen.insert(metric.clone()) {
                // Two names that clean up to the same metric: the first one stands.
                continue;
            }
            let help = format!("The port's own counter {name}");
            if is_level(name) {
                gauge(&mut enc, &metric, &help, samples)?;
            } else {
                counter(&mut enc, &metric, &help, samples)?;
            }
        }

        let service = |name: &str| [("service", name.to_string())];
        for (name, help, get) in SERVICE_STATS {
            counter(
                &mut enc,
                &format!("service_{name}"),
                help,
                s.services.iter().map(|v| (service(&v.name), get(&v.stats))),
            )?;
        }
        gauge(
            &mut enc,
            "service_waiting",
            "Requests waiting for a backend",
            s.services
                .iter()
                .map(|v| (service(&v.name), v.waiting as u64)),
        )?;
        gauge(
            &mut enc,
            "service_panic",
            "1 in panic mode (every backend used, healthy or not)",
            s.services
                .iter()
                .map(|v| (service(&v.name), u64::from(v.panic))),
        )?;
        gauge(
            &mut enc,
            "service_info",
            "The service's balancing policy (always 1)",
            s.services.iter().map(|v| {
                (
                    [
                        ("service", v.name.clone()),
                        ("policy", v.policy.to_string()),
                    ],
                    1u64,
                )
            }),
        )?;

        let members = || {
            s.services.iter().flat_map(|v| {
                v.members.iter().map(move |m| {
                    (
                        [("service", v.name.clone()), ("backend", m.name.clone())],
                        m,
                    )
                })
            })
        };
        counter(
            &mut enc,
            "backend_dispatched",
            "Requests dispatched to the backend",
            members().map(|(l, m)| (l, m.dispatched)),
        )?;
        gauge(
            &mut enc,
            "backend_health",
            "Health score, 0 to 1",
            members().map(|(l, m)| (l, m.health)),
        )?;
        gauge(
            &mut enc,
            "backend_weight",
            "Effective weight the policy sees (base x health x slow start; 0 out of rotation)",
            members().map(|(l, m)| (l, m.weight)),
        )?;
        gauge(
            &mut enc,
            "backend_base_weight",
            "Configured weight",
            members().map(|(l, m)| (l, m.base_weight)),
        )?;
        gauge(
            &mut enc,
            "backend_in_flight",
            "Requests in flight at the backend",
            members().map(|(l, m)| (l, u64::from(m.in_flight))),
        )?;
        gauge(
            &mut enc,
            "backend_connections_held",
            "Established connections the backend carries (connection mode), as of the last sweep",
            members().map(|(l, m)| (l, u64::from(m.held))),
        )?;
        gauge(
            &mut enc,
            "backend_drain_per_second",
            "Receive buffers the backend drains per second",
            members().map(|(l, m)| (l, m.drain_per_s)),
        )?;
        gauge(
            &mut enc,
            "backend_latency_seconds",
            "Reply latency, moving average",
            members().filter_map(|(l, m)| m.latency_us.map(|us| (l, us / 1e6))),
        )?;
        gauge(
            &mut enc,
            "backend_load_report_suspect",
            "1 when its load reports disagree with the drain the switch observes",
            members().map(|(l, m)| (l, u64::from(m.load_report_suspect))),
        )?;
        gauge(
            &mut enc,
            "backend_status",
            "1 for the backend's status, 0 for the others",
            members().flat_map(|([svc, backend], m)| {
                let mut all: Vec<&str> = STATUSES.to_vec();
                if !all.contains(&m.status) {
                    all.push(m.status);
                }
                all.into_iter().map(move |st| {
                    (
                        [svc.clone(), backend.clone(), ("status", st.to_string())],
                        u64::from(st == m.status),
                    )
                })
            }),
        )?;
        gauge(
            &mut enc,
            "backend_state",
            "1 for the backend's membership state (active, draining, gone), 0 for the others",
            members().flat_map(|([svc, backend], m)| {
                STATES.iter().map(move |&st| {
                    (
                        [svc.clone(), backend.clone(), ("state", st.to_string())],
                        u64::from(st == m.state),
                    )
                })
            }),
        )?;
        if let Some(r) = &s.reload {
            counter(
                &mut enc,
                "reloads",
                "Configuration reloads, applied or refused (nothing changed)",
                [
                    ([("result", "applied")], r.applied),
                    ([("result", "refused")], r.refused),
                ],
            )?;
            gauge(
                &mut enc,
                "reload_last_success",
                "1 when the last reload was applied (or none was asked for), 0 when refused",
                [(none, u64::from(r.last_ok))],
            )?;
            counter(
                &mut enc,
                "drains",
                "Members drained by command",
                [(none, r.drains)],
            )?;
        }
        Ok(())
    }
}

/// Writes the counter family `name` with `samples`, or nothing without samples.
fn counter<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    family(enc, name, help, MetricType::Counter, samples, |v, e| {
        ConstCounter::new(v).encode(e)
    })
}

/// Writes the gauge family `name` with `samples`, or nothing without samples.
fn gauge<L: EncodeLabelSet, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    family(enc, name, help, MetricType::Gauge, samples, |v, e| {
        ConstGauge::new(v).encode(e)
    })
}

fn family<L: EncodeLabelSet, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    samples: impl IntoIterator<Item = (L, V)>,
    write: impl Fn(V, prometheus_client::encoding::MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in samples {
        write(v, m.encode_family(&labels)?)?;
    }
    Ok(())
}
