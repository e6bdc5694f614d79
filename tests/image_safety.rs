//! End-to-end safety of whole-image restores (`coffre-restore disk|vm`): nothing at a target
//! changes before the vault is known to supply every block; an in-place restore is marked
//! before it writes; busy block devices and symlinks at the target are refused.

mod common;

use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A 64 MiB sparse image with incompressible data spread over it.
fn make_image(p: &Path, seed: u64) {
    let f = std::fs::File::create(p).unwrap();
    f.set_len(64 << 20).unwrap();
    for i in 0..8u64 {
        f.write_all_at(&noise(1 << 20, seed + i), i * (8 << 20))
            .unwrap();
    }
}

/// Cuts the biggest pack in half: most blocks of the image can no longer be read.
fn damage_vault(t: &TestVault) {
    let packs = t.vault().join("packs");
    let biggest = std::fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let len = std::fs::metadata(&biggest).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&biggest)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output_within();
    assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A loop device over a file, detached in Drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn new(file: &Path, partitions: bool) -> Loop {
        let mut c = Command::new("losetup");
        c.args(["--find", "--show"]);
        if partitions {
            c.arg("--partscan");
        }
        let dev = sh(c.arg(file)).trim().to_string();
        Loop { dev: dev.into() }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .output_within();
    }
}

#[test]
fn a_failed_in_place_restore_leaves_the_disk_as_it_was_and_marks_the_item() {
    let t = TestVault::new();
    let img = t.path("disk.img");
    make_image(&img, 1);
    t.ok(&["backup-disk", "--item", "d", img.to_str().unwrap()]);
    // The live disk moves on; then the vault is damaged.
    make_image(&img, 100);
    let live = std::fs::read(&img).unwrap();
    damage_vault(&t);
    let out = sidecar(&t, &["disk", "d", "--in-place"]);
    assert_fails(&out, "left as it was");
    assert!(
        std::fs::read(&img).unwrap() == live,
        "the live disk was changed"
    );
    // Marked before any write: the next backup cannot store a half-restored disk as good.
    assert_eq!(state(&t, "d"), "needs-reprotect");
    let out = t.run(&["backup", "d"]);
    assert_fails(&out, "coffre-restore reprotect d");
    // No stray temporary file is left beside the disk.
    let strays: Vec<_> = std::fs::read_dir(t.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("coffre-restore")
        })
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
}

#[test]
fn a_failed_forced_restore_over_a_file_leaves_it_as_it_was() {
    let t = TestVault::new();
    let img = t.path("disk.img");
    make_image(&img, 1);
    t.ok(&["backup-disk", "--item", "d", img.to_str().unwrap()]);
    let other = t.path("other.img");
    make_image(&other, 50);
    let before = std::fs::read(&other).unwrap();
    damage_vault(&t);
    let out = sidecar(
        &t,
        &["disk", "d", "--to", other.to_str().unwrap(), "--force"],
    );
    assert_fails(&out, "left as it was");
    assert!(
        std::fs::read(&other).unwrap() == before,
        "the target was changed"
    );
    assert_eq!(
        state(&t, "d"),
        "protected",
        "a copy elsewhere is not in place"
    );
}

#[test]
fn a_restore_to_the_items_own_image_is_an_in_place_restore() {
    let t = TestVault::new();
    let img = t.path("disk.img");
    make_image(&img, 1);
    let want = std::fs::read(&img).unwrap();
    t.ok(&["backup-disk", "--item", "d", img.to_str().unwrap()]);
    make_image(&img, 7);
    // Through another name for the same file.
    let alias = t.path("alias");
    std::fs::create_dir(&alias).unwrap();
    std::os::unix::fs::symlink(t.dir.path(), alias.join("up")).unwrap();
    let via = alias.join("up/disk.img");
    let out = sidecar(&t, &["disk", "d", "--to", via.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&img).unwrap() == want);
    assert_eq!(state(&t, "d"), "needs-reprotect");
}

#[test]
fn symlinks_at_the_target_never_redirect_a_restore() {
    let t = TestVault::new();
    let dir = t.path("vmdir");
    std::fs::create_dir(&dir).unwrap();
    let img = dir.join("disk.img");
    make_image(&img, 1);
    let want = std::fs::read(&img).unwrap();
    t.ok(&["backup-disk", "--item", "d", img.to_str().unwrap()]);
    // A dangling symlink as --to: refused, nothing created where it points.
    let dangling = t.path("dangling");
    let pointee = t.path("created-by-root");
    std::os::unix::fs::symlink(&pointee, &dangling).unwrap();
    let out = sidecar(&t, &["disk", "d", "--to", dangling.to_str().unwrap()]);
    assert_fails(&out, "symbolic link");
    assert!(!pointee.exists());
    let out = sidecar(
        &t,
        &["disk", "d", "--to", dangling.to_str().unwrap(), "--force"],
    );
    assert_fails(&out, "symbolic link");
    assert!(!pointee.exists());
    // The owner of the image's directory swaps the image for a link to a file of someone else:
    // the in-place restore replaces the link, never writes through it.
    let victim = t.path("victim");
    std::fs::write(&victim, b"not yours").unwrap();
    std::fs::remove_file(&img).unwrap();
    std::os::unix::fs::symlink(&victim, &img).unwrap();
    let out = sidecar(&t, &["disk", "d", "--in-place"]);
    // Either refused or done by replacing the link; never through it.
    assert_eq!(std::fs::read(&victim).unwrap(), b"not yours");
    if out.status.success() {
        assert!(std::fs::symlink_metadata(&img).unwrap().is_file());
        assert!(std::fs::read(&img).unwrap() == want);
    } else {
        assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    }
}

#[test]
#[ignore = "needs root: loop devices, a mounted partition, swap"]
fn busy_block_devices_are_refused_and_damage_never_reaches_a_device() {
    let t = TestVault::new();
    let img = t.path("disk.img");
    make_image(&img, 1);
    t.ok(&["backup-disk", "--item", "d", img.to_str().unwrap()]);
    // A disk with a partition that is mounted: the whole disk is in use (O_EXCL refuses).
    let backing = t.path("parted.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    // An MBR with one Linux partition from 1 MiB to the end.
    let mut mbr = [0u8; 512];
    let (start, sectors) = (2048u32, (96u32 << 20) / 512 - 2048);
    mbr[446 + 4] = 0x83;
    mbr[446 + 8..446 + 12].copy_from_slice(&start.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&sectors.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&backing)
        .unwrap()
        .write_all_at(&mbr, 0)
        .unwrap();
    let lo = Loop::new(&backing, true);
    let part = PathBuf::from(format!("{}p1", lo.dev.display()));
    // Some kernels do not scan a new loop device's partitions by themselves.
    if !part.exists() {
        let _ = Command::new("partx").arg("-a").arg(&lo.dev).output_within();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !part.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not appear",
            part.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&part));
    let mnt = t.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    sh(Command::new("mount").arg(&part).arg(&mnt));
    let dev = lo.dev.to_str().unwrap();
    for dry in [true, false] {
        let mut args = vec!["disk", "d", "--to", dev, "--force"];
        if dry {
            args.push("--dry-run");
        }
        let out = sidecar(&t, &args);
        assert_fails(&out, "in use");
    }
    sh(Command::new("umount").arg(&mnt));
    // A free device of the right size, and a damaged vault: the device is read-checked first,
    // so not one byte of it changes.
    let plain = t.path("plain.img");
    make_image(&plain, 9);
    let lo2 = Loop::new(&plain, false);
    assert!(
        std::fs::metadata(&lo2.dev)
            .unwrap()
            .file_type()
            .is_block_device()
    );
    let before = std::fs::read(&plain).unwrap();
    damage_vault(&t);
    let out = sidecar(
        &t,
        &["disk", "d", "--to", lo2.dev.to_str().unwrap(), "--force"],
    );
    assert_fails(&out, "damaged");
    assert!(
        std::fs::read(&plain).unwrap() == before,
        "the device was written"
    );
}

#[test]
#[ignore = "needs root: loop devices and a mount"]
fn an_idle_block_device_is_file_consistent_and_a_mounted_one_crash_consistent() {
    let t = TestVault::new();
    let backing = t.path("dev.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&backing));
    let lo = Loop::new(&backing, false);
    let dev = lo.dev.to_str().unwrap();
    let consistency = |t: &TestVault| {
        let out = t.ok(&["backup-disk", "--json", "--item", "d", dev]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["point"]["consistency"].as_str().unwrap().to_string()
    };
    assert_eq!(consistency(&t), "file", "an idle, unmounted device");
    let mnt = t.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    sh(Command::new("mount").arg(dev).arg(&mnt));
    let c = consistency(&t);
    sh(Command::new("umount").arg(&mnt));
    assert_eq!(c, "crash", "a mounted device");
}

fn pack_set(t: &TestVault) -> std::collections::BTreeSet<PathBuf> {
    std::fs::read_dir(t.vault().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect()
}

#[test]
fn a_vm_restore_that_cannot_supply_one_disk_changes_no_disk() {
    let t = TestVault::new();
    let (cfg, d1, d2) = (t.path("vm.conf"), t.path("d1.img"), t.path("d2.img"));
    std::fs::write(&cfg, b"memory = 1G\n").unwrap();
    make_image(&d1, 1);
    make_image(&d2, 2);
    let backup = |t: &TestVault| {
        t.ok(&[
            "backup-vm",
            "--item",
            "vm",
            "--config",
            cfg.to_str().unwrap(),
            "--disk",
            d1.to_str().unwrap(),
            "--disk",
            d2.to_str().unwrap(),
        ])
    };
    backup(&t);
    // The second point changes only d2: its new blocks are in a pack of their own.
    let before = pack_set(&t);
    make_image(&d2, 20);
    backup(&t);
    let new: Vec<_> = pack_set(&t).difference(&before).cloned().collect();
    assert_eq!(new.len(), 1);
    std::fs::remove_file(&new[0]).unwrap();
    // The live VM moves on: both disks differ from the point now.
    make_image(&d1, 100);
    make_image(&d2, 200);
    let live = (
        std::fs::read(&cfg).unwrap(),
        std::fs::read(&d1).unwrap(),
        std::fs::read(&d2).unwrap(),
    );
    let out = sidecar(&t, &["vm", "vm", "--in-place"]);
    assert_fails(&out, "nothing was changed");
    assert!(
        std::fs::read(&cfg).unwrap() == live.0,
        "the config was changed"
    );
    assert!(
        std::fs::read(&d1).unwrap() == live.1,
        "the first disk was replaced"
    );
    assert!(
        std::fs::read(&d2).unwrap() == live.2,
        "the second disk was changed"
    );
}
