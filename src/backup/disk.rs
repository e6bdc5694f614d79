//! Backup of raw disk images and block devices (`disk` items).
//!
//! Each image is cut into fixed 32 KiB blocks, so block N of a disk is chunk N of a point. Holes
//! (SEEK_DATA/SEEK_HOLE) are never read and all-zero blocks are never stored: both are recorded
//! as holes. Blocks are grouped into segments of 2048 (64 MiB of disk), each a content list
//! stored under its own id; an image's content is the list of its segments, so a point shares
//! every unchanged segment with the previous one and the catalog grows with changed blocks, not
//! disk size. One reader thread per image (several images are read in parallel) hashes blocks and
//! hands them to the write session. With the vault's default image frame (32 KiB) its compression
//! pool stores each new block as a record of its own (a random read through the mount
//! decompresses 32 KiB at most); with a larger frame (`Vault::image_frame`) the new blocks of each
//! aligned frame-sized region of the image share one record: about 20 % less space at 1 MiB, a
//! cold random read then decompresses up to the whole frame. 32 KiB blocks rather than 64 KiB
//! were chosen by measurement (BENCHMARKS.md): random 4 KiB reads through the mount are dominated
//! by decompressing and hashing one block, and small edits store less.
//! Crash story: as for files (see `vault::write`): one transaction, after every pack is durable.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::files::{BackupReport, RunOptions};
use super::{Abort, BackupError, check_interrupt, entry_from_stat};
use crate::progress::Progress;
use crate::vault::format::check_name;
use crate::vault::{
    ChunkId, ChunkSink, Content, Entry, Extent, ItemSource, Kind, NewPoint, SessionOptions,
    SinkMode, Timestamp, Vault, WriteLock, WriteSession, now_ns,
};

/// Fixed block size of disk images (see the module header for why 32 KiB).
pub const BLOCK: usize = crate::vault::DEFAULT_IMAGE_FRAME; // the smallest image frame is one block
/// Blocks per segment (one content list).
pub const SEGMENT_BLOCKS: usize = 2048;

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

/// Appends an extent, merging neighbouring holes.
fn push(seg: &mut Vec<Extent>, x: Extent) {
    match (seg.last_mut(), x) {
        (Some(Extent::Hole { len }), Extent::Hole { len: more }) => *len += more,
        _ => seg.push(x),
    }
}

/// One image being read: its file, size and data regions.
struct Image {
    file: std::fs::File,
    stat: libc::stat,
    size: u64,
    regions: Vec<(u64, u64)>,
}

fn open_image(path: &Path) -> Result<Image, BackupError> {
    let src = |e| BackupError::Source {
        path: path.to_path_buf(),
        source: e,
    };
    let file = std::fs::File::open(path).map_err(src)?;
    let stat = crate::fsmeta::fstat(std::os::fd::AsFd::as_fd(&file)).map_err(src)?;
    let kind = stat.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG && kind != libc::S_IFBLK {
        return Err(src(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        )));
    }
    let size = image_size(&file, &stat).map_err(src)?;
    let regions = if kind == libc::S_IFREG {
        super::data_regions(&file, size).map_err(src)?
    } else {
        vec![(0, size)]
    };
    Ok(Image {
        file,
        stat,
        size,
        regions,
    })
}

/// Reads one image block by block: holes and zero blocks become holes, other blocks go to
/// `sink`, segments to the session. Returns the image's entry (content = list of segments).
fn read_image(
    path: &Path,
    name: Vec<u8>,
    session: &WriteSession,
    mut sink: ChunkSink,
    abort: &Abort,
    progress: &Progress,
) -> Result<Entry, BackupError> {
    let img = open_image(path)?;
    let src = |e| BackupError::Source {
        path: path.to_path_buf(),
        source: e,
    };
    let (size, regions) = (img.size, &img.regions);
    progress.add_total(size);
    let mut top: Vec<Extent> = Vec::new();
    let mut seg: Vec<Extent> = Vec::with_capacity(SEGMENT_BLOCKS);
    let (mut seg_len, mut seg_data) = (0u64, 0u64);
    let mut buf = vec![0u8; BLOCK];
    let mut region = 0usize;
    let mut pos = 0u64;
    // Frames start at multiples of the frame size in the image, so a read of an aligned range
    // (the mount's 1 MiB requests) decompresses frames no other such read needs.
    let frame = session.image_frame() as u64;
    while pos < size {
        if abort.is_set() {
            return Err(BackupError::Aborted("stopped".into()));
        }
        if pos.is_multiple_of(frame) {
            sink.flush()?; // whether or not this block holds data: a frame never crosses
        }
        let len = (size - pos).min(BLOCK as u64);
        let end = pos + len;
        while region < regions.len() && regions[region].0 + regions[region].1 <= pos {
            region += 1;
        }
        let has_data = regions
            .get(region)
            .is_some_and(|&(s, l)| s < end && s + l > pos);
        let b = &mut buf[..len as usize];
        let x = if has_data {
            img.file.read_exact_at(b, pos).map_err(src)?;
            if b.iter().all(|&v| v == 0) {
                Extent::Hole { len }
            } else {
                let id = ChunkId::of(b);
                sink.put(id, b)?;
                seg_data += len;
                Extent::Data { id, len }
            }
        } else {
            Extent::Hole { len }
        };
        progress.add(0, len); // holes too: the total is the images' size
        push(&mut seg, x);
        seg_len += len;
        pos = end;
        if seg_len == (SEGMENT_BLOCKS * BLOCK) as u64 || pos == size {
            let id = session.put_list(&seg)?;
            top.push(Extent::Sub {
                id,
                len: seg_len,
                data: seg_data,
            });
            seg.clear();
            (seg_len, seg_data) = (0, 0);
        }
    }
    sink.flush()?;
    let mut entry = entry_from_stat(name, &img.stat, Kind::File);
    entry.size = size;
    entry.ino = 0; // images are re-read every time: no files cache
    entry.nlink = 1;
    entry.dev = 0;
    entry.content = if top.is_empty() {
        Content::None
    } else {
        Content::List(session.put_list(&top)?)
    };
    progress.add(1, 0);
    Ok(entry)
}

/// What a point of images holds besides the images.
pub enum Capture<'a> {
    /// A disk item: the images at the top of the point.
    Disk,
    /// A VM: its config file at the top, the images under `disks/`.
    Vm { config: &'a Path },
}

/// What can be known of whether an image changed while it was read: a file's size, mtime and
/// ctime; a block device's write counters (`/sys/dev/block/M:m/stat`), and only for a device
/// nobody else has open exclusively (not mounted, not swap, not held by dm/md: the kernel grants
/// `O_EXCL`). `None`: nothing can be known, the point is crash-consistent.
#[derive(Debug, PartialEq, Eq)]
enum Stamp {
    File(u64, i64, i64, i64, i64),
    Device { writes: u64, sectors: u64 },
}

fn stamp(p: &Path) -> Option<Stamp> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(p).ok()?;
    if m.is_file() {
        return Some(Stamp::File(
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ));
    }
    if !m.file_type().is_block_device() || !idle_device(p) {
        return None;
    }
    let (major, minor) = (libc::major(m.rdev()), libc::minor(m.rdev()));
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    let f: Vec<u64> = stat
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // Fields 5 and 7: writes completed, sectors written.
    Some(Stamp::Device {
        writes: *f.get(4)?,
        sectors: *f.get(6)?,
    })
}

/// True if the kernel grants `O_EXCL` on the device: nothing has it mounted or held.
fn idle_device(p: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(p)
        .is_ok()
}

/// Reads a small file (a VM config) into the session as chunks.
fn capture_file(
    path: &Path,
    session: &WriteSession,
    mut sink: ChunkSink,
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
    let mut extents = Vec::new();
    for chunk in crate::chunking::cut_slice(&data) {
        let id = ChunkId::of(chunk);
        sink.put(id, chunk)?;
        extents.push(Extent::Data {
            id,
            len: chunk.len() as u64,
        });
    }
    sink.flush()?;
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
        _ => Content::List(session.put_list(&extents)?),
    };
    Ok(e)
}

/// The names images get in a point, checked and unique.
fn image_names(images: &[PathBuf]) -> Result<Vec<Vec<u8>>, BackupError> {
    let mut names = Vec::new();
    for p in images {
        let n = image_name(p)?;
        check_name(&n).map_err(|e| BackupError::Aborted(e.to_string()))?;
        if names.contains(&n) {
            return Err(BackupError::Aborted(format!(
                "two images would both be called {:?} in the point; rename one",
                String::from_utf8_lossy(&n)
            )));
        }
        names.push(n);
    }
    Ok(names)
}

/// Reads every image (one thread each) and, for a VM, its config. Returns the image entries
/// and the config entry.
fn read_all(
    session: &WriteSession,
    images: &[PathBuf],
    names: Vec<Vec<u8>>,
    capture: &Capture,
    progress: &Progress,
) -> Result<(Vec<Entry>, Option<Entry>), BackupError> {
    let abort = Abort::default();
    std::thread::scope(|s| {
        let blocks = session.sink(SinkMode::Image);
        let mut readers = Vec::new();
        for (path, name) in images.iter().zip(names) {
            let (sink, abort) = (blocks.clone(), &abort);
            let r = crate::threads::try_spawn(s, "image reader", move || {
                let r = read_image(path, name, session, sink, abort, progress);
                if let Err(e) = &r {
                    abort.fail(BackupError::Aborted(e.to_string()));
                }
                r
            });
            match r {
                Ok(h) => readers.push(h),
                Err(e) => {
                    abort.fail(BackupError::Thread(e));
                    break;
                }
            }
        }
        drop(blocks);
        let mut fail = None;
        let config = match capture {
            Capture::Vm { config } => {
                match capture_file(config, session, session.sink(SinkMode::Group)) {
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
        let mut entries = Vec::new();
        for r in readers {
            match r.join() {
                Ok(Ok(e)) => entries.push(e),
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
            Some(BackupError::Aborted(_)) if abort.is_set() => Err(abort.take("a reader stopped")),
            Some(e) => Err(e),
            None if entries.len() < images.len() => Err(abort.take("a reader stopped")),
            None => Ok((entries, config)),
        }
    })
}

/// The root of a disk or VM point: the images (and for a VM, `<config>` and `disks/`).
fn build_root(
    session: &WriteSession,
    mut entries: Vec<Entry>,
    config: Option<Entry>,
    time: i64,
) -> Result<Entry, BackupError> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut tree = session.put_tree(&entries)?;
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let dir = |name: &[u8], subtree| Entry {
        name: name.to_vec(),
        kind: Some(Kind::Dir),
        mode: 0o700,
        uid,
        gid,
        subtree: Some(subtree),
        nlink: 2,
        ..Default::default()
    };
    if let Some(config) = config {
        let mut top = vec![config, dir(b"disks", tree)];
        top.sort_by(|a, b| a.name.cmp(&b.name));
        if top[0].name == top[1].name {
            return Err(BackupError::Aborted(
                "the VM config file cannot be called \"disks\"".into(),
            ));
        }
        tree = session.put_tree(&top)?;
    }
    let mut root = dir(b"", tree);
    root.mtime = Timestamp {
        sec: time.div_euclid(1_000_000_000),
        nsec: time.rem_euclid(1_000_000_000) as u32,
    };
    Ok(root)
}

/// Backs up the images of a disk item, or a VM's config and disks, as one new recovery point
/// of item `name` (created or redefined only if the backup succeeds). The point records its
/// consistency: `application` if `quiesced` (a pre-script succeeded), else `file` if no image
/// file changed while it was read (the machine was off), else `crash`.
pub fn backup_images(
    vault: &Vault,
    lock: &WriteLock,
    name: &str,
    def: &ItemSource,
    quiesced: bool,
    opts: &RunOptions,
) -> Result<BackupReport, BackupError> {
    let (images, capture) = match def {
        ItemSource::Disk(d) => (&d.images, Capture::Disk),
        ItemSource::Vm(v) => (&v.disks, Capture::Vm { config: &v.config }),
        ItemSource::Files(_) => {
            return Err(BackupError::Aborted("not a disk or VM item".into()));
        }
    };
    let stamps_before: Vec<_> = images.iter().map(|p| stamp(p)).collect();
    let started = Instant::now();
    let start_ns = crate::testing::point_time(now_ns());
    let names = image_names(images)?;
    let session = vault.begin_write(
        lock,
        &SessionOptions {
            threads: opts.threads,
        },
    )?;
    let item = session.define_item_following(name, def, opts.policy.as_deref())?;
    let progress = Progress::bytes(&format!("backup {name}"), 0, opts.progress);
    let read = read_all(&session, images, names, &capture, &progress);
    progress.finish();
    check_interrupt()?;
    let (entries, config) = read?;
    let files = entries.len() as u64 + config.is_some() as u64;
    let logical = entries.iter().chain(config.iter()).map(|e| e.size).sum();
    let time = opts.time.unwrap_or(start_ns);
    let root = build_root(&session, entries, config, time)?;
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
    let committed = session.commit(NewPoint {
        item,
        time,
        root,
        files,
        dirs: 0,
        logical_bytes: logical,
        warnings: 0,
        consistency: Some(consistency.to_string()),
        keep_until: opts.keep_until,
        labels: opts.labels.clone(),
    })?;
    log::debug!("image backup took {:?}", started.elapsed());
    Ok(BackupReport {
        point: committed.point,
        warnings: Vec::new(),
        catalog_bytes: committed.catalog_bytes,
        repaired: committed.repaired,
        other: 0,
    })
}
