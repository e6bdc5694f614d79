//! A progress line for long operations: shown on a terminal, silent otherwise.
//!
//! Owns only counters (atomics, updated from any thread) and the rendering of one `\r` line on
//! stderr, at most four times a second. Never prints when stderr is not a terminal, so scripts and
//! tests see clean output.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Progress {
    verb: &'static str,
    enabled: bool,
    start: Instant,
    last: Mutex<Instant>,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

impl Progress {
    /// `verb` names the operation ("backup", "restore").
    pub fn new(verb: &'static str, enabled: bool) -> Progress {
        let now = Instant::now();
        Progress {
            verb,
            enabled: enabled && std::io::stderr().is_terminal(),
            start: now,
            last: Mutex::new(now),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    pub fn add(&self, files: u64, bytes: u64) {
        if files > 0 {
            self.files.fetch_add(files, Ordering::Relaxed);
        }
        if bytes > 0 {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Redraws the line if a quarter second has passed since the last draw.
    pub fn tick(&self) {
        if !self.enabled {
            return;
        }
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        if last.elapsed() < Duration::from_millis(250) {
            return;
        }
        *last = Instant::now();
        self.draw("\r");
    }

    fn draw(&self, prefix: &str) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let line = format!(
            "{prefix}{}: {} files, {}, {}/s   ",
            self.verb,
            self.files.load(Ordering::Relaxed),
            human_bytes(bytes),
            human_bytes((bytes as f64 / secs) as u64)
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    /// Clears the line (call once at the end).
    pub fn finish(&self) {
        if self.enabled {
            let _ = std::io::stderr().write_all(b"\r\x1b[K");
        }
    }
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
