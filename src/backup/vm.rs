//! Backup of virtual machines (`vm` items): the config file and every disk in one point.
//!
//! A pre-script can quiesce the guest (flush, freeze) before the disks are read and a post-script
//! thaws it afterwards; the post-script runs whenever the pre-script was attempted, even if the
//! pre-script or the capture failed. A failed pre-script makes no point. The point records its
//! consistency (`application` after a successful pre-script, `file` if no disk changed while
//! read, `crash` otherwise). Scripts run with `sh -c`, with `COFFRE_ITEM` and `COFFRE_PHASE`
//! (`pre`/`post`) in their environment, and inherit stdout/stderr.

use super::disk::backup_images;
use super::files::{BackupReport, RunOptions};
use super::{BackupError, Warning};
use crate::vault::{ItemSource, Vault, VmSource, WriteLock};

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
            detail: format!("{script:?} {}", crate::words::exit_status(status)),
        })
    }
}

/// Backs up a VM's config file and disks as one new recovery point of item `name`, running its
/// pre- and post-scripts around the capture.
pub fn backup_vm(
    vault: &Vault,
    lock: &WriteLock,
    name: &str,
    def: &VmSource,
    opts: &RunOptions,
) -> Result<BackupReport, BackupError> {
    let post = || {
        def.post_script
            .as_deref()
            .map(|s| run_script(s, "post", name))
    };
    if let Some(pre) = &def.pre_script
        && let Err(e) = run_script(pre, "pre", name)
    {
        if let Some(Err(p)) = post() {
            log::error!("{p}");
        }
        return Err(e);
    }
    let source = ItemSource::Vm(def.clone());
    let captured = backup_images(vault, lock, name, &source, def.pre_script.is_some(), opts);
    match (captured, post()) {
        (Ok(mut report), Some(Err(e))) => {
            // The point is made (the guest was quiesced while it was read); say the thaw failed.
            report.warnings.push(Warning {
                path: name.to_string(),
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
