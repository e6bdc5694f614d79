//! Ctrl-C as a request: while a backup runs, the first SIGINT or SIGTERM sets a flag that the
//! backup pipelines poll (they stop before their commit, so the write session rolls back and
//! deletes the packs it wrote); a second signal ends the process as usual. Operations that cannot
//! stop half-way cleanly (restores) use `end_with` instead: the signal prints what was kept and
//! ends the process as it would have.
//!
//! Owns only the flag, the message and the signal handlers. The handlers only store to an atomic,
//! or write(2) a message prepared beforehand and re-raise the signal (async-signal-safe); they are
//! installed with SA_RESTART, so no system call sees EINTR.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static MESSAGE: OnceLock<Vec<u8>> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

extern "C" fn say_and_end(sig: libc::c_int) {
    if let Some(m) = MESSAGE.get() {
        // SAFETY: write(2) of a buffer prepared before the handler was installed.
        unsafe { libc::write(2, m.as_ptr().cast(), m.len()) };
    }
    // SAFETY: the disposition is back to default (SA_RESETHAND): the process ends by `sig`.
    unsafe { libc::raise(sig) };
}

fn install(handler: extern "C" fn(libc::c_int)) {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handlers are async-signal-safe (see above).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// From now on, the first SIGINT or SIGTERM only sets the flag (`requested`); the handler is
/// reset by the signal itself (SA_RESETHAND), so a second one ends the process.
pub fn catch() {
    install(on_signal);
}

/// From now on, SIGINT or SIGTERM prints `message` on a line of its own (clearing a progress
/// bar on a terminal) and ends the process as the signal would (exit status 130 in a shell).
/// Only the first message given is used.
pub fn end_with(message: &str) {
    let clear = if std::io::stderr().is_terminal() {
        "\r\x1b[2K"
    } else {
        ""
    };
    if MESSAGE
        .set(format!("{clear}{message}\n").into_bytes())
        .is_ok()
    {
        install(say_and_end);
    }
}

/// Whether a stop was asked for (`catch` must have been called for this to ever be true).
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}
