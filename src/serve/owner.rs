//! [`VmOwner`]: what a VM's vhost-user device tells the switch thread.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::port::vsock::{SharedQueues, VmEntry};
use crate::vhost_user::{DeviceOwner, DeviceQueues};

/// A change in a VM's device the switch thread acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// VM `cid`'s queues stopped (the VMM stopped or reset the device, or went away): its
    /// connections end and its port starts afresh.
    Stopped(u64),
}

/// The owner of one VM's device: hands its queues to the VM's port (through the shared slot
/// the port locks for each batch), rings the switch loop's doorbell for that VM on kicks, and
/// reports stops.
pub struct VmOwner {
    entry: Arc<VmEntry>,
    queues: SharedQueues,
    events: Sender<VmEvent>,
}

impl VmOwner {
    /// The owner of `entry`'s device, sharing `queues` with its port.
    pub fn new(entry: Arc<VmEntry>, queues: SharedQueues, events: Sender<VmEvent>) -> Self {
        Self {
            entry,
            queues,
            events,
        }
    }
}

impl DeviceOwner for VmOwner {
    fn started(&self, queues: DeviceQueues) {
        *self.queues.lock().unwrap_or_else(|p| p.into_inner()) = Some(queues);
        self.entry.connected.store(true, Ordering::Release);
        log::info!("vsock CID {}: device started", self.entry.addr.cid);
        self.entry.ring();
    }

    fn kicked(&self, _index: u16) {
        self.entry.ring();
    }

    fn stopped(&self) {
        // Waits for the port's batch in progress: it holds this lock while it uses the queues.
        let had = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        self.entry.connected.store(false, Ordering::Release);
        if had {
            log::info!("vsock CID {}: device stopped", self.entry.addr.cid);
            let _ = self.events.send(VmEvent::Stopped(self.entry.addr.cid));
            self.entry.ring();
        }
    }
}
