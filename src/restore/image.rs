//! Whole-image restores for the sidecar: a disk image to a file or block device, a VM (config and
//! disks) to a directory or back in place, and the check that re-protection relies on.
//!
//! A restore computes an `ImagePlan` per image (what goes where, how much data), which
//! `--dry-run` prints and `apply` carries out. Writes are sparse into new files (holes are not
//! written) and zero-filled into devices and existing files; every block is checked against its
//! BLAKE3 id before it is written. Targets that exist are refused unless forced; targets that are
//! mounted (or back a mounted loop device) are always refused.
//! Crash story: a killed restore leaves a partly written target; running it again rewrites it.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::RestoreError;
use super::files::{ExtentWriter, WriteError, lookup};
use crate::progress::Progress;
use crate::vault::format;
use crate::vault::{Content, Entry, Extent, Kind, PointRow, Vault, VaultError};

/// One image to write.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImagePlan {
    /// Path of the image inside the point (`disk.img`, `disks/root.img`, `vm.conf`).
    pub source: String,
    pub target: PathBuf,
    pub size: u64,
    /// Bytes that hold data (the rest are holes).
    pub data_bytes: u64,
    /// The target exists and will be overwritten.
    pub overwrite: bool,
    /// The target is a block device.
    pub device: bool,
    #[serde(skip)]
    entry: Entry,
}

fn target_err(path: &Path, msg: impl Into<String>) -> RestoreError {
    RestoreError::Target {
        path: path.to_path_buf(),
        source: std::io::Error::other(msg.into()),
    }
}

/// True if `path` is mounted, is the device of a mount, or backs a loop device.
pub fn in_use(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return false;
    };
    let c = canon.to_string_lossy().into_owned();
    // A block device may be mounted under another name (/dev/mapper/x for /dev/dm-0): compare
    // device numbers too.
    let rdev = std::fs::metadata(&canon)
        .ok()
        .filter(|m| m.file_type().is_block_device())
        .map(|m| std::os::unix::fs::MetadataExt::rdev(&m));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (src, dst) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        src == c
            || dst == c
            || rdev.is_some_and(|r| {
                src.starts_with("/dev/")
                    && std::fs::metadata(src)
                        .is_ok_and(|m| std::os::unix::fs::MetadataExt::rdev(&m) == r)
            })
    }) {
        return true;
    }
    // Loop devices backed by this file.
    if let Ok(dir) = std::fs::read_dir("/sys/block") {
        for d in dir.flatten() {
            let backing = d.path().join("loop/backing_file");
            if let Ok(b) = std::fs::read_to_string(backing)
                && b.trim_end() == c
            {
                return true;
            }
        }
    }
    false
}

/// Data bytes of an entry's content (from the lists; segments carry their own count).
fn data_bytes(vault: &Vault, e: &Entry) -> Result<u64, VaultError> {
    Ok(match e.content {
        Content::None => 0,
        Content::Chunk(_) => e.size,
        Content::List(id) => vault
            .catalog()
            .list(&id)?
            .iter()
            .map(Extent::data_len)
            .sum(),
    })
}

/// Plans writing the file at `source` (a path inside the point) to `target`.
pub fn plan_image(
    vault: &Vault,
    point: &PointRow,
    source: &str,
    target: &Path,
    force: bool,
) -> Result<ImagePlan, RestoreError> {
    let root = format::decode_root(&point.root).map_err(VaultError::from)?;
    let entry = lookup(vault, &root, std::ffi::OsStr::new(source))?;
    if entry.kind() != Kind::File {
        return Err(RestoreError::NoSuchPath(source.to_string()));
    }
    let meta = std::fs::metadata(target).ok();
    let device = meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    if in_use(target) {
        return Err(target_err(
            target,
            "is mounted or in use by a loop device; unmount it first",
        ));
    }
    if meta.is_some() && !force {
        return Err(target_err(target, "exists; pass --force to overwrite it"));
    }
    if let Some(m) = &meta
        && m.is_dir()
    {
        return Err(target_err(target, "is a directory"));
    }
    Ok(ImagePlan {
        source: source.to_string(),
        target: target.to_path_buf(),
        size: entry.size,
        data_bytes: data_bytes(vault, &entry)?,
        overwrite: meta.is_some(),
        device,
        entry,
    })
}

/// Writes one planned image. Returns the bytes written.
pub fn apply(vault: &Vault, plan: &ImagePlan, progress: bool) -> Result<u64, RestoreError> {
    let terr = |e| RestoreError::Target {
        path: plan.target.clone(),
        source: e,
    };
    if let Some(dir) = plan.target.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(terr)?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(!plan.device)
        .truncate(false)
        .open(&plan.target)
        .map_err(terr)?;
    if plan.device {
        let dev_size = {
            use std::io::Seek;
            let mut f = &file;
            f.seek(std::io::SeekFrom::End(0)).map_err(terr)?
        };
        if dev_size < plan.size {
            return Err(target_err(
                &plan.target,
                format!(
                    "is {dev_size} bytes, smaller than the image ({} bytes)",
                    plan.size
                ),
            ));
        }
    } else {
        // A fresh, empty file of the right size: holes stay holes.
        file.set_len(0).map_err(terr)?;
        file.set_len(plan.size).map_err(terr)?;
    }
    let extents = match plan.entry.content {
        Content::None => Vec::new(),
        Content::Chunk(id) => vec![Extent::Data {
            id,
            len: plan.entry.size,
        }],
        Content::List(id) => vault.catalog().list(&id)?,
    };
    let bar = Progress::new("restore", progress);
    let done = std::sync::atomic::AtomicU64::new(0);
    let tick = |_: u64| {
        let n = done.load(std::sync::atomic::Ordering::Relaxed);
        bar.bytes.store(n, std::sync::atomic::Ordering::Relaxed);
        bar.tick();
    };
    // Top-level extents (segments of a disk image) are shared out among threads, each with its
    // own catalog connection; they write disjoint ranges of the target.
    let mut starts = Vec::with_capacity(extents.len());
    let mut pos = 0;
    for x in &extents {
        starts.push(pos);
        pos += x.len();
    }
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(extents.len().max(1));
    let shared = vault.shared();
    // Each thread takes the next extent not yet taken, so fewer threads (when the system
    // refuses some) still cover every extent.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<u64, RestoreError>> = std::thread::scope(|s| {
        let mut refused = None;
        let handles: Vec<_> = (0..threads)
            .map_while(|t| {
                let (extents, starts, file, shared, tick, done, next) =
                    (&extents, &starts, &file, &shared, &tick, &done, &next);
                let spawned = crate::threads::try_spawn(
                    s,
                    "restore",
                    move || -> Result<u64, RestoreError> {
                        let catalog = shared.connect()?;
                        let mut w = ExtentWriter {
                            catalog: &catalog,
                            reader: shared.chunk_reader(),
                            file,
                            written: 0,
                            data_end: 0,
                            zero_holes: plan.device,
                            on_progress: if t == 0 { Some(tick) } else { None },
                        };
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= extents.len() {
                                break;
                            }
                            let before = w.written;
                            w.write(&extents[i..i + 1], starts[i], 0)
                                .map_err(|e| match e {
                                    WriteError::Vault(v) => RestoreError::Vault(v),
                                    WriteError::Io(e) => terr(e),
                                })?;
                            done.fetch_add(
                                w.written - before,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        }
                        Ok(w.written)
                    },
                );
                match spawned {
                    Ok(h) => Some(h),
                    Err(e) => {
                        log::warn!("restoring with {t} of {threads} threads: {e}");
                        refused = Some(e);
                        None
                    }
                }
            })
            .collect();
        if handles.is_empty()
            && let Some(e) = refused
        {
            return vec![Err(RestoreError::Thread(e))];
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(target_err(&plan.target, "a restore thread panicked")))
            })
            .collect()
    });
    let mut written = 0;
    for r in results {
        written += r?;
    }
    file.sync_all().map_err(terr)?;
    bar.finish();
    Ok(written)
}

/// Checks that `path` holds exactly the image at `source` in `point` (re-protection's check).
/// Returns the first differing offset, if any.
pub fn differs(
    vault: &Vault,
    point: &PointRow,
    source: &str,
    path: &Path,
) -> Result<Option<u64>, RestoreError> {
    use std::os::unix::fs::FileExt;
    let root = format::decode_root(&point.root).map_err(VaultError::from)?;
    let entry = lookup(vault, &root, std::ffi::OsStr::new(source))?;
    let terr = |e| RestoreError::Target {
        path: path.to_path_buf(),
        source: e,
    };
    let f = std::fs::File::open(path).map_err(terr)?;
    let size = {
        use std::io::Seek;
        let mut g = &f;
        g.seek(std::io::SeekFrom::End(0)).map_err(terr)?
    };
    if size != entry.size {
        return Ok(Some(size.min(entry.size)));
    }
    // Compare block by block against the point, reading through the vault's verified chunks.
    let mut pos = 0u64;
    let mut buf = vec![0u8; crate::backup::disk::BLOCK];
    let mut stack: Vec<(Vec<Extent>, usize)> = vec![(
        match entry.content {
            Content::None => Vec::new(),
            Content::Chunk(id) => vec![Extent::Data {
                id,
                len: entry.size,
            }],
            Content::List(id) => vault.catalog().list(&id)?,
        },
        0,
    )];
    while let Some((list, i)) = stack.last_mut() {
        let Some(x) = list.get(*i).copied() else {
            stack.pop();
            continue;
        };
        *i += 1;
        match x {
            Extent::Sub { id, .. } => {
                if stack.len() > 4 {
                    return Err(VaultError::Damaged {
                        path: "vault.db".into(),
                        detail: "content lists nested too deep".into(),
                    }
                    .into());
                }
                let sub = vault.catalog().list(&id)?;
                stack.push((sub, 0));
                continue;
            }
            Extent::Hole { len } => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(buf.len() as u64) as usize;
                    f.read_exact_at(&mut buf[..n], pos + done).map_err(terr)?;
                    if let Some(k) = buf[..n].iter().position(|&b| b != 0) {
                        return Ok(Some(pos + done + k as u64));
                    }
                    done += n as u64;
                }
            }
            Extent::Data { id, len } => {
                let mut want = vec![0u8; len as usize];
                f.read_exact_at(&mut want, pos).map_err(terr)?;
                if crate::vault::ChunkId::of(&want) != id {
                    return Ok(Some(pos));
                }
            }
        }
        pos += x.len();
    }
    Ok(None)
}
