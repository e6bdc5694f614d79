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
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let dst = t.path("dst");
    let out = t
        .cmd()
        .env("COFFRE_VAULT", &inner)
        .args(["restore", "x", "--to", dst.to_str().unwrap()])
        .output()
        .unwrap();
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
        .output()
        .unwrap();
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
    let out = cmd.output().unwrap();
    std::fs::set_permissions(src.join("closed"), PermissionsExt::from_mode(0o755)).unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("secret.txt") && err.contains("Permission denied"),
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
