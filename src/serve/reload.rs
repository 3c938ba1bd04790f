//! What a reload may change, and how it is worked out: the difference between the running
//! configuration and a new one, refused whole when the new one asks for what a running server
//! cannot do.
//!
//! A reload may add and remove services, add and remove members (a removed member drains:
//! it answers what it has, then leaves), change members' weights and a service's policy.
//! It may not change the VMs (`[[vm]]`: their daemons and devices are made at start),
//! `[limits]`, `[metrics]`, a running service's address, mode, health, failover, deadline
//! or sizes (its clients' connections were made on them), nor a member's port or
//! `max_in_flight` (its connections); for those it says what to do instead.

use std::collections::{BTreeSet, HashMap};

use super::config::{MemberConfig, ServeConfig, ServeConfigError, ServiceTable};

/// How one service that runs before and after the reload changes.
#[derive(Debug)]
pub(super) struct Change {
    /// Its table in the new configuration.
    pub table: ServiceTable,
    /// Members that join.
    pub joins: Vec<MemberConfig>,
    /// Members (CIDs) that drain and leave.
    pub drains: Vec<u64>,
    /// Members (CIDs) with a new weight.
    pub weights: Vec<(u64, f64)>,
    /// Its policy must be set again: it changed, or its byte-share class shares (listed by
    /// member) must follow the members.
    pub policy: bool,
}

/// Everything a reload changes, worked out before anything is.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Services that go (their tables in the running configuration).
    pub removed: Vec<ServiceTable>,
    /// Services that come.
    pub added: Vec<ServiceTable>,
    /// Services that stay and change.
    pub changed: Vec<Change>,
}

impl Plan {
    /// Whether the reload changes nothing.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty() && self.changed.is_empty()
    }
}

/// What must change to serve `new` (read from `file`, checked) where `old` is served; an error
/// names what a reload cannot change and what to do instead. Nothing is changed here.
pub(super) fn plan(
    old: &ServeConfig,
    new: &ServeConfig,
    file: &str,
) -> Result<Plan, ServeConfigError> {
    let refuse = |place: String, message: String| ServeConfigError::Invalid {
        place: format!("{file}: {place}"),
        message,
    };
    if let Some(what) = vm_difference(old, new) {
        return Err(refuse(
            "vm".into(),
            format!(
                "[[vm]] entries differ from the running ones ({what}); VMs are fixed while vmq \
                 serve runs: restart it to add, remove or change VMs"
            ),
        ));
    }
    if old.limits != new.limits {
        return Err(refuse(
            "limits".into(),
            "[limits] differ from the running ones; they apply at start: restart vmq serve to \
             change them"
                .into(),
        ));
    }
    if old.metrics != new.metrics {
        return Err(refuse(
            "metrics".into(),
            "[metrics] differs from the running one; the endpoint starts with the server: \
             restart vmq serve to change it"
                .into(),
        ));
    }
    let running: HashMap<&str, &ServiceTable> =
        old.service.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut plan = Plan::default();
    for (i, s) in new.service.iter().enumerate() {
        let Some(was) = running.get(s.name.as_str()) else {
            plan.added.push(s.clone());
            continue;
        };
        let place = format!("service[{i}] ({})", s.name);
        if let Some(field) = fixed_service_field(was, s) {
            return Err(refuse(
                format!("{place}.{field}"),
                "cannot change while the service runs (its clients' connections depend on \
                 it); remove the service in one reload and add it back in the next, or \
                 restart vmq serve"
                    .into(),
            ));
        }
        let mut change = Change {
            table: s.clone(),
            joins: Vec::new(),
            drains: Vec::new(),
            weights: Vec::new(),
            policy: was.policy != s.policy,
        };
        for (j, m) in s.members.iter().enumerate() {
            match was.members.iter().find(|w| w.cid == m.cid) {
                None => change.joins.push(m.clone()),
                Some(w) if w.port != m.port || w.max_in_flight != m.max_in_flight => {
                    let field = if w.port != m.port {
                        "port"
                    } else {
                        "max_in_flight"
                    };
                    return Err(refuse(
                        format!("{place}.members[{j}].{field}"),
                        "cannot change while the member serves (its connections use it); \
                         remove the member in one reload (it drains) and add it back in the \
                         next"
                            .into(),
                    ));
                }
                Some(w) if w.weight != m.weight => change.weights.push((m.cid, m.weight)),
                Some(_) => {}
            }
        }
        change.drains = was
            .members
            .iter()
            .filter(|w| !s.members.iter().any(|m| m.cid == w.cid))
            .map(|w| w.cid)
            .collect();
        let members_moved = !change.joins.is_empty() || !change.drains.is_empty();
        change.policy |= members_moved && !s.policy.byte_share.classes.is_empty();
        if members_moved || change.policy || !change.weights.is_empty() {
            plan.changed.push(change);
        }
    }
    plan.removed = old
        .service
        .iter()
        .filter(|s| !new.service.iter().any(|n| n.name == s.name))
        .cloned()
        .collect();
    Ok(plan)
}

/// How the VMs of `new` differ from those of `old` (order aside), if they do.
fn vm_difference(old: &ServeConfig, new: &ServeConfig) -> Option<String> {
    let cids = |c: &ServeConfig| c.vm.iter().map(|v| v.cid).collect::<BTreeSet<u64>>();
    let (a, b) = (cids(old), cids(new));
    if let Some(cid) = b.difference(&a).next() {
        return Some(format!("VM CID {cid} added"));
    }
    if let Some(cid) = a.difference(&b).next() {
        return Some(format!("VM CID {cid} removed"));
    }
    old.vm
        .iter()
        .find(|v| !new.vm.contains(v))
        .map(|v| format!("VM CID {} changed", v.cid))
}

/// The first setting of a running service that differs in `new`, other than its members and
/// its policy.
fn fixed_service_field(old: &ServiceTable, new: &ServiceTable) -> Option<&'static str> {
    // Every field named: a new setting does not compile until it is sorted here.
    let ServiceTable {
        name: _,
        members: _,
        policy: _,
        cid,
        port,
        load_port,
        mode,
        health,
        failover,
        request_timeout_ms,
        connect_timeout_ms,
        max_message_kib,
        max_connections,
        window,
    } = old;
    [
        ("cid", *cid != new.cid),
        ("port", *port != new.port),
        ("load_port", *load_port != new.load_port),
        ("mode", *mode != new.mode),
        ("health", *health != new.health),
        ("failover", *failover != new.failover),
        (
            "request_timeout_ms",
            *request_timeout_ms != new.request_timeout_ms,
        ),
        (
            "connect_timeout_ms",
            *connect_timeout_ms != new.connect_timeout_ms,
        ),
        ("max_message_kib", *max_message_kib != new.max_message_kib),
        ("max_connections", *max_connections != new.max_connections),
        ("window", *window != new.window),
    ]
    .into_iter()
    .find_map(|(field, differs)| differs.then_some(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::config::BalanceMode;

    fn cfg(services: &str) -> ServeConfig {
        let mut text = String::new();
        for cid in 3..8 {
            text += &format!("[[vm]]\ncid = {cid}\nsocket = \"/tmp/vm{cid}.sock\"\n\n");
        }
        text += services;
        ServeConfig::parse(&text, "t.toml").expect("a valid config")
    }

    const A: &str = "[[service]]\nname = \"a\"\ncid = 100\nport = 1\n";
    const B: &str = "[[service]]\nname = \"b\"\ncid = 101\nport = 1\nmembers = [{ cid = 7 }]\n";

    #[test]
    fn members_and_services_come_and_go() {
        let old = cfg(&format!(
            "{A}members = [{{ cid = 4 }}, {{ cid = 5, weight = 2.0 }}]\n{B}"
        ));
        let new = cfg(&format!(
            "{A}members = [{{ cid = 4, weight = 3.0 }}, {{ cid = 6 }}]\n\
             [[service]]\nname = \"c\"\ncid = 102\nport = 1\nmembers = [{{ cid = 7 }}]\n"
        ));
        let p = plan(&old, &new, "t.toml").unwrap();
        assert_eq!(p.removed.len(), 1);
        assert_eq!(p.removed[0].name, "b");
        assert_eq!(p.added.len(), 1);
        assert_eq!(p.added[0].name, "c");
        let c = &p.changed[0];
        assert_eq!(c.table.name, "a");
        assert_eq!(c.joins.iter().map(|m| m.cid).collect::<Vec<_>>(), [6]);
        assert_eq!(c.drains, [5]);
        assert_eq!(c.weights, [(4, 3.0)]);
        assert!(!c.policy);
        assert!(plan(&new, &new, "t.toml").unwrap().is_empty());
    }

    #[test]
    fn connection_services_come_go_and_change_members_like_message_services() {
        let conn = "[[service]]\nname = \"c\"\ncid = 102\nport = 1\nmode = \"connection\"\n";
        let a = format!("{A}members = [{{ cid = 4 }}]\n");
        let old = cfg(&format!("{a}{conn}members = [{{ cid = 5 }}]\n"));
        // Message services change around it.
        let grown = cfg(&format!("{a}{B}{conn}members = [{{ cid = 5 }}]\n"));
        assert_eq!(plan(&old, &grown, "t.toml").unwrap().added.len(), 1);
        // Its members change: 6 joins, 5 drains.
        let moved = cfg(&format!("{a}{conn}members = [{{ cid = 6 }}]\n"));
        let p = plan(&old, &moved, "t.toml").unwrap();
        assert_eq!(p.changed.len(), 1);
        assert_eq!(p.changed[0].joins[0].cid, 6);
        assert_eq!(p.changed[0].drains, [5]);
        // Removed, and added back.
        let p = plan(&old, &cfg(&a), "t.toml").unwrap();
        assert_eq!(
            p.removed.iter().map(|s| &s.name[..]).collect::<Vec<_>>(),
            ["c"]
        );
        let p = plan(&cfg(&a), &old, "t.toml").unwrap();
        assert_eq!(
            p.added.iter().map(|s| &s.name[..]).collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(p.added[0].mode, BalanceMode::Connection);
        // Its settings as for any service; its mode too.
        let port = cfg(&format!(
            "{a}[[service]]\nname = \"c\"\ncid = 102\nport = 2\nmode = \"connection\"\n\
             members = [{{ cid = 5 }}]\n"
        ));
        let e = plan(&old, &port, "t.toml").unwrap_err().to_string();
        assert!(e.contains("service[1] (c).port"), "{e}");
        let message = cfg(&format!(
            "{a}{}members = [{{ cid = 5 }}]\n",
            conn.replace("connection", "message")
        ));
        let e = plan(&old, &message, "t.toml").unwrap_err().to_string();
        assert!(e.contains("service[1] (c).mode"), "{e}");
    }

    #[test]
    fn byte_share_class_shares_follow_the_members() {
        let bs = "policy = { kind = \"byte_share\", byte_share.classes = [{ class = 1, shares = [1.0, 2.0] }] }\n";
        let old = cfg(&format!(
            "{A}{bs}members = [{{ cid = 4 }}, {{ cid = 5 }}]\n"
        ));
        let new = cfg(&format!(
            "{A}{bs}members = [{{ cid = 4 }}, {{ cid = 6 }}]\n"
        ));
        assert!(plan(&old, &new, "t.toml").unwrap().changed[0].policy);
        let wrr = cfg(&format!(
            "{A}policy = {{ kind = \"wrr\" }}\nmembers = [{{ cid = 4 }}, {{ cid = 5 }}]\n"
        ));
        assert!(plan(&old, &wrr, "t.toml").unwrap().changed[0].policy);
    }

    #[test]
    fn what_a_reload_cannot_change_is_refused_with_what_to_do() {
        let old = cfg(&format!("{A}members = [{{ cid = 4 }}]\n"));
        let cases = [
            (
                {
                    let mut c = old.clone();
                    c.vm.pop();
                    c
                },
                "vm",
                "VM CID 7 removed",
            ),
            (
                {
                    let mut c = old.clone();
                    c.vm[0].groups = vec!["other".into()];
                    c
                },
                "vm",
                "VM CID 3 changed",
            ),
            (
                {
                    let mut c = old.clone();
                    c.limits.credit_cap_kib = 128;
                    c
                },
                "limits",
                "restart",
            ),
            (
                cfg(&format!("{A}window = 4\nmembers = [{{ cid = 4 }}]\n")),
                "service[0] (a).window",
                "remove the service in one reload",
            ),
            (
                cfg(&format!("{A}members = [{{ cid = 4, port = 9 }}]\n")),
                "service[0] (a).members[0].port",
                "drains",
            ),
        ];
        for (new, place, what) in cases {
            let e = plan(&old, &new, "t.toml").unwrap_err().to_string();
            assert!(e.contains(&format!("t.toml: {place}")), "{e}");
            assert!(e.contains(what), "{e}");
        }
        // The VMs in another order are the same VMs.
        let mut shuffled = old.clone();
        shuffled.vm.reverse();
        assert!(plan(&old, &shuffled, "t.toml").unwrap().is_empty());
    }
}
