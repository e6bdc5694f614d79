//! End-to-end crash safety, locking and damaged-vault handling:
//! a backup killed at any step (SIGKILL at chosen points and at random moments, or a failing pack
//! write) leaves a vault that opens, lists every earlier point intact and takes the next backup;
//! a second writer waits or fails with --no-wait; damaged packs and catalogs give clear errors.

mod common;

#[cfg(feature = "fault-injection")]
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::*;

/// Pack files in `packs/` (not the quarantine below it).
fn pack_files(t: &TestVault) -> usize {
    std::fs::read_dir(t.vault().join("packs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".pack")
        })
        .count()
}

fn catalog_packs(t: &TestVault) -> u64 {
    let out = t.ok(&["stats", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["packs"]
        .as_u64()
        .unwrap()
}

/// A tree big enough that a backup writes more than one pack (packs seal at 32 MiB).
fn grow(src: &std::path::Path, seed: u64, files: usize) {
    for i in 0..files {
        write(
            &src.join(format!("g{seed}/f{i}")),
            &noise(400_000, seed * 1000 + i as u64),
        );
    }
}

/// After a failed backup: earlier points intact, next backup complete and exact.
fn check_recovers(
    t: &TestVault,
    src: &std::path::Path,
    before: &[serde_json::Value],
    snap_before: &std::collections::BTreeMap<Vec<u8>, Snap>,
) {
    let points = t.points("c");
    assert_eq!(
        points, before,
        "the failed backup changed the list of points"
    );
    let dst = t.path(&format!("check-{}", rand_suffix()));
    t.restore("c", &dst);
    assert_same(snap_before, &snapshot(&dst, false));
    // The next backup completes, removes leftovers and is exact.
    let want = snapshot(src, false);
    t.backup("c", src);
    assert_eq!(
        pack_files(t) as u64,
        catalog_packs(t),
        "leftover pack files were not moved out of packs/"
    );
    let dst2 = t.path(&format!("check-{}", rand_suffix()));
    t.restore("c", &dst2);
    assert_same(&want, &snapshot(&dst2, false));
}

/// A fresh name for each check directory within one test process.
fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[test]
#[cfg(feature = "fault-injection")]
fn killed_at_chosen_points_or_failing_writes_leave_a_good_vault() {
    for (i, fault) in [
        ("COFFRE_CRASH_AT", "pack-sealed"),
        ("COFFRE_CRASH_AT", "before-commit"),
        ("COFFRE_FAIL_WRITE_AFTER", "1000"),
        ("COFFRE_FAIL_WRITE_AFTER", "40000000"),
    ]
    .iter()
    .enumerate()
    {
        let t = TestVault::new();
        let src = t.path("src");
        write(&src.join("base.txt"), &text(100_000, 1));
        t.backup("c", &src);
        let snap1 = snapshot(&src, false);
        let before = t.points("c");
        grow(&src, i as u64 + 2, 120); // ~48 MiB of incompressible data: two packs
        let out = t
            .cmd()
            .env(fault.0, fault.1)
            .args(["backup", "--item", "c", src.to_str().unwrap()])
            .output_within();
        if fault.0 == "COFFRE_CRASH_AT" {
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGKILL),
                "{fault:?}: {}",
                stderr(&out)
            );
        } else {
            assert_eq!(out.status.code(), Some(1), "{fault:?}");
            let err = stderr(&out);
            assert!(
                err.contains("disk full") && !err.contains("panicked"),
                "{err}"
            );
        }
        check_recovers(&t, &src, &before, &snap1);
    }
}

#[test]
fn killed_at_random_moments_leaves_a_good_vault() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("base.txt"), &text(100_000, 1));
    t.backup("c", &src);
    let snap1 = snapshot(&src, false);
    let before = t.points("c");
    grow(&src, 7, 150);
    let mut kills = 0;
    for delay_ms in [5u64, 40, 90, 150, 250, 400] {
        let mut child = t
            .cmd()
            .args(["backup", "-q", "--item", "c", src.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            break; // finished before the kill: nothing more to prove with longer delays
        }
        kills += 1;
        let now = t.points("c");
        if now.len() == before.len() + 1 {
            // Killed after its commit, before it exited: the point is there, and whole.
            let id = now.last().unwrap()["id"].as_str().unwrap().to_string();
            let to = t.path(&format!("after-kill-{delay_ms}"));
            t.restore(&format!("c@{id}"), &to);
            assert_same(&snapshot(&src, false), &snapshot(&to, false));
            break;
        }
        assert_eq!(
            now, before,
            "a killed backup left a partial point (delay {delay_ms} ms)"
        );
    }
    // A backup of 60 MB takes far longer than 5 ms: at least one was killed mid-way.
    assert!(kills >= 1, "no backup was killed: the test proved nothing");
    let points_now = t.points("c");
    if points_now.len() == before.len() {
        check_recovers(&t, &src, &before, &snap1);
    }
}

#[test]
fn a_second_writer_waits_or_fails_with_no_wait() {
    use std::os::fd::AsRawFd;
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("a"), b"a");
    t.backup("c", &src);
    let lock = std::fs::File::open(t.vault().join("lock")).unwrap();
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    let out = t.run(&["backup", "--no-wait", "c"]);
    assert_fails(&out, "locked by another writer");

    let mut waiting = t
        .cmd()
        .args(["backup", "c"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the second writer did not wait"
    );
    // Readers are not blocked by the writer lock.
    assert_eq!(t.points("c").len(), 1);
    drop(lock);
    let Some(status) = wait_within(&mut waiting, Duration::from_secs(30)) else {
        let _ = waiting.kill();
        panic!("the waiting backup did not finish after the lock was released");
    };
    assert!(status.success());
    assert_eq!(t.points("c").len(), 2);
}

#[test]
fn a_damaged_pack_gives_a_clear_error_and_other_files_still_restore() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("victim.bin"), &noise(3 << 20, 1)); // one big incompressible file
    t.backup("c", &src);
    // A second pack for another file, untouched.
    write(&src.join("survivor.txt"), &text(50_000, 2));
    t.backup("c", &src);
    // Flip bytes in the middle of the largest pack (the victim's data).
    let mut packs: Vec<_> = std::fs::read_dir(t.vault().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let big = packs.last().unwrap();
    let mut data = std::fs::read(big).unwrap();
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(big, &data).unwrap();

    let dst = t.path("dst");
    let out = t.run(&["restore", "c", "--to", dst.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("victim.bin") && err.contains("damaged"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(dst.join("survivor.txt")).unwrap(),
        text(50_000, 2)
    );

    // A truncated pack too.
    std::fs::write(big, &data[..1000]).unwrap();
    let out = t.run(&["restore", "c", "--to", t.path("dst2").to_str().unwrap()]);
    assert_fails(&out, "damaged");
}

#[test]
fn damaged_foreign_or_newer_catalogs_are_refused_unchanged() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("a"), b"a");
    t.backup("c", &src);
    let db = t.vault().join("vault.db");
    let good = std::fs::read(&db).unwrap();

    // Garbage where the SQLite header should be.
    let mut bad = good.clone();
    bad[..100].copy_from_slice(&[0x42; 100]);
    std::fs::write(&db, &bad).unwrap();
    for args in [
        &["points"][..],
        &["backup", "c"],
        &["restore", "c", "--to", "/tmp/never"],
    ] {
        let out = t.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("damaged") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bad,
        "a damaged catalog was modified"
    );

    // A newer schema.
    std::fs::write(&db, &good).unwrap();
    let _ = std::fs::remove_file(t.vault().join("vault.db-wal"));
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let out = t.run(&["points"]);
    assert_fails(&out, "newer coffre");

    // A directory that holds something else.
    let other = t.path("other");
    write(&other.join("photo.jpg"), b"not a vault");
    let out = t
        .cmd()
        .env("COFFRE_VAULT", &other)
        .args(["points"])
        .output_within();
    assert_fails(&out, "not a coffre vault");
    let out = t
        .cmd()
        .env("COFFRE_VAULT", &other)
        .args(["backup", "--item", "x", src.to_str().unwrap()])
        .output_within();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_dir(&other).unwrap().count(),
        1,
        "a foreign directory was written to"
    );
}
