//! Pack stores: where sealed packs live. The only code that opens, lists or removes pack files.
//!
//! `PackStore` is the seam every backend implements: create (append, then finish = durable),
//! read a byte range, list, delete, quarantine. `LocalStore` (a vault's `packs/` directory) is the
//! first implementation; object storage only adds another. Packs are immutable once finished and
//! a name is never reused. The local store bounds its open descriptors (an LRU of open packs), so
//! a long mount of a vault with thousands of packs never runs out of file descriptors.
//! Crash story: a pack is written under its final name and fsync'd by `finish`; the directory
//! entry is made durable by `sync` before the catalog names the pack. A crash leaves at worst a
//! pack the catalog does not name, which recovery moves to `packs/orphaned/` (never deletes).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A pack as a store lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackInfo {
    pub name: String,
    pub size: u64,
}

/// A pack being written. Bytes are appended; `finish` makes it durable and readable.
pub trait PackUpload: Send {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Flushes and makes the pack durable. After `Ok` the catalog may name it (once `sync` ran).
    fn finish(self: Box<Self>) -> io::Result<()>;
    /// Abandons the pack and removes what was written (best effort).
    fn abort(self: Box<Self>);
}

/// Where packs live. Every method may be called from any thread.
pub trait PackStore: Send + Sync {
    /// Where this store is, for messages.
    fn describe(&self) -> String;
    /// Starts writing pack `name`; fails if it exists.
    fn create(&self, name: &str) -> io::Result<Box<dyn PackUpload>>;
    /// Reads exactly `buf.len()` bytes of pack `name` at `offset` (`UnexpectedEof` past its end,
    /// `NotFound` if the pack is missing).
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Every pack in the store, with its size (quarantined packs are not listed).
    fn list(&self) -> io::Result<Vec<PackInfo>>;
    /// Removes a pack for good.
    fn delete(&self, name: &str) -> io::Result<()>;
    /// Moves a pack the catalog does not name out of the way, keeping its bytes.
    fn quarantine(&self, name: &str) -> io::Result<()>;
    /// Makes every finished pack's existence durable (local: fsync of the directory).
    fn sync(&self) -> io::Result<()>;
}

/// Open packs kept by a local store at most; older ones are closed first. Fewer when the
/// process may open few files (a quarter of RLIMIT_NOFILE, raised to its hard limit first).
const MAX_OPEN_PACKS: usize = 128;
/// Where quarantined packs go, under the packs directory.
pub const ORPHANED_DIR: &str = "orphaned";

/// A vault's `packs/` directory.
pub struct LocalStore {
    dir: PathBuf,
    open: Mutex<OpenPacks>,
    max_open: usize,
}

#[derive(Default)]
struct OpenPacks {
    files: HashMap<String, (Arc<File>, u64)>,
    tick: u64,
}

impl LocalStore {
    pub fn new(dir: PathBuf) -> LocalStore {
        let limit = crate::fsmeta::raise_fd_limit();
        LocalStore {
            dir,
            open: Mutex::new(OpenPacks::default()),
            max_open: ((limit / 4).min(MAX_OPEN_PACKS as u64) as usize).max(4),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pack"))
    }

    fn file(&self, name: &str) -> io::Result<Arc<File>> {
        let mut open = self.open.lock().expect("open packs lock");
        open.tick += 1;
        let tick = open.tick;
        if let Some((f, t)) = open.files.get_mut(name) {
            *t = tick;
            return Ok(f.clone());
        }
        drop(open);
        let f = Arc::new(File::open(self.path(name))?);
        let mut open = self.open.lock().expect("open packs lock");
        if open.files.len() >= self.max_open {
            // Close the older half: amortised O(1), and readers still holding one keep it open.
            let mut ticks: Vec<u64> = open.files.values().map(|(_, t)| *t).collect();
            ticks.sort_unstable();
            let cut = ticks[ticks.len() / 2];
            open.files.retain(|_, (_, t)| *t > cut);
        }
        open.files.insert(name.to_string(), (f.clone(), tick));
        Ok(f)
    }
}

/// A pack written straight under its final name in a local directory.
struct LocalUpload {
    path: PathBuf,
    out: BufWriter<File>,
}

impl PackUpload for LocalUpload {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        let LocalUpload { path, out } = *self;
        let r = out
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all());
        if r.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        r
    }

    fn abort(self: Box<Self>) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl PackStore for LocalStore {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn PackUpload>> {
        let path = self.path(name);
        let f = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Box::new(LocalUpload {
            path,
            out: BufWriter::with_capacity(1 << 20, f),
        }))
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file(name)?.read_exact_at(buf, offset)
    }

    fn list(&self) -> io::Result<Vec<PackInfo>> {
        let mut out = Vec::new();
        for ent in std::fs::read_dir(&self.dir)? {
            let ent = ent?;
            let name = ent.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".pack")) else {
                continue; // only *.pack files are ours to touch
            };
            let meta = ent.metadata()?;
            if meta.is_file() {
                out.push(PackInfo {
                    name: stem.to_string(),
                    size: meta.len(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        self.open
            .lock()
            .expect("open packs lock")
            .files
            .remove(name);
        std::fs::remove_file(self.path(name))
    }

    fn quarantine(&self, name: &str) -> io::Result<()> {
        let dir = self.dir.join(ORPHANED_DIR);
        std::fs::create_dir_all(&dir)?;
        std::fs::rename(self.path(name), dir.join(format!("{name}.pack")))?;
        sync_dir(&dir)?;
        sync_dir(&self.dir)
    }

    fn sync(&self) -> io::Result<()> {
        sync_dir(&self.dir)
    }
}

/// fsyncs a directory so new, renamed or removed entries in it survive a crash.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_store_writes_reads_lists_and_quarantines() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let mut up = store.create("a").unwrap();
        up.write_all(b"hello pack").unwrap();
        up.finish().unwrap();
        assert!(store.create("a").is_err(), "a name is never written twice");
        std::fs::write(dir.path().join("notes.txt"), b"not ours").unwrap();
        let list = store.list().unwrap();
        assert_eq!(
            list,
            vec![PackInfo {
                name: "a".into(),
                size: 10
            }]
        );
        let mut buf = [0u8; 4];
        store.read_at("a", 6, &mut buf).unwrap();
        assert_eq!(&buf, b"pack");
        let past = store.read_at("a", 8, &mut buf).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
        store.quarantine("a").unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(dir.path().join("orphaned/a.pack").is_file());
        assert!(dir.path().join("notes.txt").is_file());
        let gone = store.read_at("b", 0, &mut buf).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn open_packs_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        for i in 0..(3 * MAX_OPEN_PACKS) {
            let mut up = store.create(&format!("p{i}")).unwrap();
            up.write_all(&[i as u8; 8]).unwrap();
            up.finish().unwrap();
        }
        let mut b = [0u8; 1];
        for i in 0..(3 * MAX_OPEN_PACKS) {
            store.read_at(&format!("p{i}"), 3, &mut b).unwrap();
            assert_eq!(b[0], i as u8);
        }
        assert!(store.open.lock().unwrap().files.len() <= store.max_open);
    }
}
