//! Progress bars for long operations (indicatif): shown on a terminal, silent otherwise.
//!
//! Two kinds, both counting files and bytes from any thread: `Progress::bytes` for work of a
//! known size (percentage, rate, time left) and `Progress::spinner` for work of unknown size
//! (files, bytes, rate, elapsed); `Progress::items` counts the items of `backup A B C`. Every bar
//! joins one board (an indicatif `MultiProgress` on stderr), so bars shown together stack; text
//! printed while bars are shown goes through `suspend`. A ticker thread redraws each visible bar
//! ten times a second, so a bar moves (elapsed time, spinner) while one large file is read. Nothing
//! is drawn when stderr is not a terminal, so scripts and tests see clean output. Owns no state
//! that outlives a bar: `finish` (or drop) clears it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

pub use crate::words::{human_bytes, plural};

/// How often a visible bar is redrawn, even when nothing was counted.
const TICK: Duration = Duration::from_millis(100);

/// One progress bar. Cheap to update from many threads (atomics and indicatif's own lock).
pub struct Progress {
    bar: ProgressBar,
    files: Arc<AtomicU64>,
    ticker: Mutex<Option<Ticker>>,
}

/// The board every bar joins: stderr, at most 10 redraws a second, hidden off a terminal.
fn board() -> &'static MultiProgress {
    static BOARD: OnceLock<MultiProgress> = OnceLock::new();
    BOARD.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)))
}

/// Runs `f` (which prints) with the bars taken off the screen, then draws them again.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    board().suspend(f)
}

impl Progress {
    /// Work of unknown size: `label: 1,234 files, 1.2 GiB, 45 MiB/s, 3s`.
    pub fn spinner(label: &str, enabled: bool) -> Progress {
        Progress::make(
            label,
            None,
            enabled,
            "{spinner} {prefix}: {files}, {binary_bytes}, {binary_bytes_per_sec}, {elapsed}",
        )
    }

    /// Work of `total` bytes (`add_total` can grow it): bar, percentage, rate and time left.
    pub fn bytes(label: &str, total: u64, enabled: bool) -> Progress {
        Progress::make(
            label,
            Some(total),
            enabled,
            "{prefix}: [{bar:30}] {percent:>3}% {binary_bytes}/{binary_total_bytes}{and_files}, \
             {binary_bytes_per_sec}, {eta} left",
        )
    }

    /// `count` items done one after another (`next_item` after each): `label: 2 of 3 done`.
    pub fn items(label: &str, count: u64, enabled: bool) -> Progress {
        Progress::make(label, Some(count), enabled, "{prefix}: {pos} of {len} done")
    }

    fn make(label: &str, total: Option<u64>, enabled: bool, template: &str) -> Progress {
        let files = Arc::new(AtomicU64::new(0));
        let (shown, shown_if_any) = (files.clone(), files.clone());
        // `files`: `3 files`; `and_files`: `, 3 files`, or nothing before the first file.
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
            .with_key(
                "files",
                move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}", plural(shown.load(Ordering::Relaxed), "file"));
                },
            )
            .with_key(
                "and_files",
                move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let n = shown_if_any.load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = write!(w, ", {}", plural(n, "file"));
                    }
                },
            );
        let bar = match (enabled && !board().is_hidden(), total) {
            (false, _) => ProgressBar::hidden(),
            // A total of 0 is one still to come (`add_total`): not "100%" meanwhile.
            (true, Some(n)) if n > 0 => board().add(ProgressBar::new(n)),
            (true, _) => board().add(ProgressBar::no_length()),
        };
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        let ticker = (!bar.is_hidden())
            .then(|| Ticker::start(bar.clone()))
            .flatten();
        Progress {
            bar,
            files,
            ticker: Mutex::new(ticker),
        }
    }

    /// Counts `files` more files (or items) done and `bytes` more bytes.
    pub fn add(&self, files: u64, bytes: u64) {
        if files > 0 {
            self.files.fetch_add(files, Ordering::Relaxed);
        }
        if bytes > 0 {
            self.bar.inc(bytes);
        }
    }

    /// Grows the total by `bytes` (work found while running, e.g. an image just opened).
    pub fn add_total(&self, bytes: u64) {
        let total = self.bar.length().unwrap_or(0) + bytes;
        self.bar.set_length(total);
    }

    /// One more item of an `items` bar is done.
    pub fn next_item(&self) {
        self.bar.inc(1);
    }

    /// Whether the bar is drawn (a terminal, and not `-q`).
    pub fn is_shown(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Takes the bar off the screen (also done on drop).
    pub fn finish(&self) {
        if let Some(t) = self.ticker.lock().ok().and_then(|mut t| t.take()) {
            t.stop();
        }
        self.bar.finish_and_clear();
        board().remove(&self.bar);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Redraws a bar every `TICK` until stopped. A thread of its own, made with `Builder::spawn`
/// (indicatif's `enable_steady_tick` uses `thread::spawn`, which panics when the system refuses
/// a thread; a bar without ticks is fine).
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: JoinHandle<()>,
}

impl Ticker {
    fn start(bar: ProgressBar) -> Option<Ticker> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let (lock, cv) = &*flag;
                let Ok(mut stopped) = lock.lock() else { return };
                while !*stopped {
                    bar.tick();
                    match cv.wait_timeout(stopped, TICK) {
                        Ok((guard, _)) => stopped = guard,
                        Err(_) => return,
                    }
                }
            })
            .ok()?;
        Some(Ticker { stop, handle })
    }

    fn stop(self) {
        let (lock, cv) = &*self.stop;
        if let Ok(mut stopped) = lock.lock() {
            *stopped = true;
        }
        cv.notify_all();
        let _ = self.handle.join();
    }
}
