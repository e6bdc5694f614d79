//! Fault injection for the crash tests, compiled in only with the `fault-injection` cargo
//! feature (the test command enables it; release builds do not have it).
//!
//! `COFFRE_CRASH_AT=<point>` kills the process with SIGKILL when it reaches the named point
//! (`pack-sealed`, `before-commit`); `COFFRE_INTERRUPT_AT=<point>` sends it SIGINT there (a
//! Ctrl-C); `COFFRE_FAIL_WRITE_AFTER=<bytes>` makes pack writes fail
//! with ENOSPC once that many bytes were written; `COFFRE_TEST_POINT_TIME=<unix seconds>` sets
//! the time recorded for new points (two points in the same second). Each is read once. Without
//! the feature these functions do nothing, so the variables have no effect.

#[cfg(feature = "fault-injection")]
mod injected {
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

    /// Sends SIGINT to this process here if the tests asked for it (`COFFRE_INTERRUPT_AT`): one
    /// Ctrl-C, the first time the step is reached.
    pub fn interrupt_point(name: &str) {
        static AT: OnceLock<Option<String>> = OnceLock::new();
        static SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let at = AT.get_or_init(|| std::env::var("COFFRE_INTERRUPT_AT").ok());
        if at.as_deref() == Some(name) && !SENT.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: raising a signal on ourselves; the handler (if any) only sets a flag.
            unsafe { libc::raise(libc::SIGINT) };
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

    /// `now_ns`, unless the tests set `COFFRE_TEST_POINT_TIME` (whole seconds).
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
}

#[cfg(feature = "fault-injection")]
pub use injected::{crash_point, interrupt_point, point_time, write_limit};

/// Does nothing: fault injection is not compiled in.
#[cfg(not(feature = "fault-injection"))]
pub fn crash_point(_name: &str) {}

/// Does nothing: fault injection is not compiled in.
#[cfg(not(feature = "fault-injection"))]
pub fn interrupt_point(_name: &str) {}

/// Always `None`: fault injection is not compiled in.
#[cfg(not(feature = "fault-injection"))]
pub fn write_limit() -> Option<u64> {
    None
}

/// `now_ns`: fault injection is not compiled in.
#[cfg(not(feature = "fault-injection"))]
pub fn point_time(now_ns: i64) -> i64 {
    now_ns
}
