//! Backup of virtual machines (`vm` items): the config file and every disk in one point.
//!
//! A pre-script can quiesce the guest (flush, freeze) before the disks are read and a post-script
//! thaws it afterwards; the post-script runs whenever the pre-script was attempted, even if the
//! pre-script or the capture failed. A failed pre-script makes no point. The point records its
//! consistency (`application` after a successful pre-script, `file` if no disk changed while
//! read, `crash` otherwise). Scripts run with `sh -c`, with `COFFRE_ITEM` and `COFFRE_PHASE`
//! (`pre`/`post`) in their environment, and inherit stdout/stderr.

use std::path::{Path, PathBuf};

use super::disk::{Capture, DiskOptions, backup_images};
use super::files::BackupReport;
use super::{BackupError, Warning};
use crate::vault::{Item, Vault, WriteLock};

/// How to run a VM backup.
#[derive(Clone, Debug, Default)]
pub struct VmOptions {
    pub pre_script: Option<String>,
    pub post_script: Option<String>,
    pub disk: DiskOptions,
}

fn run_script(script: &str, phase: &'static str, item: &str) -> Result<(), BackupError> {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("COFFRE_ITEM", item)
        .env("COFFRE_PHASE", phase)
        .status()
        .map_err(|e| BackupError::Script {
            phase,
            detail: format!("cannot start sh: {e}"),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(BackupError::Script {
            phase,
            detail: format!("{script:?} exited with {status}"),
        })
    }
}

/// Backs up a VM's config file and disks as one new recovery point.
pub fn backup_vm(
    vault: &Vault,
    lock: &WriteLock,
    item: &Item,
    config: &Path,
    disks: &[PathBuf],
    opts: &VmOptions,
) -> Result<BackupReport, BackupError> {
    let post = || {
        opts.post_script
            .as_deref()
            .map(|s| run_script(s, "post", &item.name))
    };
    if let Some(pre) = &opts.pre_script
        && let Err(e) = run_script(pre, "pre", &item.name)
    {
        if let Some(Err(p)) = post() {
            log::error!("{p}");
        }
        return Err(e);
    }
    let captured = backup_images(
        vault,
        lock,
        item,
        disks,
        Capture::Vm { config },
        opts.pre_script.is_some(),
        &opts.disk,
    );
    match (captured, post()) {
        (Ok(mut report), Some(Err(e))) => {
            // The point is made (the guest was quiesced while it was read); say the thaw failed.
            report.warnings.push(Warning {
                path: item.name.clone(),
                message: e.to_string(),
            });
            Ok(report)
        }
        (Ok(report), _) => Ok(report),
        (Err(e), Some(Err(p))) => {
            log::error!("{p}");
            Err(e)
        }
        (Err(e), _) => Err(e),
    }
}
