//! Ctrl-C as a request: while a backup runs, the first SIGINT or SIGTERM sets a flag that the
//! backup pipelines poll (they stop before their commit, so the write session rolls back and
//! deletes the packs it wrote); a second signal ends the process as usual.
//!
//! Owns only the flag and the signal handler. The handler does nothing but store to an atomic
//! (async-signal-safe) and is installed with SA_RESTART, so no system call sees EINTR.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// From now on, the first SIGINT or SIGTERM only sets the flag (`requested`); the handler is
/// reset by the signal itself (SA_RESETHAND), so a second one ends the process.
pub fn catch() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Whether a stop was asked for (`catch` must have been called for this to ever be true).
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}
