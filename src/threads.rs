//! Starting threads without panicking, and the one rule for how many to start.
//!
//! `std::thread::Scope::spawn` and `std::thread::spawn` panic when the kernel refuses a thread
//! (RLIMIT_NPROC, a cgroup's pids.max, no memory for a stack). Here a refused thread is an
//! `io::Error`: a pool of workers runs with the workers it got, and a thread that must exist
//! becomes one error line. Nothing here holds state.

use std::io;
use std::thread::{Builder, Scope, ScopedJoinHandle};

/// The most threads `--threads` accepts (0 means one per core).
pub const MAX_THREADS: usize = 256;

/// `n`, or one per core when `n` is 0 (`per_core` per core).
pub fn count(n: usize, per_core: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(2, |c| c.get()) * per_core
    } else {
        n
    }
}

/// Starts a scoped thread named `name`; the error, not a panic, when the system refuses it.
pub fn try_spawn<'scope, F, T>(
    s: &'scope Scope<'scope, '_>,
    name: &str,
    f: F,
) -> io::Result<ScopedJoinHandle<'scope, T>>
where
    F: FnOnce() -> T + Send + 'scope,
    T: Send + 'scope,
{
    Builder::new()
        .name(name.to_string())
        .spawn_scoped(s, f)
        .map_err(|e| refused(name, e))
}

/// Starts up to `n` workers, `make(i)` giving the body of worker `i`, and stops at the first one
/// the system refuses: the pool then runs with fewer workers (said once in the log). Returns how
/// many started; an error only if none could.
pub fn spawn_workers<'scope, F>(
    s: &'scope Scope<'scope, '_>,
    name: &str,
    n: usize,
    mut make: impl FnMut(usize) -> F,
) -> io::Result<usize>
where
    F: FnOnce() + Send + 'scope,
{
    for i in 0..n {
        if let Err(e) = try_spawn(s, name, make(i)) {
            if i == 0 {
                return Err(e);
            }
            log::warn!("running with {i} of {n} {name} threads: {e}");
            return Ok(i);
        }
    }
    Ok(n)
}

/// The error for a thread the system refused, saying what to do about it.
pub fn refused(name: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("cannot start a {name} thread: {e} (is ulimit -u or a cgroup's pids.max reached?)"),
    )
}
