//! Protection states of items: stop, resume, and re-protect after an in-place restore.
//!
//! `protected` items are backed up; `stopped` ones keep their points and take no backups;
//! `needs-reprotect` ones were restored in place and wait until `reprotect` checks that their
//! disks still hold the restored point, which then becomes the baseline of the next backup. Each
//! change is one transaction under the writer lock (`Vault::update_item`; stopping with
//! `--delete-data` stops the item and soft-deletes its points in the same transaction, and is
//! refused by an immutable vault while any of those points is not expired by its policy).

use crate::maintenance::{ForgetPlan, MaintenanceError};
use crate::restore::RestoreError;
use crate::restore::image::differs;
use crate::vault::{Deletion, ItemSource, ItemState, Vault, VaultError, WriteLock, now_ns};

/// Why a protection change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtectionError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Maintenance(#[from] MaintenanceError),
    #[error("{0}")]
    Refused(String),
}

/// Stops backups of an item; with `delete_data`, soft-deletes its points too (purges them when
/// the vault's soft-delete period is 0). Returns how many points were deleted.
pub fn stop(
    vault: &Vault,
    lock: &WriteLock,
    name: &str,
    delete_data: bool,
) -> Result<usize, ProtectionError> {
    let stopped = |i: &mut crate::vault::Item| {
        i.state = ItemState::Stopped;
        Ok(())
    };
    if !delete_data {
        vault.update_item(lock, name, stopped)?;
        return Ok(0);
    }
    let item = vault.item(name)?;
    let plan = ForgetPlan::for_item(vault, &item, Deletion::StopProtection, now_ns())?;
    let (_, done) = vault.update_item_and_points(lock, name, stopped, &plan.changes())?;
    Ok(done.soft_deleted + done.purged)
}

/// Resumes backups of a stopped item (not of one restored in place: that needs `reprotect`).
pub fn resume(vault: &Vault, lock: &WriteLock, name: &str) -> Result<(), ProtectionError> {
    if vault.item(name)?.state == ItemState::NeedsReprotect {
        return Err(ProtectionError::Refused(format!(
            "item {name:?} was restored in place: run `coffre-restore reprotect {name}`"
        )));
    }
    vault.update_item(lock, name, |i| {
        i.state = ItemState::Protected;
        Ok(())
    })?;
    Ok(())
}

/// What `reprotect` did.
#[derive(Debug)]
pub enum Reprotected {
    /// The item was not waiting for re-protection.
    NothingToDo(ItemState),
    /// Protected again with this point as the baseline.
    Baseline(String),
}

/// Re-enables protection of an item restored in place, after checking (unless `force`) that its
/// disks still hold exactly the restored point.
pub fn reprotect(
    vault: &Vault,
    lock: &WriteLock,
    name: &str,
    force: bool,
) -> Result<Reprotected, ProtectionError> {
    let item = vault.item(name)?;
    if item.state != ItemState::NeedsReprotect {
        return Ok(Reprotected::NothingToDo(item.state));
    }
    let spec = item.restored_point.as_deref().unwrap_or("latest");
    let point = vault.resolve_point(&item, spec)?;
    let pairs: Vec<(String, std::path::PathBuf)> = match &item.source {
        Some(ItemSource::Disk(d)) => d
            .images
            .iter()
            .map(|p| Ok((image_name(p)?, p.clone())))
            .collect::<Result<_, ProtectionError>>()?,
        Some(ItemSource::Vm(v)) => v
            .disks
            .iter()
            .map(|p| Ok((format!("disks/{}", image_name(p)?), p.clone())))
            .collect::<Result<_, ProtectionError>>()?,
        _ => {
            return Err(ProtectionError::Refused(
                "only disk and VM items are restored in place".into(),
            ));
        }
    };
    if !force {
        for (source, path) in &pairs {
            if let Some(off) = differs(vault, &point, source, path)? {
                return Err(ProtectionError::Refused(format!(
                    "{} no longer matches point {} (first difference at byte {off}); it changed \
                     since the restore. Restore again, or pass --force to re-protect it as it is",
                    path.display(),
                    point.id
                )));
            }
        }
    }
    vault.update_item(lock, name, |i| {
        i.state = ItemState::Protected;
        i.restored_point = None;
        Ok(())
    })?;
    Ok(Reprotected::Baseline(point.id))
}

fn image_name(p: &std::path::Path) -> Result<String, ProtectionError> {
    let n =
        crate::backup::disk::image_name(p).map_err(|e| ProtectionError::Refused(e.to_string()))?;
    Ok(String::from_utf8_lossy(&n).into_owned())
}
