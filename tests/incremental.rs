//! End-to-end: incremental correctness across points, the files cache, excludes, the vault never
//! backing itself up, and exit code 3 for unreadable entries.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use common::*;

#[test]
fn three_points_each_restore_exactly_what_was_there() {
    let t = TestVault::new();
    let src = t.path("src");
    for i in 0..40 {
        write(
            &src.join(format!("d{}/f{i}.txt", i % 5)),
            &text(2000 + i * 997, i as u64),
        );
    }
    write(&src.join("big.bin"), &text(6 << 20, 99));
    let snap1 = snapshot(&src, false);
    let b1 = t.backup("inc", &src);

    // Edit in place, insert into the big file, delete, add, rename.
    write(&src.join("d0/f0.txt"), b"changed content");
    let mut big = std::fs::read(src.join("big.bin")).unwrap();
    big.splice(3 << 20..3 << 20, b"an insert in the middle".iter().copied());
    write(&src.join("big.bin"), &big);
    std::fs::remove_file(src.join("d1/f1.txt")).unwrap();
    write(&src.join("new/added.txt"), b"new file");
    std::fs::rename(src.join("d2/f2.txt"), src.join("d3/renamed.txt")).unwrap();
    let snap2 = snapshot(&src, false);
    let b2 = t.backup("inc", &src);
    // Only the changed data is new: the insert moves a chunk or two of the 6 MiB file.
    let new2 = b2["point"]["new_bytes"].as_u64().unwrap();
    assert!(new2 < 2_500_000, "second backup stored {new2} new bytes");
    assert!(new2 > 0);

    std::fs::remove_dir_all(src.join("d4")).unwrap();
    write(&src.join("d0/f5.txt"), b"");
    let snap3 = snapshot(&src, false);
    let b3 = t.backup("inc", &src);

    let ids: Vec<String> = [&b1, &b2, &b3]
        .iter()
        .map(|b| b["point"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(t.points("inc").len(), 3);
    for (id, want) in ids.iter().zip([&snap1, &snap2, &snap3]) {
        let dst = t.path(&format!("r-{id}"));
        t.restore(&format!("inc@{id}"), &dst);
        assert_same(want, &snapshot(&dst, false));
    }
}

#[test]
fn unchanged_tree_adds_a_point_and_nothing_else() {
    let t = TestVault::new();
    let src = t.path("src");
    for i in 0..200 {
        write(&src.join(format!("d{}/f{i}", i % 7)), &text(5000, i));
    }
    t.backup("same", &src);
    let db = t.vault().join("vault.db");
    let checkpoint = || {
        // Size of the catalog including its WAL.
        ["vault.db", "vault.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(t.vault().join(f)).ok())
            .map(|m| m.len())
            .sum::<u64>()
    };
    let before = checkpoint();
    let b = t.backup("same", &src);
    assert_eq!(b["point"]["new_chunks"], 0, "{b}");
    assert_eq!(b["catalog_bytes"], 0, "{b}");
    assert_eq!(b["point"]["stored_bytes"], 0, "{b}");
    assert!(
        checkpoint() - before < 64 * 1024,
        "catalog grew {}",
        checkpoint() - before
    );
    assert!(db.exists());

    // The files cache: touching a file's mtime (same content) makes it be read again, but no new
    // chunk is stored; the point still restores correctly.
    set_mtime(&src.join("d0/f0"), 1_000_000_000, 5);
    let b = t.backup("same", &src);
    assert_eq!(b["point"]["new_chunks"], 0);
    assert!(
        b["catalog_bytes"].as_u64().unwrap() > 0,
        "the changed mtime is a new tree"
    );
}

#[test]
fn excludes_and_the_vault_itself_are_left_out() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("keep.txt"), b"keep");
    write(&src.join("skip.tmp"), b"skip");
    write(&src.join("cache/big"), b"skip");
    write(
        &src.join("sub/cache/keep"),
        b"keep: pattern with / is anchored",
    );
    // A vault inside the tree being backed up.
    let inner = src.join("inner-vault");
    let out = t
        .cmd()
        .env("COFFRE_VAULT", &inner)
        .args([
            "backup",
            "--item",
            "x",
            src.to_str().unwrap(),
            "--exclude",
            "*.tmp",
            "--exclude",
            "cache/*",
        ])
        .output_within();
    assert!(out.status.success(), "{}", stderr(&out));
    let dst = t.path("dst");
    let out = t
        .cmd()
        .env("COFFRE_VAULT", &inner)
        .args(["restore", "x", "--to", dst.to_str().unwrap()])
        .output_within();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dst.join("keep.txt").exists());
    assert!(!dst.join("skip.tmp").exists());
    assert!(!dst.join("cache/big").exists());
    assert!(dst.join("sub/cache/keep").exists());
    assert!(
        !dst.join("inner-vault").exists(),
        "the vault backed itself up"
    );
    // The stored definition is reused: `backup x` needs no path and keeps the excludes.
    let out = t
        .cmd()
        .env("COFFRE_VAULT", &inner)
        .args(["backup", "x"])
        .output_within();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn unreadable_entries_are_warnings_and_exit_3() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("ok.txt"), b"readable");
    write(&src.join("secret.txt"), b"not for you");
    std::fs::create_dir(src.join("closed")).unwrap();
    write(&src.join("closed/inside"), b"x");
    // Run as an unprivileged user (root reads everything); give it the tree and a vault dir.
    let uid = if is_root() {
        65534
    } else {
        unsafe { libc::geteuid() }
    };
    let chown = |p: &std::path::Path| std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
    for p in [
        t.dir.path(),
        &src,
        &src.join("ok.txt"),
        &src.join("secret.txt"),
        &src.join("closed"),
        &src.join("closed/inside"),
    ] {
        if is_root() {
            chown(p);
        }
    }
    std::fs::set_permissions(src.join("secret.txt"), PermissionsExt::from_mode(0o000)).unwrap();
    std::fs::set_permissions(src.join("closed"), PermissionsExt::from_mode(0o000)).unwrap();
    let mut cmd = t.cmd();
    cmd.args(["backup", "--item", "u", src.to_str().unwrap()]);
    if is_root() {
        cmd.uid(65534).gid(65534).env("HOME", t.dir.path());
    }
    let out = cmd.output_within();
    std::fs::set_permissions(src.join("closed"), PermissionsExt::from_mode(0o755)).unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("secret.txt") && err.contains(": permission denied"),
        "{err}"
    );
    assert!(err.contains("closed"), "{err}");
    // The point exists and holds what could be read.
    let points = t.points("u");
    assert_eq!(points.len(), 1);
    assert_eq!(points[0]["warnings"], 2);
    let dst = t.path("dst");
    t.restore("u", &dst);
    assert_eq!(std::fs::read(dst.join("ok.txt")).unwrap(), b"readable");
    assert!(!dst.join("secret.txt").exists());
}

#[test]
fn a_file_changing_while_read_is_reported() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("growing.log"), &noise(64 << 20, 3));
    let stop = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(src.join("growing.log"))
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                f.write_all(&[b'x'; 4096]).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        let out = t.run(&["backup", "--item", "g", src.to_str().unwrap()]);
        stop.store(true, Ordering::Relaxed);
        out
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("growing.log") && err.contains("changed while being read"),
        "{err}"
    );
    // The point exists and restores the bytes that were read: at least the original 64 MiB.
    let dst = t.path("dst");
    t.restore("g", &dst);
    let got = std::fs::read(dst.join("growing.log")).unwrap();
    assert!(got.len() >= 64 << 20);
    assert_eq!(&got[..64 << 20], &noise(64 << 20, 3)[..]);
}

/// Unmounts in Drop (lazily as a last resort) so a failing test never leaks a mount.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let p = c_path(&self.0);
        if unsafe { libc::umount2(p.as_ptr(), 0) } != 0 {
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn one_file_system_keeps_mount_points_empty() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("here.txt"), b"same fs");
    let mnt = src.join("other-fs");
    std::fs::create_dir(&mnt).unwrap();
    let (what, fstype) = (c"none", c"tmpfs");
    let target = c_path(&mnt);
    let r = unsafe {
        libc::mount(
            what.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
    let _guard = Mounted(mnt.clone());
    write(&mnt.join("there.txt"), b"another fs");

    t.ok(&["backup", "-x", "--item", "x", src.to_str().unwrap()]);
    t.ok(&["backup", "--item", "all", src.to_str().unwrap()]);
    let (d1, d2) = (t.path("d1"), t.path("d2"));
    t.restore("x", &d1);
    t.restore("all", &d2);
    assert!(d1.join("here.txt").exists());
    assert!(
        d1.join("other-fs").is_dir(),
        "the mount point itself is kept"
    );
    assert!(
        !d1.join("other-fs/there.txt").exists(),
        "-x crossed into another file system"
    );
    assert_eq!(
        std::fs::read(d2.join("other-fs/there.txt")).unwrap(),
        b"another fs"
    );
}
