//! Whole-image restores for the sidecar: a disk image to a file or block device, a VM (config and
//! disks) to a directory or back in place, and the check that re-protection relies on.
//!
//! A restore computes a `RestorePlan` (an `ImagePlan` per image: what goes where, how much
//! data), which `--dry-run` prints and `apply_plan` carries out; an in-place restore moves the
//! item to `needs-reprotect` before its first write, and `--protect-as` registers the copy. Writes are sparse into new files (holes are not
//! written) and zero-filled into devices and existing files; every block is checked against its
//! BLAKE3 id before it is written. Targets that exist are refused unless forced; targets that are
//! mounted (or back a mounted loop device) are always refused.
//! Crash story: a killed restore leaves a partly written target; running it again rewrites it.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::RestoreError;
use super::files::lookup;
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
        data_bytes: vault.reader().content(&entry)?.data_bytes(),
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
    let content = vault.reader().content(&plan.entry)?;
    let bar = Progress::new("restore", progress);
    let tick = |n: u64| {
        bar.add(0, n);
        bar.tick();
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let opts = WriteOptions {
        zero_holes: plan.device,
        threads,
        progress: Some(&tick),
    };
    let written = content.write_to(&file, &opts).map_err(|e| match e {
        ContentError::Vault(v) => RestoreError::Vault(v),
        ContentError::Target(e) => terr(e),
    })?;
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
            plans
        }
        RestoreTarget::To(to) => {
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
            vec![plan_image(vault, point, &name, to, force)?]
        }
    };
    Ok(RestorePlan {
        item: item.clone(),
        point: point.id.clone(),
        images,
        in_place: matches!(target, RestoreTarget::InPlace),
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
            let config_to = dir.join(&config_name);
            images.push(plan_image(vault, point, &config_name, &config_to, force)?);
            for name in images_in(vault, point, "disks")? {
                let to = dir.join("disks").join(&name);
                images.push(plan_image(
                    vault,
                    point,
                    &format!("disks/{name}"),
                    &to,
                    force,
                )?);
            }
        }
    }
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
        in_place: matches!(target, RestoreTarget::InPlace),
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
    for p in &plan.images {
        let n = apply(vault, p, progress)?;
        each(p, n);
        out.written.push(n);
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
