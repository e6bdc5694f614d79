//! Fault injection for the crash tests, driven by environment variables.
//!
//! `COFFRE_CRASH_AT=<point>` kills the process with SIGKILL when it reaches the named point
//! (`pack-sealed`, `before-commit`, `after-commit`); `COFFRE_FAIL_WRITE_AFTER=<bytes>` makes pack
//! writes fail with ENOSPC once that many bytes were written. Both are read once; with neither
//! set these are a relaxed load and a branch. They exist so tests can prove the crash story of
//! `backup` on the real binary; they change nothing else.
//! `COFFRE_TEST_POINT_TIME=<unix seconds>` sets the time recorded for new points, so a test can
//! give two points the same second (until a public `backup --time` exists).

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

/// The time to record for a point started at `now_ns`: `now_ns`, unless the tests set
/// `COFFRE_TEST_POINT_TIME` (whole seconds since the epoch).
pub fn point_time(now_ns: i64) -> i64 {
    static FORCED: OnceLock<Option<i64>> = OnceLock::new();
    FORCED
        .get_or_init(|| {
            std::env::var("COFFRE_TEST_POINT_TIME")
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .map(|secs| secs.saturating_mul(1_000_000_000))
        })
        .unwrap_or(now_ns)
}
