//! The checks of a parsed topology, run before any VM boots. Each refusal names the file, the
//! line and the field, and says what to do.

use std::collections::HashSet;
use std::ops::Range;

use super::error::{from_toml, key_line, line_col, TopologyError};
use super::spec::{
    image_role, FaultKind, Role, Topology, MAX_NOTIFY_DEADLINE_US, MAX_REQUEST_TIMEOUT_MS,
};

/// A topology file's text and name: where its errors point.
pub(super) struct Source<'a> {
    pub text: &'a str,
    pub file: &'a str,
}

impl Source<'_> {
    /// An error at `span` of the text.
    pub fn at(&self, span: Range<usize>, field: &str, message: String) -> TopologyError {
        TopologyError::Invalid {
            file: self.file.to_string(),
            line: line_col(self.text, span.start).0,
            field: field.to_string(),
            message,
        }
    }

    /// An error about setting `field` of the table that starts at byte `anchor`: at the line
    /// of its key.
    fn at_key(&self, anchor: usize, field: &str, message: String) -> TopologyError {
        TopologyError::Invalid {
            file: self.file.to_string(),
            line: key_line(self.text, anchor, field),
            field: field.to_string(),
            message,
        }
    }

    /// Byte offset of the `[name]` table header (or of a top-level `name = ...` key), 0 if absent.
    fn table_start(&self, name: &str) -> usize {
        let mut at = 0;
        for line in self.text.split_inclusive('\n') {
            let t = line.trim_start();
            if t.starts_with(&format!("[{name}]"))
                || (t.starts_with(name) && t[name.len()..].trim_start().starts_with('='))
            {
                return at;
            }
            at += line.len();
        }
        0
    }

    /// Byte offset of the last table header (`[...]` or `[[...]]`) at or before `offset`.
    fn table_start_before(&self, offset: usize) -> usize {
        let mut at = 0;
        let mut last = 0;
        for line in self.text.split_inclusive('\n') {
            if at > offset {
                break;
            }
            if line.trim_start().starts_with('[') {
                last = at;
            }
            at += line.len();
        }
        last
    }
}

impl Topology {
    /// Parses and checks `text`; `file` names it in errors. `images` are the built-in image
    /// names (anything else must be a readable file).
    pub fn parse(text: &str, file: &str, images: &[&str]) -> Result<Self, TopologyError> {
        let mut topo: Topology = from_toml(text, file)?;
        topo.source = (text.to_string(), file.to_string());
        topo.check(&Source { text, file }, images)?;
        for i in 0..topo.vms.len() {
            topo.params_of(i)?;
            topo.names_of(i)?;
        }
        Ok(topo)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &str, images: &[&str]) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_string(),
            source,
        })?;
        Self::parse(&text, path, images)
    }

    fn check(&self, src: &Source, images: &[&str]) -> Result<(), TopologyError> {
        if let Err(e) = self.switch.validate() {
            let anchor = src.table_start("switch");
            return Err(src.at_key(anchor, &format!("switch.{}", e.field()), format!("{e}")));
        }
        if self.run.max_duration_ms == 0 {
            return Err(src.at_key(
                src.table_start("run"),
                "run.max_duration_ms",
                "must be greater than 0 (the longest the run may take, in ms)".into(),
            ));
        }
        if self.vms.is_empty() {
            return Err(src.at(
                0..0,
                "vm",
                "the topology has no [[vm]]; add at least one".into(),
            ));
        }
        if let Some(h) = &self.handoff {
            self.check_handoff(src, h)?;
        }
        let mut names = self.check_vms(src, images)?;
        self.check_services(src, &mut names)?;
        self.check_faults(src)
    }

    /// The hand-off window fits every VM (at most half its memory) and the cap the window.
    fn check_handoff(&self, src: &Source, h: &super::HandoffSpec) -> Result<(), TopologyError> {
        let anchor = src.table_start("handoff");
        let w = h.window_pages;
        if !(1..=super::MAX_HANDOFF_WINDOW_PAGES).contains(&w) {
            return Err(src.at_key(
                anchor,
                "handoff.window_pages",
                format!(
                    "{w} must be in 1..={} (pages of 4 KiB)",
                    super::MAX_HANDOFF_WINDOW_PAGES
                ),
            ));
        }
        if let Some(vm) = self
            .vms
            .iter()
            .find(|v| w.saturating_mul(4096) > (*v.memory_mib.get_ref() << 20) / 2)
        {
            return Err(src.at_key(
                anchor,
                "handoff.window_pages",
                format!(
                    "{w} pages are more than half of VM {}'s {} MiB; give it more memory or a smaller window",
                    vm.name.get_ref(),
                    vm.memory_mib.get_ref()
                ),
            ));
        }
        if !(1..=w).contains(&h.cap()) {
            return Err(src.at_key(
                anchor,
                "handoff.cap_pages",
                format!("{} must be in 1..={w} (the window's pages)", h.cap()),
            ));
        }
        Ok(())
    }

    /// Each VM: a unique name, a usable image and its role, memory, notification deadline;
    /// and one that ends the run. Returns the names taken.
    fn check_vms<'a>(
        &'a self,
        src: &Source,
        images: &[&str],
    ) -> Result<HashSet<&'a str>, TopologyError> {
        let mut names = HashSet::new();
        for vm in &self.vms {
            if vm.name.get_ref().is_empty() || !names.insert(vm.name.get_ref().as_str()) {
                return Err(src.at(
                    vm.name.span(),
                    "name",
                    format!("VM name {:?} is empty or used twice", vm.name.get_ref()),
                ));
            }
            let image = vm.image.get_ref();
            let builtin = image_role(image).filter(|_| images.contains(&image.as_str()));
            let usable: Vec<&str> = images
                .iter()
                .copied()
                .filter(|i| image_role(i).is_some())
                .collect();
            if builtin.is_none() && images.contains(&image.as_str()) {
                return Err(src.at(
                    vm.image.span(),
                    "image",
                    format!(
                        "{image:?} has no vmq device (it is a boot test of the VMM) and cannot \
                         run in a topology; use one of {}, or an ELF file with a role",
                        usable.join(", ")
                    ),
                ));
            }
            if builtin.is_none() && !std::path::Path::new(image).is_file() {
                return Err(src.at(
                    vm.image.span(),
                    "image",
                    format!(
                        "{image:?} is neither a built-in image ({}) nor a readable file",
                        usable.join(", ")
                    ),
                ));
            }
            match (builtin, &vm.role) {
                (None, None) => {
                    return Err(src.at(
                        vm.image.span(),
                        "role",
                        format!(
                            "{image:?} is an ELF file of your own: say what it does with \
                             role = \"client\", \"worker\" or \"peer\""
                        ),
                    ))
                }
                (Some(b), Some(r)) if b != *r.get_ref() => {
                    return Err(src.at(
                        r.span(),
                        "role",
                        format!(
                            "image {image:?} is a {}; drop the role or make it {:?}",
                            b.name(),
                            b.name()
                        ),
                    ))
                }
                _ => {}
            }
            let mib = *vm.memory_mib.get_ref();
            if !(4..=1024).contains(&mib) || mib % 2 != 0 {
                return Err(src.at(
                    vm.memory_mib.span(),
                    "memory_mib",
                    format!("{mib} MiB: guest memory must be an even number of MiB in 4..=1024"),
                ));
            }
            if let Some(us) = &vm.notify_deadline_us {
                if *us.get_ref() > MAX_NOTIFY_DEADLINE_US {
                    return Err(src.at(
                        us.span(),
                        "notify_deadline_us",
                        format!(
                            "{} µs: a port's coalescing deadline is at most \
                             {MAX_NOTIFY_DEADLINE_US} µs (1 s); default 1000",
                            us.get_ref()
                        ),
                    ));
                }
            }
        }
        if !self.vms.iter().any(|v| self.role(v).waited_for()) {
            return Err(src.at(
                self.vms[0].name.span(),
                "vm",
                "no VM is a client or a peer, so the run could never finish (workers serve \
                 until it ends); add a client"
                    .into(),
            ));
        }
        Ok(names)
    }

    /// Each service: a name no VM or service has, members that are VMs (once each, never a
    /// client) with positive weights, its deadline and its policy, health and failover
    /// settings.
    fn check_services<'a>(
        &'a self,
        src: &Source,
        names: &mut HashSet<&'a str>,
    ) -> Result<(), TopologyError> {
        for s in &self.services {
            if !names.insert(s.name.get_ref().as_str()) {
                return Err(src.at(
                    s.name.span(),
                    "name",
                    format!(
                        "service name {:?} is used twice or clashes with a VM name",
                        s.name.get_ref()
                    ),
                ));
            }
            if s.members.get_ref().is_empty() {
                return Err(src.at(
                    s.members.span(),
                    "members",
                    "a service needs at least one member".into(),
                ));
            }
            for (i, m) in s.members.get_ref().iter().enumerate() {
                let Some(vm) = self.vms.iter().find(|v| v.name.get_ref() == m.vm.get_ref()) else {
                    return Err(src.at(
                        m.vm.span(),
                        "vm",
                        format!(
                            "member {:?} is not a [[vm]] of this topology",
                            m.vm.get_ref()
                        ),
                    ));
                };
                if self.role(vm) == Role::Client {
                    return Err(src.at(
                        m.vm.span(),
                        "vm",
                        format!(
                            "member {:?} is a client; it sends requests and never answers \
                             them: make a worker the member",
                            m.vm.get_ref()
                        ),
                    ));
                }
                if s.members.get_ref()[..i]
                    .iter()
                    .any(|o| o.vm.get_ref() == m.vm.get_ref())
                {
                    return Err(src.at(
                        m.vm.span(),
                        "vm",
                        format!(
                            "member {:?} is listed twice; give it one entry (and a weight)",
                            m.vm.get_ref()
                        ),
                    ));
                }
                let w = *m.weight.get_ref();
                if !(w.is_finite() && w > 0.0) {
                    return Err(src.at(
                        m.weight.span(),
                        "weight",
                        format!("weight {w} must be a positive number"),
                    ));
                }
            }
            if let Some(ms) = &s.request_timeout_ms {
                let v = *ms.get_ref();
                if !(1..=MAX_REQUEST_TIMEOUT_MS).contains(&v) {
                    return Err(src.at(
                        ms.span(),
                        "request_timeout_ms",
                        format!("{v} ms: the request deadline must be in 1..={MAX_REQUEST_TIMEOUT_MS} ms"),
                    ));
                }
            }
            if let Err(e) = s.config().validate_for(s.members.get_ref().len()) {
                return Err(src.at_key(
                    src.table_start_before(s.name.span().start),
                    &e.field(),
                    format!("service {:?}: {e}", s.name.get_ref()),
                ));
            }
        }
        Ok(())
    }

    /// Each fault: a VM of the topology, exactly one kind, and worker faults on workers.
    fn check_faults(&self, src: &Source) -> Result<(), TopologyError> {
        for f in &self.faults {
            let Some(vm) = self.vms.iter().find(|v| v.name.get_ref() == f.vm.get_ref()) else {
                return Err(src.at(
                    f.vm.span(),
                    "vm",
                    format!("fault names {:?}, which is not a [[vm]]", f.vm.get_ref()),
                ));
            };
            let kinds = f.kinds();
            if kinds.len() != 1 {
                return Err(src.at(
                    f.vm.span(),
                    "fault",
                    "a [[fault]] needs exactly one of stall_after, crash_after, error_every, mute_after, slow, lie_load, kill_after_ms, kill_after_requests".into(),
                ));
            }
            if let (FaultKind::GuestParam(name, _), role) = (kinds[0], self.role(vm)) {
                if role != Role::Worker {
                    return Err(src.at_key(
                        src.table_start_before(f.vm.span().start),
                        name,
                        format!(
                            "{name} makes a worker misbehave, and {:?} is a {}; use \
                             kill_after_ms or kill_after_requests to stop any VM",
                            f.vm.get_ref(),
                            role.name()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
