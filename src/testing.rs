//! Fault injection for the crash tests, driven by environment variables.
//!
//! `COFFRE_CRASH_AT=<point>` kills the process with SIGKILL when it reaches the named point
//! (`pack-sealed`, `before-commit`, `after-commit`); `COFFRE_FAIL_WRITE_AFTER=<bytes>` makes pack
//! writes fail with ENOSPC once that many bytes were written. Both are read once; with neither
//! set these are a relaxed load and a branch. They exist so tests can prove the crash story of
//! `backup` on the real binary; they change nothing else.

use std::sync::OnceLock;

fn crash_at() -> Option<&'static str> {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    AT.get_or_init(|| std::env::var("COFFRE_CRASH_AT").ok())
        .as_deref()
}

/// Dies by SIGKILL here if the tests asked for it.
pub fn crash_point(name: &str) {
    if crash_at() == Some(name) {
        // SAFETY: raising a signal on ourselves; SIGKILL cannot be caught, like a real crash.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

/// The injected write limit, if any.
pub fn write_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("COFFRE_FAIL_WRITE_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}
