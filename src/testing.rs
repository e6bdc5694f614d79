//! Fault injection for the crash tests, compiled in only with the `fault-injection` cargo
//! feature (the test command enables it; release builds do not have it).
//!
//! `COFFRE_CRASH_AT=<point>` kills the process with SIGKILL when it reaches the named point
//! (`pack-sealed`, `before-commit`, `gc-pack-moved`, `gc-round-committed`, `gc-pack-deleted`,
//! `replicate-pack-copied`, `replicate-packs-placed`, `replicate-before-commit`);
//! `<point>#N` kills it the Nth time it gets there. `COFFRE_TEST_PAUSE=<point>:<file>` stops
//! at a point, creates `<file>.reached` and waits (at most a minute) until `<file>` exists, so
//! a test can run something in between (`gc-marked`: a backup between gc's mark and its
//! rounds). `COFFRE_TEST_DELAY=<point>:<ms>` sleeps there (`verify-pack`: a slow disk, for the
//! time box). `COFFRE_INTERRUPT_AT=<point>` sends it SIGINT (a Ctrl-C) the first time it gets
//! there (`pack-sealed`, `restore-file-written`, `image-data-written`).
//! `COFFRE_FAIL_WRITE_AFTER=<bytes>` makes pack writes fail
//! with ENOSPC once that many bytes were written; `COFFRE_TEST_POINT_TIME=<unix seconds>` sets
//! the time recorded for new points (two points in the same second). Each is read once. Without
//! the feature these functions do nothing, so the variables have no effect.

#[cfg(feature = "fault-injection")]
mod injected {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn crash_at() -> Option<&'static str> {
        static AT: OnceLock<Option<String>> = OnceLock::new();
        AT.get_or_init(|| std::env::var("COFFRE_CRASH_AT").ok())
            .as_deref()
    }

    /// Dies by SIGKILL here if the tests asked for it; also pauses or delays here if asked.
    pub fn crash_point(name: &str) {
        static SEEN: AtomicU64 = AtomicU64::new(0);
        if let Some(at) = crash_at() {
            let (point, nth) = match at.split_once('#') {
                Some((p, n)) => (p, n.parse().unwrap_or(1)),
                None => (at, 1),
            };
            if point == name && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == nth {
                // SAFETY: raising a signal on ourselves; SIGKILL cannot be caught, like a real
                // crash.
                unsafe { libc::raise(libc::SIGKILL) };
            }
        }
        if let Some((point, file)) = var_pair("COFFRE_TEST_PAUSE")
            && point == name
        {
            let _ = std::fs::write(format!("{file}.reached"), b"");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !std::path::Path::new(&file).exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        if let Some((point, ms)) = var_pair("COFFRE_TEST_DELAY")
            && point == name
        {
            let ms = ms.parse().unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }

    /// Sends SIGINT to this process here if the tests asked for it (`COFFRE_INTERRUPT_AT`): one
    /// Ctrl-C, the first time the step is reached.
    pub fn interrupt_point(name: &str) {
        static AT: OnceLock<Option<String>> = OnceLock::new();
        static SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let at = AT.get_or_init(|| std::env::var("COFFRE_INTERRUPT_AT").ok());
        if at.as_deref() == Some(name) && !SENT.swap(true, Ordering::SeqCst) {
            // SAFETY: raising a signal on ourselves; the handler (if any) only sets a flag.
            unsafe { libc::raise(libc::SIGINT) };
        }
    }

    /// `NAME=<point>:<value>`, read once.
    fn var_pair(var: &'static str) -> Option<(String, String)> {
        static PAUSE: OnceLock<Option<(String, String)>> = OnceLock::new();
        static DELAY: OnceLock<Option<(String, String)>> = OnceLock::new();
        let cell = if var == "COFFRE_TEST_PAUSE" {
            &PAUSE
        } else {
            &DELAY
        };
        cell.get_or_init(|| {
            let v = std::env::var(var).ok()?;
            let (p, x) = v.split_once(':')?;
            Some((p.to_string(), x.to_string()))
        })
        .clone()
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
