//! SIGINT and SIGTERM as a flag: the first raises it (the run cleans up and ends), the second
//! ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread started after, which
/// inherit the mask; child processes get an empty mask from std) and starts a thread that
/// takes them with sigwait: the first raises the returned flag, the second exits with 130.
/// Call it before starting any other thread.
pub fn stop_flag(what: &'static str) -> Arc<AtomicBool> {
    let set = block(&[libc::SIGINT, libc::SIGTERM]);
    let flag = Arc::new(AtomicBool::new(false));
    let raised = flag.clone();
    let spawned = std::thread::Builder::new()
        .name("vmq-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` was initialised above and is blocked in this thread (inherited);
            // `sig` lives across the call.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            if raised.swap(true, Ordering::Relaxed) {
                eprintln!("{what}: stopped (signal {sig}); the guests may still run");
                std::process::exit(130);
            }
            eprintln!("{what}: stopping the guests (signal {sig}; again to quit at once)");
        });
    if let Err(e) = spawned {
        log::warn!("{what}: no signal thread ({e}); Ctrl-C ends the process at once");
        // SAFETY: as above; the signals go back to their default action.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
    flag
}

/// Blocks `signals` in this thread (and so in every thread started after, which inherit the
/// mask) and returns their set, for sigwait or sigtimedwait to take them: no handler runs at an
/// arbitrary point. Call it before starting any other thread.
pub fn block(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: `set` is a plain C struct initialised by sigemptyset before use; the calls only
    // read and write it and this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}
