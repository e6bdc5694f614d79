//! Backup of raw disk images and block devices (`disk` items).
//!
//! Each image is cut into fixed 32 KiB blocks, so block N of a disk is chunk N of a point. Holes
//! (SEEK_DATA/SEEK_HOLE) are never read and all-zero blocks are never stored: both are recorded
//! as holes. Blocks are grouped into segments of 2048 (64 MiB of disk), each a content list
//! stored under its own id; an image's content is the list of its segments, so a point shares
//! every unchanged segment with the previous one and the catalog grows with changed blocks, not
//! disk size. One reader thread per image (several images are read in parallel) hashes blocks and
//! checks them against the vault; new blocks go to compression workers, each block a record of
//! its own (a random read through the mount decompresses 32 KiB at most). 32 KiB rather than
//! 64 KiB was chosen by measurement (BENCHMARKS.md): random 4 KiB reads through the mount are
//! dominated by decompressing and hashing one block, and small edits store less; the vault is
//! about 7 % larger for it.
//! Crash story: as for files (see `backup`): one catalog transaction after every pack is fsync'd.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use super::files::BackupReport;
use super::sink::{self, Dedup, Grouper, SealedPack};
use super::{Abort, BackupError, entry_from_stat};
use crate::progress::Progress;
use crate::vault::format::{self, encode_list, encode_tree};
use crate::vault::{
    Content, Entry, Extent, Hash32, Item, Kind, PointRow, Vault, VaultRef, WriteLock, now_ns,
};

/// Fixed block size of disk images (see the module header for why 32 KiB).
pub const BLOCK: usize = 32 * 1024;
/// Blocks per segment (one content list).
pub const SEGMENT_BLOCKS: usize = 2048;

/// How to run a disk backup.
#[derive(Clone, Debug, Default)]
pub struct DiskOptions {
    /// Compression threads (0 = one per core).
    pub threads: usize,
    pub progress: bool,
}

/// The name an image gets inside a point: its file name, with `.img` added if missing.
pub fn image_name(path: &Path) -> Result<Vec<u8>, BackupError> {
    use std::os::unix::ffi::OsStrExt;
    let name = path.file_name().ok_or_else(|| BackupError::Source {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let mut n = name.as_bytes().to_vec();
    if !n.ends_with(b".img") {
        n.extend_from_slice(b".img");
    }
    Ok(n)
}

/// Size of a regular file or block device.
fn image_size(f: &std::fs::File, st: &libc::stat) -> std::io::Result<u64> {
    if st.st_mode & libc::S_IFMT == libc::S_IFBLK {
        use std::io::Seek;
        let mut f = f;
        return f.seek(std::io::SeekFrom::End(0));
    }
    Ok(st.st_size as u64)
}

/// A segment (or the whole list) ready for the catalog.
struct ListBlob {
    id: Hash32,
    encoded: Vec<u8>,
}

/// What a reader thread hands back for one image.
struct ImageDone {
    entry: Entry,
}

/// Reads one image: returns its entry (content = list of segments); segments go to `lists`,
/// new blocks to `blocks`.
#[allow(clippy::too_many_arguments)]
fn read_image(
    path: &Path,
    name: Vec<u8>,
    vault: &VaultRef,
    dedup: &Dedup,
    abort: &Abort,
    progress: &Progress,
    lists: &Sender<ListBlob>,
    blocks: &Sender<(Hash32, Vec<u8>)>,
) -> Result<ImageDone, BackupError> {
    let src = |e| BackupError::Source {
        path: path.to_path_buf(),
        source: e,
    };
    let file = std::fs::File::open(path).map_err(src)?;
    let st = crate::fsmeta::fstat(std::os::fd::AsFd::as_fd(&file)).map_err(src)?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG && kind != libc::S_IFBLK {
        return Err(src(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        )));
    }
    let size = image_size(&file, &st).map_err(src)?;
    let regions = if kind == libc::S_IFREG {
        super::data_regions(&file, size).map_err(src)?
    } else {
        vec![(0, size)]
    };
    let catalog = vault.connect()?;
    let mut top: Vec<Extent> = Vec::new();
    let mut seg: Vec<Extent> = Vec::with_capacity(SEGMENT_BLOCKS);
    let mut seg_len = 0u64;
    let mut seg_data = 0u64;
    let mut buf = vec![0u8; BLOCK];
    let mut region = 0usize;
    let mut pos = 0u64;
    let push = |seg: &mut Vec<Extent>, x: Extent| match (seg.last_mut(), x) {
        (Some(Extent::Hole { len }), Extent::Hole { len: more }) => *len += more,
        _ => seg.push(x),
    };
    while pos < size {
        if abort.is_set() {
            return Err(BackupError::Aborted("stopped".into()));
        }
        let len = (size - pos).min(BLOCK as u64);
        let end = pos + len;
        while region < regions.len() && regions[region].0 + regions[region].1 <= pos {
            region += 1;
        }
        let has_data = regions
            .get(region)
            .is_some_and(|&(s, l)| s < end && s + l > pos);
        let x = if !has_data {
            Extent::Hole { len }
        } else {
            let b = &mut buf[..len as usize];
            file.read_exact_at(b, pos).map_err(src)?;
            progress.add(0, len);
            if b.iter().all(|&v| v == 0) {
                Extent::Hole { len }
            } else {
                let id = Hash32::of(b);
                if dedup.claim(&catalog, &id, b.len())? {
                    blocks
                        .send((id, b.to_vec()))
                        .map_err(|_| BackupError::Aborted("compression workers stopped".into()))?;
                }
                seg_data += len;
                Extent::Data { id, len }
            }
        };
        push(&mut seg, x);
        seg_len += len;
        pos = end;
        if seg_len == (SEGMENT_BLOCKS * BLOCK) as u64 || pos == size {
            let encoded = encode_list(&seg);
            let id = Hash32::of(&encoded);
            lists
                .send(ListBlob { id, encoded })
                .map_err(|_| BackupError::Aborted("catalog thread stopped".into()))?;
            top.push(Extent::Sub {
                id,
                len: seg_len,
                data: seg_data,
            });
            seg.clear();
            seg_len = 0;
            seg_data = 0;
        }
    }
    let mut entry = entry_from_stat(name, &st, Kind::File);
    entry.size = size;
    entry.ino = 0; // images are re-read every time: no files cache
    entry.nlink = 1;
    entry.dev = 0;
    entry.content = if top.is_empty() {
        Content::None
    } else {
        let encoded = encode_list(&top);
        let id = Hash32::of(&encoded);
        lists
            .send(ListBlob { id, encoded })
            .map_err(|_| BackupError::Aborted("catalog thread stopped".into()))?;
        Content::List(id)
    };
    progress.add(1, 0);
    Ok(ImageDone { entry })
}

fn compress_worker(
    vault: &VaultRef,
    abort: &Abort,
    blocks: Receiver<(Hash32, Vec<u8>)>,
    records: Sender<crate::vault::packs::Record>,
) {
    let mut g = match Grouper::with_grouping(vault.zstd_level(), false, records) {
        Ok(g) => g,
        Err(e) => return abort.fail(BackupError::Aborted(format!("zstd: {e}"))),
    };
    for (id, data) in blocks {
        if abort.is_set() {
            continue;
        }
        if let Err(e) = g.add(id, &data) {
            return abort.fail(e);
        }
    }
}

/// What a point of images holds besides the images.
pub enum Capture<'a> {
    /// A disk item: the images at the top of the point.
    Disk,
    /// A VM: its config file at the top, the images under `disks/`.
    Vm { config: &'a Path },
}

/// Identity and change markers of an image file, to tell whether it changed while being read.
fn stamp(p: &Path) -> Option<(u64, i64, i64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    m.is_file().then(|| {
        (
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
    })
}

/// Backs up the images of a disk item as one new recovery point.
pub fn backup_disks(
    vault: &Vault,
    lock: &WriteLock,
    item: &Item,
    images: &[PathBuf],
    opts: &DiskOptions,
) -> Result<BackupReport, BackupError> {
    backup_images(vault, lock, item, images, Capture::Disk, false, opts)
}

/// Reads a small file (a VM config) as chunks; new ones go to the compression workers.
fn capture_file(
    path: &Path,
    vault: &VaultRef,
    dedup: &Dedup,
    blocks: &Sender<(Hash32, Vec<u8>)>,
    lists: &Sender<ListBlob>,
) -> Result<Entry, BackupError> {
    let src = |e| BackupError::Source {
        path: path.to_path_buf(),
        source: e,
    };
    let file = std::fs::File::open(path).map_err(src)?;
    let st = crate::fsmeta::fstat(std::os::fd::AsFd::as_fd(&file)).map_err(src)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size > 64 << 20 {
        return Err(src(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a VM config must be a regular file of at most 64 MiB",
        )));
    }
    let data = std::fs::read(path).map_err(src)?;
    let catalog = vault.connect()?;
    let mut extents = Vec::new();
    for chunk in crate::chunking::cut_slice(&data) {
        let id = Hash32::of(chunk);
        if dedup.claim(&catalog, &id, chunk.len())? {
            blocks
                .send((id, chunk.to_vec()))
                .map_err(|_| BackupError::Aborted("compression workers stopped".into()))?;
        }
        extents.push(Extent::Data {
            id,
            len: chunk.len() as u64,
        });
    }
    let name = path
        .file_name()
        .map(|n| std::os::unix::ffi::OsStrExt::as_bytes(n).to_vec())
        .unwrap_or_else(|| b"config".to_vec());
    let mut e = entry_from_stat(name, &st, Kind::File);
    e.size = data.len() as u64;
    e.ino = 0;
    e.content = match extents.as_slice() {
        [] => Content::None,
        [Extent::Data { id, .. }] => Content::Chunk(*id),
        _ => {
            let encoded = encode_list(&extents);
            let id = Hash32::of(&encoded);
            lists
                .send(ListBlob { id, encoded })
                .map_err(|_| BackupError::Aborted("catalog thread stopped".into()))?;
            Content::List(id)
        }
    };
    Ok(e)
}

/// Backs up images (and, for a VM, its config) as one new recovery point. The point records its
/// consistency: `application` if `quiesced` (a pre-script succeeded), else `file` if no image
/// file changed while it was read (the machine was off), else `crash`.
pub fn backup_images(
    vault: &Vault,
    _lock: &WriteLock,
    item: &Item,
    images: &[PathBuf],
    capture: Capture,
    quiesced: bool,
    opts: &DiskOptions,
) -> Result<BackupReport, BackupError> {
    let stamps_before: Vec<_> = images.iter().map(|p| stamp(p)).collect();
    let started = Instant::now();
    let start_ns = crate::testing::point_time(now_ns());
    let mut names = Vec::new();
    for p in images {
        let n = image_name(p)?;
        format::check_name(&n).map_err(|e| BackupError::Aborted(e.to_string()))?;
        if names.contains(&n) {
            return Err(BackupError::Aborted(format!(
                "two images would both be called {:?} in the point; rename one",
                String::from_utf8_lossy(&n)
            )));
        }
        names.push(n);
    }
    let threads = crate::threads::count(opts.threads, 1);
    let shared = vault.shared();
    let abort = Abort::default();
    let dedup = Dedup::default();
    let stored = AtomicU64::new(0);
    let progress = Progress::new("backup", opts.progress);
    let (list_tx, list_rx) = bounded::<ListBlob>(64);
    let (block_tx, block_rx) = bounded::<(Hash32, Vec<u8>)>(4 * threads);
    let (rec_tx, rec_rx) = bounded(2 * threads);
    let (sealed_tx, sealed_rx) = unbounded::<SealedPack>();
    let catalog = vault.catalog();
    catalog.begin()?;
    let mut catalog_bytes = 0u64;
    let mut packs_written = Vec::new();

    let result: Result<(Vec<Entry>, Option<Entry>), BackupError> = std::thread::scope(|s| {
        let packs_dir = vault.packs_dir();
        let (abort_ref, stored_ref, shared_ref) = (&abort, &stored, &shared);
        let thread_err = BackupError::Thread;
        crate::threads::try_spawn(s, "pack writer", move || {
            if let Err(e) = sink::run_pack_writer(&packs_dir, rec_rx, sealed_tx, stored_ref) {
                abort_ref.fail(e);
            }
        })
        .map_err(thread_err)?;
        let readers: Vec<_> = images
            .iter()
            .zip(names.iter().cloned())
            .map(|(path, name)| {
                let (lists, blocks) = (list_tx.clone(), block_tx.clone());
                let (dedup, progress) = (&dedup, &progress);
                let reader = crate::threads::try_spawn(s, "image reader", move || {
                    let r = read_image(
                        path, name, shared_ref, dedup, abort_ref, progress, &lists, &blocks,
                    );
                    if let Err(e) = &r {
                        abort_ref.fail(BackupError::Aborted(e.to_string()));
                    }
                    r
                });
                reader.map_err(|e| abort_ref.fail(BackupError::Thread(e)))
            })
            .collect();
        // The pool comes last: when the system allows fewer threads than asked, it is the
        // pool that shrinks, not a reader the backup cannot do without.
        let pool = crate::threads::spawn_workers(s, "compression", threads, |_| {
            let (rx, tx) = (block_rx.clone(), rec_tx.clone());
            move || compress_worker(shared_ref, abort_ref, rx, tx)
        });
        drop((block_rx, rec_tx));
        if let Err(e) = pool {
            abort.fail(thread_err(e));
        }
        let mut fail = None;
        let config = match capture {
            Capture::Vm { config } => {
                match capture_file(config, shared_ref, &dedup, &block_tx, &list_tx) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        abort.fail(BackupError::Aborted(e.to_string()));
                        fail = Some(e);
                        None
                    }
                }
            }
            Capture::Disk => None,
        };
        drop((list_tx, block_tx));
        // The catalog side: segments as they come, sealed packs in between.
        for blob in list_rx {
            match catalog.put_list(&blob.id, &blob.encoded) {
                Ok(n) => catalog_bytes += n,
                Err(e) => {
                    fail = Some(BackupError::from(e));
                    abort.fail(BackupError::Aborted("catalog write failed".into()));
                    break;
                }
            }
            while let Ok(p) = sealed_rx.try_recv() {
                packs_written.push(p.name.clone());
                if let Err(e) = sink::register_pack(catalog, &p, start_ns) {
                    fail = Some(e.into());
                }
            }
            progress.tick();
        }
        let mut entries = Vec::new();
        for r in readers {
            let Ok(r) = r else {
                continue; // not started: the abort holds why
            };
            match r.join() {
                Ok(Ok(done)) => entries.push(done.entry),
                Ok(Err(e)) => {
                    fail.get_or_insert(e);
                }
                Err(_) => {
                    fail.get_or_insert(BackupError::Aborted("an image reader panicked".into()));
                }
            }
        }
        match fail {
            // A reader that only saw another thread stop reports the cause that thread left.
            Some(BackupError::Aborted(_)) if abort.is_set() => Err(abort.take("a worker stopped")),
            Some(e) => Err(e),
            None => Ok((entries, config)),
        }
    });
    // Every thread has ended: packs are sealed (or the backup failed).
    let fin = result.and_then(|(mut entries, config)| {
        if abort.is_set() {
            return Err(abort.take("a worker stopped"));
        }
        for p in sealed_rx.try_iter() {
            packs_written.push(p.name.clone());
            sink::register_pack(catalog, &p, start_ns)?;
        }
        let files = entries.len() as u64 + config.is_some() as u64;
        let logical = entries.iter().chain(config.iter()).map(|e| e.size).sum();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let enc = encode_tree(&entries);
        let mut tree = Hash32::of(&enc);
        catalog_bytes += catalog.put_tree(&tree, &enc)?;
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        if let Some(config) = config {
            // A VM: <config> and disks/ at the top.
            let disks = Entry {
                name: b"disks".to_vec(),
                kind: Some(Kind::Dir),
                mode: 0o700,
                uid,
                gid,
                subtree: Some(tree),
                nlink: 2,
                ..Default::default()
            };
            let mut top = vec![config, disks];
            top.sort_by(|a, b| a.name.cmp(&b.name));
            if top[0].name == top[1].name {
                return Err(BackupError::Aborted(
                    "the VM config file cannot be called \"disks\"".into(),
                ));
            }
            let enc = encode_tree(&top);
            tree = Hash32::of(&enc);
            catalog_bytes += catalog.put_tree(&tree, &enc)?;
        }
        let unchanged = images
            .iter()
            .zip(&stamps_before)
            .all(|(p, before)| before.is_some() && stamp(p) == *before);
        let consistency = if quiesced {
            "application"
        } else if unchanged {
            "file"
        } else {
            "crash"
        };
        let root = Entry {
            kind: Some(Kind::Dir),
            mode: 0o700,
            uid,
            gid,
            mtime: crate::vault::Timestamp {
                sec: start_ns.div_euclid(1_000_000_000),
                nsec: start_ns.rem_euclid(1_000_000_000) as u32,
            },
            subtree: Some(tree),
            nlink: 2,
            ..Default::default()
        };
        let point = PointRow {
            rowid: 0,
            id: sink::new_point_id(catalog)?,
            item: item.name.clone(),
            time: start_ns,
            root: format::encode_root(&root),
            files,
            dirs: 0,
            logical_bytes: logical,
            new_chunks: dedup.new_chunks.load(Ordering::Relaxed),
            new_bytes: dedup.new_bytes.load(Ordering::Relaxed),
            stored_bytes: stored.load(Ordering::Relaxed),
            warnings: 0,
            duration_ms: started.elapsed().as_millis() as u64,
            consistency: Some(consistency.to_string()),
        };
        sink::commit_point(catalog, item.id, &point)?;
        Ok(point)
    });
    progress.finish();
    match fin {
        Ok(point) => Ok(BackupReport {
            point,
            warnings: Vec::new(),
            catalog_bytes,
        }),
        Err(e) => {
            catalog.rollback();
            packs_written.extend(sealed_rx.try_iter().map(|p| p.name));
            sink::discard_packs(&vault.packs_dir(), &packs_written);
            Err(e)
        }
    }
}
