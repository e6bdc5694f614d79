//! End-to-end: disk items through the real binary: backup-disk of sparse images, the image read
//! back through the mount (bytes, holes, a guest file system loop-mounted from it), restored
//! sparse with `coffre restore`, and incremental backups that store only changed blocks.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::*;

/// A 256 MiB sparse image: random data at a few places, an explicit all-zero block, holes.
fn make_image(p: &Path) {
    let f = std::fs::File::create(p).unwrap();
    f.set_len(256 << 20).unwrap();
    f.write_all_at(&noise(1 << 20, 1), 0).unwrap();
    f.write_all_at(&vec![0u8; 256 << 10], 8 << 20).unwrap(); // written zeros: stored as a hole
    f.write_all_at(&text(3 << 20, 2), 100 << 20).unwrap();
    f.write_all_at(&noise(5000, 3), (256 << 20) - 5000).unwrap(); // unaligned tail
}

/// Overwrites `data` at `offset` of an existing file, in place.
fn patch(p: &Path, offset: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(data, offset).unwrap();
}

fn backup_disk(t: &TestVault, item: &str, images: &[&Path]) -> serde_json::Value {
    let mut args = vec!["backup-disk", "--json", "--item", item];
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    let out = t.ok(&args);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

#[test]
fn a_sparse_image_round_trips_through_mount_and_restore() {
    let t = TestVault::new();
    let img = t.path("disk.raw");
    make_image(&img);
    let b = backup_disk(&t, "vmdisk", &[&img]);
    // Holes and zero blocks cost nothing: about 4 MiB of data, not 256 MiB.
    let new = b["point"]["new_bytes"].as_u64().unwrap();
    assert!(new < 5 << 20, "stored {new} new bytes for 4 MiB of data");
    let want = std::fs::read(&img).unwrap();
    {
        let m = MountGuard::start(&t, &[]);
        let in_mount = m.latest("vmdisk").join("disk.raw.img");
        let got = std::fs::read(&in_mount).unwrap();
        assert!(got == want, "the image read through the mount differs");
        // Holes are visible: data starts at 0, a hole follows the first MiB.
        let map = data_map(&in_mount);
        assert_eq!(map.first().map(|x| x.0), Some(0));
        let data: u64 = map.iter().map(|x| x.1).sum();
        assert!(data < 6 << 20, "the mount reports {data} bytes of data");
        // Random reads at odd offsets.
        let f = std::fs::File::open(&in_mount).unwrap();
        for off in [
            0u64,
            4095,
            (1 << 20) - 3,
            8 << 20,
            (100 << 20) + 12345,
            (256 << 20) - 4096,
        ] {
            let mut buf = vec![0u8; 4096];
            let n = f.read_at(&mut buf, off).unwrap();
            assert_eq!(&buf[..n], &want[off as usize..off as usize + n], "at {off}");
        }
    }
    let dst = t.path("restored");
    t.restore("vmdisk", &dst);
    let out = dst.join("disk.raw.img");
    assert!(
        std::fs::read(&out).unwrap() == want,
        "the restored image differs"
    );
    let (a, b) = (
        std::fs::metadata(&img).unwrap(),
        std::fs::metadata(&out).unwrap(),
    );
    assert!(
        b.blocks() <= a.blocks() + 8,
        "restored image not sparse: {} vs {} blocks",
        b.blocks(),
        a.blocks()
    );
}

#[test]
fn an_incremental_disk_backup_stores_only_changed_blocks() {
    let t = TestVault::new();
    let img = t.path("disk.img");
    make_image(&img);
    backup_disk(&t, "d", &[&img]);
    // Change three 4 KiB pieces in two disk blocks.
    patch(&img, 50 << 20, &noise(4096, 9));
    patch(&img, (50 << 20) + 8192, &noise(4096, 10));
    patch(&img, 200 << 20, &noise(4096, 11));
    // `backup NAME` reuses the stored images.
    let out = t.ok(&["backup", "--json", "d"]);
    let b: serde_json::Value = serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone();
    assert_eq!(b["point"]["new_chunks"], 2, "{b}");
    assert!(
        b["point"]["stored_bytes"].as_u64().unwrap() < 200_000,
        "{b}"
    );
    // Only the changed segments are new in the catalog.
    assert!(b["catalog_bytes"].as_u64().unwrap() < 64 * 1024, "{b}");
    let m = MountGuard::start(&t, &[]);
    assert!(std::fs::read(m.latest("d").join("disk.img")).unwrap() == std::fs::read(&img).unwrap());
}

#[test]
fn several_images_make_one_point_and_name_clashes_are_refused() {
    let t = TestVault::new();
    let (a, b) = (t.path("a.img"), t.path("b"));
    make_image(&a);
    std::fs::write(&b, noise(100_000, 5)).unwrap();
    let p = backup_disk(&t, "two", &[&a, &b]);
    assert_eq!(p["point"]["files"], 2);
    let m = MountGuard::start(&t, &[]);
    let mut names: Vec<String> = std::fs::read_dir(m.latest("two"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.img", "b.img"]);
    assert_eq!(
        std::fs::read(m.latest("two").join("b.img")).unwrap(),
        noise(100_000, 5)
    );
    drop(m);
    std::fs::create_dir(t.path("x")).unwrap();
    std::fs::write(t.path("x/a"), b"clash").unwrap();
    let out = t.run(&[
        "backup-disk",
        "--item",
        "clash",
        a.to_str().unwrap(),
        t.path("x/a").to_str().unwrap(),
    ]);
    assert_fails(&out, "both be called");
    let out = t.run(&[
        "backup-disk",
        "--item",
        "dir",
        t.path("x").to_str().unwrap(),
    ]);
    assert_fails(&out, "not a regular file or block device");
}

#[test]
#[ignore = "needs root: mkfs.ext4 and a loop mount"]
fn a_guest_file_system_loop_mounts_from_the_image_in_the_mount() {
    let t = TestVault::new();
    let content = t.path("content");
    write(&content.join("hello.txt"), b"inside the guest");
    let img = t.path("guest.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&img)
        .output_within();
    assert!(out.status.success(), "mkfs.ext4: {}", stderr(&out));
    backup_disk(&t, "guest", &[&img]);
    let m = MountGuard::start(&t, &[]);
    let guest = t.path("guest-mnt");
    std::fs::create_dir(&guest).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-o", "ro,loop"])
        .arg(m.latest("guest").join("guest.img"))
        .arg(&guest)
        .output_within();
    assert!(out.status.success(), "mount -o ro,loop: {}", stderr(&out));
    let read = std::fs::read(guest.join("hello.txt"));
    let _ = std::process::Command::new("umount")
        .arg(&guest)
        .output_within();
    assert_eq!(read.unwrap(), b"inside the guest");
}

#[test]
fn a_vm_point_holds_its_config_and_disks_and_scripts_make_it_application_consistent() {
    let t = TestVault::new();
    let config = t.path("vm1.conf");
    std::fs::write(&config, b"name: vm1\nmemory: 2048\n").unwrap();
    let (d1, d2) = (t.path("root.raw"), t.path("data.img"));
    make_image(&d1);
    std::fs::write(&d2, noise(300_000, 8)).unwrap();
    let log = t.path("scripts.log");
    let pre = format!("echo pre $COFFRE_ITEM >> {}", log.display());
    let post = format!("echo post $COFFRE_PHASE >> {}", log.display());
    let out = t.ok(&[
        "backup-vm",
        "--json",
        "--item",
        "vm1",
        "--config",
        config.to_str().unwrap(),
        "--disk",
        d1.to_str().unwrap(),
        "--disk",
        d2.to_str().unwrap(),
        "--pre-script",
        &pre,
        "--post-script",
        &post,
    ]);
    let p: serde_json::Value = serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone();
    assert_eq!(p["point"]["consistency"], "application", "{p}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre vm1\npost post\n"
    );
    {
        let m = MountGuard::start(&t, &[]);
        let top = m.latest("vm1");
        assert_eq!(
            std::fs::read(top.join("vm1.conf")).unwrap(),
            std::fs::read(&config).unwrap()
        );
        assert!(
            std::fs::read(top.join("disks/root.raw.img")).unwrap() == std::fs::read(&d1).unwrap()
        );
        assert_eq!(
            std::fs::read(top.join("disks/data.img")).unwrap(),
            noise(300_000, 8)
        );
    }
    // Without scripts, disks that did not change while read make a file-consistent point, and
    // `coffre backup NAME` reuses the stored definition (scripts included).
    let out = t.ok(&[
        "backup-vm",
        "--json",
        "--item",
        "vm2",
        "--config",
        config.to_str().unwrap(),
        "--disk",
        d2.to_str().unwrap(),
    ]);
    let p: serde_json::Value = serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone();
    assert_eq!(p["point"]["consistency"], "file", "{p}");
    assert!(
        p["point"]["new_bytes"].as_u64().unwrap() < 1000,
        "dedup against vm1: {p}"
    );
    t.ok(&["backup", "vm1"]);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 4);
}

#[test]
fn a_failing_pre_script_makes_no_point_and_the_post_script_still_runs() {
    let t = TestVault::new();
    let config = t.path("vm.conf");
    std::fs::write(&config, b"x").unwrap();
    let disk = t.path("d.img");
    std::fs::write(&disk, noise(70_000, 1)).unwrap();
    let marker = t.path("post-ran");
    let out = t.run(&[
        "backup-vm",
        "--item",
        "vm",
        "--config",
        config.to_str().unwrap(),
        "--disk",
        disk.to_str().unwrap(),
        "--pre-script",
        "echo freezing failed >&2; exit 7",
        "--post-script",
        &format!("touch {}", marker.display()),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pre-script failed") && err.contains("exited with code 7"),
        "{err}"
    );
    assert!(marker.exists(), "the post-script did not run");
    // No point, and no item either: a definition is kept only by a backup that succeeds.
    let items: serde_json::Value = serde_json::from_str(&t.ok(&["items", "--json"])).unwrap();
    assert_eq!(
        items,
        serde_json::json!([]),
        "the failed first backup left an item"
    );
    assert_eq!(t.ok(&["points", "--json"]).trim(), "[]");
}

#[test]
fn the_full_reprotection_cycle() {
    let t = TestVault::new();
    let img = t.path("disk.img");
    make_image(&img);
    let original = std::fs::read(&img).unwrap();
    backup_disk(&t, "d", &[&img]);
    assert_eq!(state(&t, "d"), "protected");
    // The disk changes, then is restored in place.
    patch(&img, 30 << 20, &noise(1 << 20, 42));
    let out = sidecar(&t, &["disk", "d", "--in-place"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&img).unwrap() == original,
        "in-place restore did not bring the disk back"
    );
    assert_eq!(state(&t, "d"), "needs-reprotect");
    // Restoring files changes nothing about protection; backups are refused meanwhile.
    let out = t.run(&["backup", "d"]);
    assert_fails(&out, "coffre-restore reprotect d");
    assert_eq!(t.points("d").len(), 1);
    // Re-protect: checks the disk matches the restored point.
    let out = sidecar(&t, &["reprotect", "d"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&t, "d"), "protected");
    // A few blocks change; the next backup stores only about those.
    patch(&img, 120 << 20, &noise(8192, 43));
    let out = t.ok(&["backup", "--json", "d"]);
    let b: serde_json::Value = serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone();
    assert_eq!(b["point"]["new_chunks"], 1, "{b}");
    // Reprotect refuses a disk that changed after the restore (unless forced).
    sidecar(&t, &["disk", "d", "--in-place"]);
    patch(&img, 5, b"drift");
    let out = sidecar(&t, &["reprotect", "d"]);
    assert_fails(&out, "no longer matches");
    assert!(sidecar(&t, &["reprotect", "d", "--force"]).status.success());
    // stop/resume protection.
    t.ok(&["stop-protection", "d"]);
    assert_eq!(state(&t, "d"), "stopped");
    assert_eq!(t.run(&["backup", "d"]).status.code(), Some(1));
    t.ok(&["resume-protection", "d"]);
    t.ok(&["backup", "d"]);
}

#[test]
#[ignore = "needs root: a loop-mounted target"]
fn disk_restore_refuses_existing_and_mounted_targets_and_dry_run_writes_nothing() {
    let t = TestVault::new();
    let img = t.path("disk.img");
    make_image(&img);
    backup_disk(&t, "d", &[&img]);
    let to = t.path("out.img");
    let out = sidecar(
        &t,
        &["disk", "d", "--to", to.to_str().unwrap(), "--dry-run"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("would restore"));
    assert!(!to.exists(), "--dry-run wrote the target");
    let out = sidecar(&t, &["disk", "d", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&to).unwrap() == std::fs::read(&img).unwrap());
    let (a, b) = (
        std::fs::metadata(&img).unwrap(),
        std::fs::metadata(&to).unwrap(),
    );
    assert!(
        b.blocks() <= a.blocks() + 8,
        "not sparse: {} vs {}",
        b.blocks(),
        a.blocks()
    );
    let out = sidecar(&t, &["disk", "d", "--to", to.to_str().unwrap()]);
    assert_fails(&out, "--force");
    assert!(
        sidecar(&t, &["disk", "d", "--to", to.to_str().unwrap(), "--force"])
            .status
            .success()
    );
    // A target in use by a mount (here: a loop-mounted ext4 image) is refused even with --force.
    {
        let busy = t.path("busy.img");
        std::fs::File::create(&busy)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        assert!(
            std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&busy)
                .output_within()
                .status
                .success()
        );
        let mnt = t.path("busy-mnt");
        std::fs::create_dir(&mnt).unwrap();
        assert!(
            std::process::Command::new("mount")
                .args(["-o", "loop"])
                .arg(&busy)
                .arg(&mnt)
                .output_within()
                .status
                .success()
        );
        let out = sidecar(
            &t,
            &["disk", "d", "--to", busy.to_str().unwrap(), "--force"],
        );
        let _ = std::process::Command::new("umount")
            .arg(&mnt)
            .output_within();
        assert_fails(&out, "mounted or in use");
    }
}

#[test]
fn a_vm_restored_elsewhere_can_be_protected_as_a_new_item_that_dedups() {
    let t = TestVault::new();
    let config = t.path("vm.conf");
    std::fs::write(&config, b"cpus: 2\n").unwrap();
    let disk = t.path("root.img");
    make_image(&disk);
    t.ok(&[
        "backup-vm",
        "--item",
        "vm",
        "--config",
        config.to_str().unwrap(),
        "--disk",
        disk.to_str().unwrap(),
    ]);
    let dir = t.path("copy");
    let out = sidecar(
        &t,
        &[
            "vm",
            "vm",
            "--to",
            dir.to_str().unwrap(),
            "--protect-as",
            "vm-copy",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(dir.join("vm.conf")).unwrap(), b"cpus: 2\n");
    assert!(std::fs::read(dir.join("disks/root.img")).unwrap() == std::fs::read(&disk).unwrap());
    assert_eq!(
        state(&t, "vm"),
        "protected",
        "a restore elsewhere changed the original item"
    );
    let out = t.ok(&["backup", "--json", "vm-copy"]);
    let b: serde_json::Value = serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone();
    assert_eq!(
        b["point"]["new_chunks"], 0,
        "the copy's first backup stored new data: {b}"
    );
}

#[test]
fn a_vm_restored_in_place_needs_reprotection_and_stop_protection_can_delete_points() {
    let t = TestVault::new();
    let config = t.path("vm.conf");
    std::fs::write(&config, b"memory: 1024\n").unwrap();
    let disk = t.path("root.img");
    make_image(&disk);
    let original = std::fs::read(&disk).unwrap();
    t.ok(&[
        "backup-vm",
        "--item",
        "vm",
        "--config",
        config.to_str().unwrap(),
        "--disk",
        disk.to_str().unwrap(),
    ]);
    std::fs::write(&config, b"memory: 999999\n").unwrap();
    patch(&disk, 4096, b"broken");
    let out = sidecar(&t, &["vm", "vm", "--in-place"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&config).unwrap(), b"memory: 1024\n");
    assert!(std::fs::read(&disk).unwrap() == original);
    assert_eq!(state(&t, "vm"), "needs-reprotect");
    assert_eq!(t.run(&["backup", "vm"]).status.code(), Some(1));
    assert!(sidecar(&t, &["reprotect", "vm"]).status.success());
    assert_eq!(state(&t, "vm"), "protected");
    t.ok(&["backup", "vm"]);
    assert_eq!(t.points("vm").len(), 2);
    // Stopping protection with --delete-data soft-deletes the points.
    t.ok(&["stop-protection", "vm", "--delete-data"]);
    assert_eq!(state(&t, "vm"), "stopped");
    assert_eq!(t.points("vm").len(), 0);
}
