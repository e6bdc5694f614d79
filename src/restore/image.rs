//! Whole-image restores for the sidecar: a disk image to a file or block device, a VM (config and
//! disks) to a directory or back in place, and the check that re-protection relies on.
//!
//! A restore computes a `RestorePlan` (an `ImagePlan` per image: what goes where, how much
//! data), which `--dry-run` prints and `apply_plan` carries out; an in-place restore (`--in-place`,
//! or `--to` the item's own source) moves the item to `needs-reprotect` before its first write,
//! and `--protect-as` registers the copy. Every block is checked against its BLAKE3 id before it
//! is written. Nothing at a target changes before the whole image is known to be available: a
//! file target is written beside itself (sparse) and renamed over the old file at the end; a
//! block device is first read through completely (every chunk verified), then written with its
//! holes zeroed. Targets that exist are refused unless forced; targets that are mounted, back a
//! loop device, hold a mounted partition, an active swap or a dm/md member (the kernel refuses
//! `O_EXCL`) are always refused, by `--dry-run` too. Paths are resolved once when planning;
//! writing goes through descriptors opened without following symlinks, checked to be the file or
//! device that was planned, so a symlink swapped in meanwhile cannot redirect a root restore.
//! Crash story: a killed restore leaves the old file and a stray `.NAME.coffre-restore-*` beside
//! it, or a partly written device; the item stays `needs-reprotect` when in place.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::RestoreError;
use super::files::lookup;
use crate::fsmeta;
use crate::progress::Progress;
use crate::vault::content::WriteOptions;
use crate::vault::{
    ContentError, Entry, Item, ItemKind, ItemSource, ItemState, Kind, PointRow, Vault, VmSource,
    WriteLock,
};

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
    /// The target is one of the item's own sources (an in-place restore).
    pub own_source: bool,
    /// The target with every symlink resolved when planning (a device, or a file whose parent
    /// directory is `dir`).
    #[serde(skip)]
    resolved: PathBuf,
    /// (dev, ino) of the parent directory of a file target, if it existed when planning.
    #[serde(skip)]
    dir: Option<(u64, u64)>,
    /// Device number of a block device target.
    #[serde(skip)]
    rdev: u64,
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

/// `path` with every symlink of its longest existing prefix resolved (the rest appended).
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(c) => return Ok(rest.iter().rev().fold(c, |p: PathBuf, n| p.join(n))),
            Err(_) => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Ok(abs);
                };
                rest.push(name.to_os_string());
                existing = parent;
            }
        }
    }
}

/// Opens block device `path` for writing with `O_EXCL`: the kernel refuses while a partition of
/// it is mounted, it is an active swap area, or dm/md holds it.
fn open_device_excl(path: &Path, write: bool) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mode = if write {
        libc::O_WRONLY
    } else {
        libc::O_RDONLY
    };
    // SAFETY: valid C string; the fd is owned by the OwnedFd below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            mode | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Plans writing the file at `source` (a path inside the point) to `target`.
pub fn plan_image(
    vault: &Vault,
    point: &PointRow,
    source: &str,
    target: &Path,
    force: bool,
) -> Result<ImagePlan, RestoreError> {
    let root = vault.reader().root_entry(point)?;
    let entry = lookup(vault, &root, std::ffi::OsStr::new(source))?;
    if entry.kind() != Kind::File {
        return Err(RestoreError::NoSuchPath(source.to_string()));
    }
    let terr = |e| RestoreError::Target {
        path: target.to_path_buf(),
        source: e,
    };
    let lmeta = std::fs::symlink_metadata(target).ok();
    let meta = std::fs::metadata(target).ok();
    let device = meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    if lmeta.as_ref().is_some_and(|m| m.file_type().is_symlink()) && !device {
        // Only device names are commonly links (/dev/vg/lv); a link to a file or nowhere would
        // make a root restore write where the link's owner chose.
        return Err(target_err(
            target,
            "is a symbolic link; give the path of the file itself",
        ));
    }
    if let Some(m) = &meta
        && !device
        && !m.is_file()
    {
        return Err(target_err(target, "is not a regular file or block device"));
    }
    if in_use(target) {
        return Err(target_err(
            target,
            "is mounted or in use by a loop device; unmount it first",
        ));
    }
    let resolved = resolve(target).map_err(terr)?;
    if device {
        // The same refusal a write would meet, so --dry-run reports it too.
        open_device_excl(&resolved, false).map_err(|e| {
            target_err(
                target,
                format!("is in use (a mounted partition, swap, or held by dm/md): {e}"),
            )
        })?;
    }
    if meta.is_some() && !force {
        return Err(target_err(target, "exists; pass --force to overwrite it"));
    }
    let dir = resolved
        .parent()
        .and_then(|d| std::fs::metadata(d).ok())
        .map(|m| (m.dev(), m.ino()));
    Ok(ImagePlan {
        source: source.to_string(),
        target: target.to_path_buf(),
        size: entry.size,
        data_bytes: vault.reader().content(&entry)?.data_bytes(),
        overwrite: meta.is_some(),
        device,
        own_source: false,
        rdev: meta.as_ref().map_or(0, |m| m.rdev()),
        resolved,
        dir,
        entry,
    })
}

/// An image made ready without changing its target: a file written beside it under a
/// temporary name (removed if never committed), or a device image read through and checked.
enum Staged {
    File(StagedFile),
    Device,
}

/// A file target's new content, complete and synced under a temporary name beside it.
struct StagedFile {
    dir: OwnedFd,
    tmp: Vec<u8>,
    name: Vec<u8>,
    written: u64,
    committed: bool,
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fsmeta::unlink_at(self.dir.as_fd(), &self.tmp);
        }
    }
}

/// The label of an image's progress bar.
fn label(plan: &ImagePlan) -> String {
    format!("restore {}", plan.target.display())
}

/// Phase one of an image: nothing at its target changes.
fn stage(vault: &Vault, plan: &ImagePlan, progress: bool) -> Result<Staged, RestoreError> {
    let bar = Progress::bytes(&label(plan), plan.data_bytes, progress);
    let tick = |n: u64| {
        bar.add(0, n);
        crate::testing::interrupt_point("image-data-written");
    };
    let r = if plan.device {
        let content = vault.reader().content(&plan.entry)?;
        content.check()?;
        Ok(Staged::Device)
    } else {
        write_beside(vault, plan, &tick).map(Staged::File)
    };
    bar.finish();
    r
}

/// Phase two: the staged file replaces its target (atomically); a device is written.
fn commit(
    vault: &Vault,
    plan: &ImagePlan,
    staged: Staged,
    progress: bool,
) -> Result<u64, RestoreError> {
    let io = |e| RestoreError::Target {
        path: plan.target.clone(),
        source: e,
    };
    match staged {
        Staged::File(mut f) => {
            // A new target must still be absent: never replace what appeared since planning.
            let flags = if plan.overwrite {
                0
            } else {
                libc::RENAME_NOREPLACE
            };
            renameat(f.dir.as_fd(), &f.tmp, &f.name, flags).map_err(|e| {
                if e.raw_os_error() == Some(libc::EEXIST) {
                    target_err(
                        &plan.target,
                        "appeared since the restore was planned; pass --force to overwrite it",
                    )
                } else {
                    io(e)
                }
            })?;
            f.committed = true;
            std::fs::File::from(f.dir.try_clone().map_err(io)?)
                .sync_all()
                .map_err(io)?;
            Ok(f.written)
        }
        Staged::Device => {
            let bar = Progress::bytes(&label(plan), plan.data_bytes, progress);
            let tick = |n: u64| bar.add(0, n);
            let r = write_device(vault, plan, &tick);
            bar.finish();
            r
        }
    }
}

fn content_err(path: &Path) -> impl Fn(ContentError) -> RestoreError + '_ {
    move |e| match e {
        ContentError::Vault(v) => RestoreError::Vault(v),
        ContentError::Target(e) => RestoreError::Target {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Opens the planned parent directory of a file target without following any symlink (its path
/// was resolved when planning), creating it if it did not exist then.
fn open_parent(plan: &ImagePlan) -> Result<OwnedFd, RestoreError> {
    let terr = |e| RestoreError::Target {
        path: plan.target.clone(),
        source: e,
    };
    let parent = plan.resolved.parent().unwrap_or(Path::new("/"));
    if plan.dir.is_none() {
        std::fs::create_dir_all(parent).map_err(terr)?;
    }
    let root = fsmeta::open_dir(Path::new("/")).map_err(terr)?;
    let rel = parent.strip_prefix("/").unwrap_or(parent);
    let dir = fsmeta::open_dir_beneath(root.as_fd(), rel.as_os_str().as_bytes()).map_err(|e| {
        target_err(
            &plan.target,
            format!(
                "its directory changed since the restore was planned ({e}); nothing was written"
            ),
        )
    })?;
    let st = fsmeta::fstat(dir.as_fd()).map_err(terr)?;
    if plan.dir.is_some_and(|d| d != (st.st_dev, st.st_ino)) {
        return Err(target_err(
            &plan.target,
            "its directory was replaced since the restore was planned; nothing was written",
        ));
    }
    Ok(dir)
}

fn renameat(dir: BorrowedFd, from: &[u8], to: &[u8], flags: libc::c_uint) -> std::io::Result<()> {
    let (f, t) = (
        std::ffi::CString::new(from)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?,
        std::ffi::CString::new(to).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?,
    );
    // SAFETY: valid C strings and directory descriptors.
    let r = unsafe {
        libc::renameat2(
            dir.as_raw_fd(),
            f.as_ptr(),
            dir.as_raw_fd(),
            t.as_ptr(),
            flags,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A file target: the image is written (sparse) to a new file beside the target and synced;
/// `commit` renames it over the target. Until then the old file is untouched.
fn write_beside(
    vault: &Vault,
    plan: &ImagePlan,
    tick: &(dyn Fn(u64) + Sync),
) -> Result<StagedFile, RestoreError> {
    let name = plan
        .resolved
        .file_name()
        .ok_or_else(|| target_err(&plan.target, "has no file name"))?
        .as_bytes()
        .to_vec();
    let dir = open_parent(plan)?;
    let tmp = [
        b".".as_slice(),
        &name,
        format!(".coffre-restore-{}", crate::vault::random_hex(4)).as_bytes(),
    ]
    .concat();
    let io = |e| RestoreError::Target {
        path: plan.target.clone(),
        source: e,
    };
    let fd = fsmeta::open_at(
        dir.as_fd(),
        &tmp,
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        0o600,
    )
    .map_err(io)?;
    let mut staged = StagedFile {
        dir,
        tmp,
        name,
        written: 0,
        committed: false,
    };
    let file = std::fs::File::from(fd);
    let content = vault.reader().content(&plan.entry)?;
    let opts = WriteOptions {
        zero_holes: false,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        progress: Some(tick),
    };
    staged.written = content
        .write_to(&file, &opts)
        .map_err(content_err(&plan.target))?;
    let e = &plan.entry;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        fsmeta::fchown(file.as_fd(), e.uid, e.gid).map_err(io)?;
    }
    fsmeta::fchmod(file.as_fd(), e.mode).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(staged)
}

/// A block device whose image `stage` read through and checked: opened with `O_EXCL` (and
/// checked to be the planned device) and written, holes as zeros.
fn write_device(
    vault: &Vault,
    plan: &ImagePlan,
    tick: &(dyn Fn(u64) + Sync),
) -> Result<u64, RestoreError> {
    let content = vault.reader().content(&plan.entry)?;
    let terr = |e| RestoreError::Target {
        path: plan.target.clone(),
        source: e,
    };
    let fd = open_device_excl(&plan.resolved, true).map_err(|e| {
        target_err(
            &plan.target,
            format!("cannot be opened for exclusive use ({e}); nothing was written"),
        )
    })?;
    let st = fsmeta::fstat(fd.as_fd()).map_err(terr)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFBLK || st.st_rdev != plan.rdev {
        return Err(target_err(
            &plan.target,
            "is no longer the block device that was planned; nothing was written",
        ));
    }
    let file = std::fs::File::from(fd);
    let dev_size = {
        use std::io::Seek;
        (&mut &file).seek(std::io::SeekFrom::End(0)).map_err(terr)?
    };
    if dev_size < plan.size {
        return Err(target_err(
            &plan.target,
            format!(
                "is {dev_size} bytes, smaller than the image ({} bytes); nothing was written",
                plan.size
            ),
        ));
    }
    let opts = WriteOptions {
        zero_holes: true,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        progress: Some(tick),
    };
    let n = content.write_to(&file, &opts).map_err(|e| {
        let what = content_err(&plan.target)(e);
        target_err(
            &plan.target,
            format!("was partly overwritten and must be restored again: {what}"),
        )
    })?;
    file.sync_all().map_err(terr)?;
    Ok(n)
}

/// Checks that `path` holds exactly the image at `source` in `point` (re-protection's check).
/// Returns the first differing offset, if any.
pub fn differs(
    vault: &Vault,
    point: &PointRow,
    source: &str,
    path: &Path,
) -> Result<Option<u64>, RestoreError> {
    let root = vault.reader().root_entry(point)?;
    let entry = lookup(vault, &root, std::ffi::OsStr::new(source))?;
    let terr = |e| RestoreError::Target {
        path: path.to_path_buf(),
        source: e,
    };
    let f = std::fs::File::open(path).map_err(terr)?;
    vault
        .reader()
        .content(&entry)?
        .first_difference(&f)
        .map_err(|e| match e {
            ContentError::Vault(v) => RestoreError::Vault(v),
            ContentError::Target(e) => terr(e),
        })
}

/// Where a disk or VM restore writes.
#[derive(Clone, Debug)]
pub enum RestoreTarget {
    /// A new place: a file or device for a disk image, a directory for a VM.
    To(PathBuf),
    /// Back where the item was backed up from.
    InPlace,
}

/// A whole disk or VM restore, planned.
#[derive(Debug, serde::Serialize)]
pub struct RestorePlan {
    #[serde(skip)]
    pub item: Item,
    pub point: String,
    pub images: Vec<ImagePlan>,
    pub in_place: bool,
    /// With a VM restored to a new place: protect the copy as this new item.
    pub protect_as: Option<String>,
}

/// What applying a plan did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreOutcome {
    /// Bytes written per image, in plan order.
    pub written: Vec<u64>,
    /// The item is now `needs-reprotect` (an in-place restore).
    pub needs_reprotect: bool,
    /// The new item the copy is protected as.
    pub protected_as: Option<String>,
}

fn plan_err(msg: String) -> RestoreError {
    RestoreError::Plan(msg)
}

/// The names of the images of a point (at its top, or under `disks/`).
pub fn images_in(vault: &Vault, point: &PointRow, dir: &str) -> Result<Vec<String>, RestoreError> {
    let root = vault.reader().root_entry(point)?;
    let top = if dir.is_empty() {
        root
    } else {
        lookup(vault, &root, std::ffi::OsStr::new(dir))?
    };
    let Some(id) = top.subtree else {
        return Ok(Vec::new());
    };
    Ok(vault
        .reader()
        .tree(&id)?
        .into_iter()
        .filter(|e| e.kind() == Kind::File)
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect())
}

/// True if `target` names one of `sources` (the same resolved path, or the same block device).
fn is_own_source(sources: &[&Path], target: &Path) -> bool {
    let same_dev = |a: &Path, b: &Path| {
        let dev = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .filter(|m| m.file_type().is_block_device())
                .map(|m| m.rdev())
        };
        dev(a).is_some() && dev(a) == dev(b)
    };
    let t = resolve(target).ok();
    sources
        .iter()
        .any(|s| (t.is_some() && resolve(s).ok() == t) || same_dev(s, target))
}

fn image_name_of(p: &Path) -> Result<String, RestoreError> {
    let n = crate::backup::disk::image_name(p).map_err(|e| plan_err(e.to_string()))?;
    Ok(String::from_utf8_lossy(&n).into_owned())
}

/// Plans restoring a disk item's point: one image to a file or device, or every image (or the
/// one named by `image`) in place.
pub fn plan_disk(
    vault: &Vault,
    item: &Item,
    point: &PointRow,
    target: &RestoreTarget,
    image: Option<&str>,
    force: bool,
) -> Result<RestorePlan, RestoreError> {
    let Some(ItemSource::Disk(def)) = &item.source else {
        return Err(wrong_kind(item, ItemKind::Disk));
    };
    let images = match target {
        RestoreTarget::InPlace => {
            let mut plans = Vec::new();
            for orig in &def.images {
                let name = image_name_of(orig)?;
                if image.is_some_and(|i| i != name) {
                    continue;
                }
                plans.push(plan_image(vault, point, &name, orig, true)?);
            }
            if plans.is_empty() {
                return Err(plan_err(format!(
                    "nothing to restore in place: none of the item's images ({}) is in point {}",
                    def.images
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    point.id
                )));
            }
            plans
        }
        RestoreTarget::To(to) => {
            let sources: Vec<&Path> = def.images.iter().map(|p| p.as_path()).collect();
            let own = is_own_source(&sources, to);
            let names = images_in(vault, point, "")?;
            let name = match (image, names.as_slice()) {
                (Some(i), _) => i.to_string(),
                (None, [one]) => one.clone(),
                (None, many) => {
                    return Err(plan_err(format!(
                        "point {} has {} images ({}); choose one with --image",
                        point.id,
                        many.len(),
                        many.join(", ")
                    )));
                }
            };
            let mut p = plan_image(vault, point, &name, to, force || own)?;
            p.own_source = own;
            vec![p]
        }
    };
    let own = images.iter().any(|p| p.own_source);
    Ok(RestorePlan {
        item: item.clone(),
        point: point.id.clone(),
        images,
        in_place: own || matches!(target, RestoreTarget::InPlace),
        protect_as: None,
    })
}

/// Plans restoring a VM item's point: config and disks to a directory (`DIR/<config>`,
/// `DIR/disks/<disk>.img`), or back in place.
pub fn plan_vm(
    vault: &Vault,
    item: &Item,
    point: &PointRow,
    target: &RestoreTarget,
    force: bool,
    protect_as: Option<&str>,
) -> Result<RestorePlan, RestoreError> {
    let Some(ItemSource::Vm(def)) = &item.source else {
        return Err(wrong_kind(item, ItemKind::Vm));
    };
    let config_name = def
        .config
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut images = Vec::new();
    match target {
        RestoreTarget::InPlace => {
            images.push(plan_image(vault, point, &config_name, &def.config, true)?);
            for orig in &def.disks {
                let name = format!("disks/{}", image_name_of(orig)?);
                images.push(plan_image(vault, point, &name, orig, true)?);
            }
        }
        RestoreTarget::To(dir) => {
            let mut sources: Vec<&Path> = def.disks.iter().map(|p| p.as_path()).collect();
            sources.push(&def.config);
            let mut add = |source: String, to: PathBuf| -> Result<(), RestoreError> {
                let own = is_own_source(&sources, &to);
                let mut p = plan_image(vault, point, &source, &to, force || own)?;
                p.own_source = own;
                images.push(p);
                Ok(())
            };
            add(config_name.clone(), dir.join(&config_name))?;
            for name in images_in(vault, point, "disks")? {
                add(format!("disks/{name}"), dir.join("disks").join(&name))?;
            }
        }
    }
    let own = images.iter().any(|p| p.own_source);
    if let Some(new) = protect_as {
        crate::vault::check_item_name(new).map_err(|e| plan_err(e.to_string()))?;
        if vault.find_item(new)?.is_some() {
            return Err(plan_err(format!(
                "an item named {new:?} already exists; choose another name for --protect-as"
            )));
        }
    }
    Ok(RestorePlan {
        item: item.clone(),
        point: point.id.clone(),
        images,
        in_place: own || matches!(target, RestoreTarget::InPlace),
        protect_as: protect_as.map(str::to_string),
    })
}

fn wrong_kind(item: &Item, want: ItemKind) -> RestoreError {
    let hint = match item.kind {
        ItemKind::Files => "restore its files with `coffre restore` or from `coffre mount`",
        ItemKind::Disk => "use `coffre-restore disk`",
        ItemKind::Vm => "use `coffre-restore vm`",
    };
    plan_err(format!(
        "item {:?} is a {} item, not a {} item; {hint}",
        item.name,
        item.kind.as_str(),
        want.as_str()
    ))
}

/// Carries out a plan. An in-place restore (which needs the writer lock) first marks the item
/// `needs-reprotect`, so a failure half-way can never be backed up as a good point.
pub fn apply_plan(
    vault: &Vault,
    lock: Option<&WriteLock>,
    plan: &RestorePlan,
    progress: bool,
    mut each: impl FnMut(&ImagePlan, u64),
) -> Result<RestoreOutcome, RestoreError> {
    let _lease = vault.lease()?;
    let mut out = RestoreOutcome::default();
    if plan.in_place {
        let lock =
            lock.ok_or_else(|| plan_err("an in-place restore needs the writer lock".into()))?;
        vault.update_item(lock, &plan.item.name, |item| {
            item.state = ItemState::NeedsReprotect;
            item.restored_point = Some(plan.point.clone());
            Ok(())
        })?;
        out.needs_reprotect = true;
    }
    // Phase one for every image before phase two for any: a VM whose second disk cannot be
    // supplied keeps its first disk as it was.
    let mut staged = Vec::with_capacity(plan.images.len());
    for (i, p) in plan.images.iter().enumerate() {
        match stage(vault, p, progress) {
            Ok(s) => staged.push(s),
            Err(e) => return Err(RestoreError::Plan(failure_report(plan, i, &e, true))),
        }
    }
    for (i, (p, s)) in plan.images.iter().zip(staged).enumerate() {
        match commit(vault, p, s, progress) {
            Ok(n) => {
                each(p, n);
                out.written.push(n);
            }
            Err(e) => return Err(RestoreError::Plan(failure_report(plan, i, &e, false))),
        }
    }
    if let Some(new) = &plan.protect_as {
        let lock = lock.ok_or_else(|| plan_err("--protect-as needs the writer lock".into()))?;
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let def = VmSource {
            config: canon(&plan.images[0].target),
            disks: plan.images[1..].iter().map(|p| canon(&p.target)).collect(),
            pre_script: None,
            post_script: None,
        };
        vault.create_item(lock, new, &ItemSource::Vm(def))?;
        out.protected_as = Some(new.clone());
    }
    Ok(out)
}

/// What a restore that failed at image `failed` changed, in one paragraph. `staging`: it failed
/// while making images ready, before any target changed.
fn failure_report(plan: &RestorePlan, failed: usize, e: &RestoreError, staging: bool) -> String {
    let names = |r: &[ImagePlan]| {
        r.iter()
            .map(|p| p.target.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let p = &plan.images[failed];
    let mut msg = format!(
        "restore of {} to {} failed: {e}",
        p.source,
        p.target.display()
    );
    if staging {
        msg.push_str("; nothing was changed: every target was left as it was");
    } else {
        if !p.device {
            msg.push_str(" (the file there was left as it was)");
        }
        if failed > 0 {
            msg.push_str(&format!(
                "; already restored: {}",
                names(&plan.images[..failed])
            ));
        }
        if failed + 1 < plan.images.len() {
            msg.push_str(&format!(
                "; not restored: {}",
                names(&plan.images[failed + 1..])
            ));
        }
    }
    if plan.in_place {
        msg.push_str(&format!(
            "; item {:?} stays needs-reprotect until a restore completes",
            plan.item.name
        ));
    }
    msg
}
