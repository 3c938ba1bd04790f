//! The switch thread's event loop: `event-manager` subscribers turn guest queue kicks
//! (ioeventfds) and the sweep timer (a timerfd) into switch work.
//!
//! The loop polls while there is work and for a short spin after; then it asks every guest to
//! kick (EVENT_IDX `avail_event`), re-checks, and sleeps in epoll until a kick, the sweep timer
//! or a stop request wakes it. Under load no guest kicks and no syscall is made.

mod doorbells;
mod switch_loop;

pub use doorbells::{Doorbells, Readiness, SweepTimer};
pub use switch_loop::{LoopConfig, LoopStats, Stopper, SwitchLoop};

#[cfg(test)]
mod tests;
