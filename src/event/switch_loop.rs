//! [`SwitchLoop`]: runs a [`Switch`] on the calling thread until told to stop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberId, SubscriberOps};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;

use super::{Doorbells, Readiness, SweepTimer};
use crate::port::PortId;
use crate::switch::Switch;

/// How eagerly the loop spins before it sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopConfig {
    /// Empty polls in a row before the loop arms kicks and sleeps.
    pub spin_polls: u32,
    /// Longest sleep (the sweep timer period).
    pub max_sleep: Duration,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            spin_polls: 2000,
            max_sleep: Duration::from_millis(1),
        }
    }
}

/// Loop counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoopStats {
    /// Calls to `Switch::poll`.
    pub polls: u64,
    /// Messages moved.
    pub messages: u64,
    /// Times the loop slept.
    pub sleeps: u64,
    /// Guest kicks (and control writes) that woke it.
    pub doorbells: u64,
}

/// The switch thread: a [`Switch`] plus the event manager it sleeps in.
pub struct SwitchLoop<M> {
    /// The switch it drives.
    pub switch: Switch<M>,
    em: EventManager<Box<dyn MutEventSubscriber + Send>>,
    cfg: LoopConfig,
    stats: LoopStats,
    rings: Arc<AtomicU64>,
    /// The doorbell subscriber of each port, replaced (and its eventfd closed) when the port's
    /// guest comes back with a new kick eventfd: one subscriber per port, however often it
    /// restarts.
    doorbells: Vec<Option<SubscriberId>>,
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
}

impl<M: GuestMemoryBackend + Clone + Send + 'static> SwitchLoop<M> {
    /// A loop over `switch` that wakes on any of `kicks` (guest QueueNotify ioeventfds;
    /// `kicks[i]` is port `i`'s).
    pub fn new(switch: Switch<M>, kicks: Vec<EventFd>, cfg: LoopConfig) -> std::io::Result<Self> {
        let mut em: EventManager<Box<dyn MutEventSubscriber + Send>> =
            EventManager::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let rings = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        em.add_subscriber(Box::new(Doorbells::new(
            vec![wake.try_clone()?],
            rings.clone(),
        )));
        em.add_subscriber(Box::new(SweepTimer::new(cfg.max_sleep)?));
        let mut lp = Self {
            switch,
            em,
            cfg,
            stats: LoopStats::default(),
            rings,
            doorbells: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            wake,
        };
        for (port, kick) in kicks.into_iter().enumerate() {
            lp.watch(port as PortId, kick);
        }
        Ok(lp)
    }

    /// Wakes the loop on `kick` for `port` from now on, in place of the port's previous kick
    /// eventfd (whose subscriber is removed and the eventfd closed).
    pub fn watch(&mut self, port: PortId, kick: EventFd) {
        let sub = Doorbells::new(vec![kick], self.rings.clone());
        self.replace_watch(port, Box::new(sub));
    }

    fn replace_watch(&mut self, port: PortId, sub: Box<dyn MutEventSubscriber + Send>) {
        let i = port as usize;
        if self.doorbells.len() <= i {
            self.doorbells.resize(i + 1, None);
        }
        if let Some(old) = self.doorbells[i].take() {
            if let Err(e) = self.em.remove_subscriber(old) {
                log::warn!("cannot stop watching port {port}'s old doorbell: {e:?}");
            }
        }
        self.doorbells[i] = Some(self.em.add_subscriber(sub));
    }

    /// Wakes the loop while `fd` (a descriptor of `port`'s, such as its epoll set) is
    /// readable, in place of the port's previous doorbell or descriptor. The port consumes
    /// what makes it readable when it is polled.
    pub fn watch_fd(&mut self, port: PortId, fd: std::os::fd::OwnedFd) {
        let sub = Readiness::new(fd, self.rings.clone());
        self.replace_watch(port, Box::new(sub));
    }

    /// Doorbell subscribers the loop holds (one per watched port): for leak checks.
    pub fn watched(&self) -> usize {
        self.doorbells.iter().flatten().count()
    }

    /// A handle other threads use to stop the loop.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            stop: self.stop.clone(),
            wake: self.wake.clone(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> LoopStats {
        LoopStats {
            doorbells: self.rings.load(Ordering::Relaxed),
            ..self.stats
        }
    }

    /// Runs until `done(&switch)` says so or a [`Stopper`] fires. `tick` runs about every
    /// `tick_every` (supervision, progress reports), on this thread; the `(port, kick eventfd)`
    /// pairs it pushes (of ports it added or revived) are watched from then on, each in place
    /// of that port's previous one ([`SwitchLoop::watch`]).
    pub fn run<D, T>(&mut self, mut done: D, tick_every: Duration, mut tick: T)
    where
        D: FnMut(&Switch<M>) -> bool,
        T: FnMut(&mut Switch<M>, &LoopStats, &mut Vec<(PortId, EventFd)>),
    {
        let mut idle = 0u32;
        let mut next_tick = std::time::Instant::now() + tick_every;
        while !self.stop.load(Ordering::Acquire) {
            let n = self.switch.poll();
            self.stats.polls += 1;
            self.stats.messages += n as u64;
            if n > 0 {
                idle = 0;
            } else {
                idle += 1;
                if idle >= self.cfg.spin_polls {
                    idle = 0;
                    self.sleep();
                }
            }
            // `idle == 0` after work and after a sleep: a wake-up is acted on at once.
            if self.stats.polls % 256 == 0 || idle == 0 {
                if done(&self.switch) {
                    break;
                }
                let now = std::time::Instant::now();
                if now >= next_tick {
                    next_tick = now + tick_every;
                    let s = self.stats();
                    let mut kicks = Vec::new();
                    tick(&mut self.switch, &s, &mut kicks);
                    for (port, kick) in kicks {
                        self.watch(port, kick);
                    }
                }
            }
        }
    }

    fn sleep(&mut self) {
        if self.switch.prepare_idle() {
            self.switch.resume_polling();
            return;
        }
        let ms = (self.switch.until_next_sweep() / 1_000_000).clamp(1, 1000) as i32;
        self.stats.sleeps += 1;
        if let Err(e) = self.em.run_with_timeout(ms) {
            log::warn!("event loop wait failed: {e:?}");
        }
        self.switch.resume_polling();
    }
}

/// Stops a [`SwitchLoop`] from another thread.
#[derive(Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
}

impl Stopper {
    /// Asks the loop to return; wakes it if it sleeps.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.write(1);
    }
}
