//! Event subscribers of the switch loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// Wakes the loop when any guest kicks a queue (or a control eventfd is written); clears them.
pub struct Doorbells {
    fds: Vec<EventFd>,
    rings: Arc<AtomicU64>,
}

impl Doorbells {
    /// A subscriber for `fds`; `rings` counts the wake-ups.
    pub fn new(fds: Vec<EventFd>, rings: Arc<AtomicU64>) -> Self {
        Self { fds, rings }
    }
}

impl MutEventSubscriber for Doorbells {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, fd) in self.fds.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(fd, i as u32, EventSet::IN)) {
                log::error!("cannot watch doorbell {i}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some(fd) = self.fds.get(events.data() as usize) {
            // Non-blocking read clears the counter; EAGAIN just means another reader won.
            let _ = fd.read();
            self.rings.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Wakes the loop while a descriptor a port owns is readable (the epoll set of a port that
/// serves sockets): the port itself consumes the events when the switch polls it, so nothing is
/// read here.
pub struct Readiness {
    fd: std::os::fd::OwnedFd,
    rings: Arc<AtomicU64>,
}

impl Readiness {
    /// A subscriber for `fd`; `rings` counts the wake-ups.
    pub fn new(fd: std::os::fd::OwnedFd, rings: Arc<AtomicU64>) -> Self {
        Self { fd, rings }
    }
}

impl MutEventSubscriber for Readiness {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch a port's sockets: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.rings.fetch_add(1, Ordering::Relaxed);
    }
}

/// The periodic timer that bounds how long the loop sleeps, so sweeps (stall detection,
/// deadlines) run even when no guest kicks.
pub struct SweepTimer {
    timer: TimerFd,
}

impl SweepTimer {
    /// A timer firing every `period`.
    pub fn new(period: Duration) -> std::io::Result<Self> {
        let mut timer = TimerFd::new()?;
        timer.reset(period, Some(period))?;
        Ok(Self { timer })
    }
}

impl MutEventSubscriber for SweepTimer {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("cannot watch the sweep timer: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
    }
}
