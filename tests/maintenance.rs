//! End-to-end maintenance: `verify` names exactly the damaged files and points, stops in its
//! time box and continues where it stopped; `check` is the metadata half; `gc` shrinks a vault
//! to the size of a fresh one holding the same points, survives SIGKILL anywhere, runs beside a
//! backup and never takes bytes from under a mount.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// State `k` of a source tree: `f1..fk` accumulate (each point keeps the earlier ones), `gk` is
/// only in state k, so forgetting points leaves packs partly live (they must be repacked).
fn write_state(src: &Path, k: u64) {
    if src.exists() {
        std::fs::remove_dir_all(src).unwrap();
    }
    std::fs::create_dir_all(src.join("notes")).unwrap();
    for j in 1..=k {
        write(&src.join(format!("f{j}")), &noise(300_000, 1000 + j));
    }
    write(&src.join(format!("g{k}")), &noise(600_000, 2000 + k));
    write(
        &src.join(format!("notes/t{k}.txt")),
        &text(60_000, 3000 + k),
    );
    write(&src.join("notes/common.txt"), &text(80_000, 7));
}

/// Relative paths of the files of state `k`.
fn state_files(k: u64) -> Vec<String> {
    let mut v: Vec<String> = (1..=k).map(|j| format!("f{j}")).collect();
    v.push(format!("g{k}"));
    v.push(format!("notes/t{k}.txt"));
    v.push("notes/common.txt".into());
    v
}

/// Backs up state `k` of `src` as a point of `item`; returns the point id and a snapshot of
/// what was backed up.
fn backup_state(
    t: &TestVault,
    item: &str,
    src: &Path,
    k: u64,
) -> (String, BTreeMap<Vec<u8>, Snap>) {
    write_state(src, k);
    let snap = snapshot(src, false);
    let p = t.backup(item, src);
    (p["point"]["id"].as_str().unwrap().to_string(), snap)
}

fn forget_and_purge(t: &TestVault, item: &str, id: &str) {
    let spec = format!("{item}@{id}");
    t.ok(&["forget", &spec]);
    t.ok(&["purge", &spec]);
}

/// Runs coffre with JSON output and any exit code; returns (code, report).
fn run_json(t: &TestVault, args: &[&str]) -> (i32, serde_json::Value) {
    let out = t.run(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some(),
        "coffre {args:?} was killed: {}",
        stderr(&out)
    );
    (out.status.code().unwrap(), json(&text))
}

/// Restores `item@id` and compares it with `snap`.
fn assert_restores(t: &TestVault, item: &str, id: &str, snap: &BTreeMap<Vec<u8>, Snap>) {
    let to = t.path(&format!("restored-{id}-{}", COUNT.fetch_add(1, SEQ)));
    t.ok(&[
        "restore",
        &format!("{item}@{id}"),
        "/",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_same(snap, &snapshot(&to, false));
    std::fs::remove_dir_all(&to).unwrap();
}

static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const SEQ: std::sync::atomic::Ordering = std::sync::atomic::Ordering::SeqCst;

fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    for x in &mut b {
        *x ^= 0x5a;
    }
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn verify_names_exactly_the_damaged_files_and_points() {
    let t = TestVault::new();
    let src = t.path("src");
    let mut points = Vec::new();
    for (item, states) in [("a", 1..=3u64), ("b", 4..=5u64)] {
        for k in states {
            let (id, _) = backup_state(&t, item, &src, k);
            points.push((item, id, k));
        }
    }
    let (code, clean) = run_json(&t, &["verify", "--json"]);
    assert_eq!(code, 0, "a clean vault verifies: {clean}");
    assert_eq!(clean["packs_verified"], clean["packs_total"]);
    assert!(clean["damaged_files"].as_array().unwrap().is_empty());
    assert_eq!(t.run(&["check"]).status.code(), Some(0));

    let all = pack_files(&t);
    assert!(all.len() >= 5, "one pack per backup at least: {all:?}");
    for p in &all[..3] {
        let size = std::fs::metadata(p).unwrap().len();
        for at in [size / 3, size / 2, 2 * size / 3] {
            flip(p, at);
        }
    }
    let cut = &all[3];
    let f = std::fs::OpenOptions::new().write(true).open(cut).unwrap();
    f.set_len(std::fs::metadata(cut).unwrap().len() / 2)
        .unwrap();
    drop(f);

    // What cannot be restored any more, file by file: the oracle.
    let mut expected = BTreeSet::new();
    for (item, id, k) in &points {
        for rel in state_files(*k) {
            let to = t.path("oracle");
            let out = t.run(&[
                "restore",
                &format!("{item}@{id}"),
                &rel,
                "--to",
                to.to_str().unwrap(),
            ]);
            if !out.status.success() {
                expected.insert((id.clone(), rel));
            }
            let _ = std::fs::remove_dir_all(&to);
        }
    }
    assert!(!expected.is_empty());

    let (code, report) = run_json(&t, &["verify", "--json"]);
    assert_eq!(code, 1, "damage found exits 1: {report}");
    let mut named = BTreeSet::new();
    for f in report["damaged_files"].as_array().unwrap() {
        let path = f["path"].as_str().unwrap();
        let item = f["item"].as_str().unwrap();
        assert!(path.starts_with(&format!("items/{item}/")), "{path}");
        let rel = path.splitn(4, '/').nth(3).unwrap().to_string();
        named.insert((f["point"].as_str().unwrap().to_string(), rel));
    }
    assert_eq!(
        named, expected,
        "verify names exactly what no longer restores"
    );
    let damaged_packs: BTreeSet<String> = report["damaged_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pack"].as_str().unwrap().to_string())
        .collect();
    for p in &all[..4] {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            damaged_packs.contains(&name),
            "{name} not reported: {damaged_packs:?}"
        );
    }
    // The text report names the same files, and `check` sees the marks and the short pack.
    let text = String::from_utf8_lossy(&t.run(&["verify"]).stdout).into_owned();
    for f in report["damaged_files"].as_array().unwrap() {
        assert!(text.contains(f["path"].as_str().unwrap()), "{text}");
    }
    assert_eq!(t.run(&["check"]).status.code(), Some(1));
}

#[cfg(feature = "fault-injection")]
#[test]
fn verify_stops_in_its_time_box_and_the_next_run_continues() {
    let t = TestVault::new();
    let src = t.path("src");
    for k in 1..=8 {
        backup_state(&t, "x", &src, k);
    }
    let total = pack_files(&t).len();
    let timed = |t: &TestVault| {
        let started = Instant::now();
        let out = run_with_deadline(
            t.cmd().env("COFFRE_TEST_DELAY", "verify-pack:300").args([
                "verify",
                "--json",
                "--threads",
                "1",
                "--max-duration",
                "1s",
            ]),
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        (
            started.elapsed(),
            json(&String::from_utf8_lossy(&out.stdout)),
        )
    };
    let verified_at = |t: &TestVault| -> BTreeMap<String, i64> {
        let db = rusqlite::Connection::open(t.vault().join("verify.db")).unwrap();
        let mut st = db.prepare("SELECT pack, at FROM verified").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    let (took, first) = timed(&t);
    let n1 = first["packs_verified"].as_u64().unwrap() as usize;
    assert!(first["stopped_in_time"].as_bool().unwrap(), "{first}");
    assert!(
        n1 >= 1 && n1 < total,
        "{n1} of {total} packs in the first run"
    );
    // It stopped between packs, without starting one it could not finish in time.
    assert!(
        took < Duration::from_secs(1) + Duration::from_millis(300) * 2 + Duration::from_secs(2)
    );
    let after1 = verified_at(&t);
    assert_eq!(after1.len(), n1);
    let (_, second) = timed(&t);
    let n2 = second["packs_verified"].as_u64().unwrap() as usize;
    let after2 = verified_at(&t);
    let cut = after1.values().max().unwrap();
    let again: Vec<_> = after2
        .iter()
        .filter(|(_, at)| *at > cut)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(again.len(), n2);
    for p in &again {
        assert!(
            !after1.contains_key(*p),
            "{p} was read again while others were never read"
        );
    }
    // Without a time box every pack is read; all are dated now.
    let (code, all) = run_json(&t, &["verify", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(all["packs_verified"].as_u64().unwrap() as usize, total);
    assert_eq!(verified_at(&t).len(), total);
    let (code, sampled) = run_json(&t, &["verify", "--json", "--sample", "25"]);
    assert_eq!(code, 0);
    assert_eq!(
        sampled["packs_verified"].as_u64().unwrap() as usize,
        total.div_ceil(4)
    );
}

#[test]
fn gc_brings_a_vault_to_the_size_of_a_fresh_one_and_every_point_restores() {
    let t = TestVault::new();
    let src = t.path("src");
    let mut kept = Vec::new();
    for k in 1..=8 {
        let (id, snap) = backup_state(&t, "x", &src, k);
        if k <= 6 {
            forget_and_purge(&t, "x", &id);
        } else {
            kept.push((id, snap));
        }
    }
    let before = du(&t.vault());
    let (code, dry) = run_json(&t, &["gc", "--dry-run", "--json"]);
    assert_eq!(code, 0);
    assert!(dry["packs_repacked"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(du(&t.vault()), before, "--dry-run changes nothing");

    let (code, report) = run_json(&t, &["gc", "--json"]);
    assert_eq!(code, 0, "{report}");
    assert!(report["packs_repacked"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["packs_waiting"], 0);
    let after = du(&t.vault());
    assert!(after < before, "{after} < {before}");

    let fresh = TestVault::new();
    for k in 7..=8 {
        backup_state(&fresh, "x", &src, k);
    }
    let want = du(&fresh.vault());
    assert!(
        (after as f64) <= want as f64 * 1.10,
        "after gc {after} bytes, a fresh vault with the same points {want}"
    );
    for (id, snap) in &kept {
        assert_restores(&t, "x", id, snap);
    }
    assert_eq!(t.run(&["verify"]).status.code(), Some(0));
    // Nothing left to do: a second gc changes nothing.
    let (_, again) = run_json(&t, &["gc", "--json"]);
    assert_eq!(again["packs_deleted"], 0, "{again}");
    assert_eq!(again["packs_repacked"], 0, "{again}");
}

/// A small seeded generator (xorshift), so a failing iteration can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn gc_killed_at_any_moment_never_loses_a_live_point() {
    use std::os::unix::process::ExitStatusExt;
    let t = TestVault::new();
    let src = t.path("src");
    let mut live: Vec<(String, BTreeMap<Vec<u8>, Snap>)> = Vec::new();
    let mut rng = Rng(0x005e_edc0_ffee);
    let crash_points = [
        "gc-marked",
        "gc-pack-moved",
        "gc-pack-moved#2",
        "pack-sealed",
        "before-commit",
        "gc-round-committed",
        "gc-pack-deleted",
        "gc-pack-deleted#2",
    ];
    let mut crashed = 0;
    for i in 0..24u64 {
        // New points, and old ones forgotten, so every gc has packs to empty and to repack.
        for k in [i % 6 + 1, (i + 3) % 6 + 1] {
            live.push(backup_state(&t, "x", &src, k));
        }
        while live.len() > 3 {
            let (id, _) = live.remove(rng.below(live.len() as u64 - 1) as usize);
            forget_and_purge(&t, "x", &id);
        }
        let mut cmd = t.cmd();
        cmd.args(["gc", "--json"]);
        let timed = i % 4 == 3;
        if !timed {
            let at = crash_points[rng.below(crash_points.len() as u64) as usize];
            cmd.env("COFFRE_CRASH_AT", at);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if timed {
            std::thread::sleep(Duration::from_millis(rng.below(120)));
            let _ = child.kill();
        }
        let status = wait_within(&mut child, Duration::from_secs(60)).expect("gc ended");
        if status.signal() == Some(libc::SIGKILL) {
            crashed += 1;
        } else {
            assert!(status.success(), "iteration {i}: gc failed: {status}");
        }
        assert_eq!(t.run(&["check"]).status.code(), Some(0), "iteration {i}");
        for (id, snap) in &live {
            assert_restores(&t, "x", id, snap);
        }
    }
    assert!(crashed >= 12, "only {crashed} of 24 runs were killed");
    // The next gc finishes the work: nothing quarantined is left and the vault verifies.
    let (code, last) = run_json(&t, &["gc", "--json"]);
    assert_eq!(code, 0, "{last}");
    let orphaned = t.vault().join("packs/orphaned");
    let left = std::fs::read_dir(&orphaned).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "killed gc's copies are deleted once redundant");
    assert_eq!(t.run(&["verify"]).status.code(), Some(0));
    for (id, snap) in &live {
        assert_restores(&t, "x", id, snap);
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_backup_beside_gc_completes_and_restores_exactly() {
    let t = TestVault::new();
    let src = t.path("src");
    let src2 = t.path("src2");
    let mut ids = Vec::new();
    for k in 1..=5 {
        ids.push(backup_state(&t, "x", &src, k).0);
    }
    for id in &ids[..3] {
        forget_and_purge(&t, "x", id);
    }
    // 1. A backup between gc's mark and its rounds, storing data the mark found dead (g1, g2
    // and f1..f3 of the purged points): the round must see the new point and keep it.
    let go = t.path("go");
    let mut gc = t
        .cmd()
        .env("COFFRE_TEST_PAUSE", format!("gc-marked:{}", go.display()))
        .args(["gc", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&PathBuf::from(format!("{}.reached", go.display())));
    write_state(&src2, 2);
    write(&src2.join("g1"), &noise(600_000, 2001));
    let snap = snapshot(&src2, false);
    let p = t.backup("y", &src2);
    let new_id = p["point"]["id"].as_str().unwrap().to_string();
    write(&go, b"");
    let status = wait_within(&mut gc, Duration::from_secs(60)).expect("gc ended");
    assert!(status.success());
    assert_restores(&t, "y", &new_id, &snap);

    // 2. A backup that starts while a gc round holds the writer lock waits, then completes.
    forget_and_purge(&t, "x", &ids[3]);
    let go2 = t.path("go2");
    let mut gc = t
        .cmd()
        .env(
            "COFFRE_TEST_PAUSE",
            format!("gc-pack-moved:{}", go2.display()),
        )
        .args(["gc", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&PathBuf::from(format!("{}.reached", go2.display())));
    write_state(&src2, 3);
    let snap3 = snapshot(&src2, false);
    let said = t.path("backup-stderr");
    let mut backup = t
        .cmd()
        .args(["backup", "--json", "--item", "y", src2.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&said).unwrap())
        .spawn()
        .unwrap();
    // The backup says it waits for the lock the round holds (polled, with a deadline).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&said)
        .unwrap_or_default()
        .contains("waiting for the vault lock")
    {
        assert!(
            Instant::now() < deadline,
            "the backup never waited for the lock"
        );
        assert!(
            backup.try_wait().unwrap().is_none(),
            "the backup did not wait"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    write(&go2, b"");
    assert!(
        wait_within(&mut gc, Duration::from_secs(60))
            .unwrap()
            .success()
    );
    let out = backup.wait_with_output().unwrap();
    assert!(out.status.success());
    let id3 = json(&String::from_utf8_lossy(&out.stdout))[0]["point"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_restores(&t, "y", &id3, &snap3);
    assert_restores(&t, "y", &new_id, &snap);
    assert_eq!(t.run(&["verify"]).status.code(), Some(0));
}

fn wait_for(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(feature = "fault-injection")]
#[test]
#[ignore = "needs root: FUSE mount"]
fn a_mount_reading_during_gc_sees_exact_bytes_and_gc_deletes_after_it_ends() {
    use std::io::{Read, Seek};
    let t = TestVault::new();
    let src = t.path("src");
    let mut ids = Vec::new();
    for k in 1..=5u64 {
        // One point per second: the mount's directories sort in point order.
        write_state(&src, k);
        let snap = snapshot(&src, false);
        let out = run_with_deadline(
            t.cmd()
                .env("COFFRE_TEST_POINT_TIME", (1_780_000_000 + k).to_string())
                .args(["backup", "--json", "--item", "x", src.to_str().unwrap()]),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let id = json(&String::from_utf8_lossy(&out.stdout))[0]["point"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        ids.push((id, snap));
    }
    let m = MountGuard::start(&t, &[]);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(m.dir.join("items/x"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "latest")
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 5);
    // A file of a point about to be purged, open across the gc; a live point read after it.
    let mut open = std::fs::File::open(dirs[1].join("g2")).unwrap();
    let mut head = vec![0u8; 4096];
    open.read_exact(&mut head).unwrap();
    let live_dir = dirs[2].clone();
    for i in [0usize, 1, 3] {
        forget_and_purge(&t, "x", &ids[i].0);
    }
    let (code, report) = run_json(&t, &["gc", "--json"]);
    assert_eq!(code, 0, "{report}");
    assert!(report["packs_repacked"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["packs_waiting"].as_u64().unwrap() > 0,
        "the mount's lease holds packs: {report}"
    );
    // The open file still reads exactly, and so does every file of the live point.
    open.rewind().unwrap();
    let mut all = Vec::new();
    open.read_to_end(&mut all).unwrap();
    assert!(
        all == noise(600_000, 2002),
        "the open file reads its own bytes"
    );
    assert_same(&ids[2].1, &snapshot(&live_dir, false));
    drop(open);
    drop(m);
    let (_, after) = run_json(&t, &["gc", "--json"]);
    assert_eq!(after["packs_waiting"], 0, "{after}");
    assert!(after["packs_deleted"].as_u64().unwrap() > 0, "{after}");
    assert_eq!(t.run(&["verify"]).status.code(), Some(0));
}

#[test]
fn gc_deletes_nothing_while_a_point_needs_an_unreadable_tree_and_check_names_it() {
    let t = TestVault::new();
    let src = t.path("src");
    let (keep, _) = backup_state(&t, "x", &src, 3);
    let (old, _) = backup_state(&t, "x", &src, 1);
    forget_and_purge(&t, "x", &old);
    // Damage the trees of the kept point: gc can no longer know what it needs.
    assert!(damage_every_tree(&t) >= 1);
    let before = pack_files(&t);
    let out = t.run(&["gc"]);
    assert_fails(&out, "gc deleted nothing");
    assert!(stderr(&out).contains("coffre check"), "{}", stderr(&out));
    assert_eq!(pack_files(&t), before, "no pack deleted");
    let (code, report) = run_json(&t, &["check", "--json"]);
    assert_eq!(code, 1);
    assert!(
        !report["check"]["broken"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let named: Vec<&str> = report["damaged_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["point"].as_str().unwrap())
        .collect();
    assert!(named.contains(&keep.as_str()), "{report}");
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_point_purged_and_replaced_during_gc_keeps_the_new_points_data() {
    // The newest point is purged while gc walks the points, and the next backup takes its row
    // id: gc must still see the new point.
    let t = TestVault::new();
    let src = t.path("src");
    backup_state(&t, "x", &src, 1);
    let (newest, _) = backup_state(&t, "x", &src, 2);
    let go = t.path("go");
    let mut gc = t
        .cmd()
        .env("COFFRE_TEST_PAUSE", format!("gc-marked:{}", go.display()))
        .args(["gc", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&PathBuf::from(format!("{}.reached", go.display())));
    forget_and_purge(&t, "x", &newest);
    let (replacement, snap) = backup_state(&t, "x", &src, 5);
    write(&go, b"");
    assert!(
        wait_within(&mut gc, Duration::from_secs(60))
            .unwrap()
            .success()
    );
    assert_restores(&t, "x", &replacement, &snap);
    assert_eq!(t.run(&["check"]).status.code(), Some(0));
}

#[test]
fn rebuild_index_after_gc_recovers_an_older_catalog() {
    let t = TestVault::new();
    let src = t.path("src");
    let (old, _) = backup_state(&t, "x", &src, 3);
    let (keep, snap) = backup_state(&t, "x", &src, 4);
    forget_and_purge(&t, "x", &old);
    let _ = t.ok(&["points"]); // checkpoints the WAL into vault.db on close
    let db = t.vault().join("vault.db");
    let saved = std::fs::read(&db).unwrap();
    let (_, report) = run_json(&t, &["gc", "--json", "--repack-below", "100"]);
    assert!(report["packs_repacked"].as_u64().unwrap() > 0, "{report}");
    // The catalog from before the gc is put back: it names packs gc deleted; the chunks it
    // needs are in gc's new packs, which it does not know.
    for f in ["vault.db-wal", "vault.db-shm"] {
        let _ = std::fs::remove_file(t.vault().join(f));
    }
    std::fs::write(&db, &saved).unwrap();
    t.ok(&["vault", "rebuild-index", "--json"]);
    assert_eq!(t.run(&["check"]).status.code(), Some(0));
    assert_restores(&t, "x", &keep, &snap);
}

#[test]
#[ignore = "needs root: FUSE mount"]
fn a_reader_inside_a_purged_point_keeps_reading_through_gc() {
    let t = TestVault::new();
    let src = t.path("src");
    let (doomed, _) = backup_state(&t, "x", &src, 2);
    backup_state(&t, "x", &src, 3);
    t.ok(&["forget", &format!("x@{doomed}")]);
    let m = MountGuard::start(&t, &[]);
    let dir = std::fs::read_dir(m.dir.join("deleted/x"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("the forgotten point under deleted/");
    // A shell sits in the point's directory; it lists and reads a subdirectory only later.
    let (go, ready, out) = (t.path("go"), t.path("ready"), t.path("sum"));
    let mut sh = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && : > '{}' && while [ ! -e '{}' ]; do sleep 0.05; done; \
             ls notes >/dev/null && cat notes/t2.txt > '{}'",
            dir.display(),
            ready.display(),
            go.display(),
            out.display()
        ))
        .spawn()
        .unwrap();
    wait_for(&ready);
    t.ok(&["purge", &format!("x@{doomed}")]);
    let (code, report) = run_json(&t, &["gc", "--json"]);
    assert_eq!(code, 0, "{report}");
    assert!(report["blobs_waiting"].as_u64().unwrap() > 0, "{report}");
    write(&go, b"");
    let status = wait_within(&mut sh, Duration::from_secs(30)).expect("shell ended");
    assert!(status.success(), "the reader got an error");
    assert!(std::fs::read(&out).unwrap() == text(60_000, 3002));
    drop(m);
    let (_, after) = run_json(&t, &["gc", "--json"]);
    assert_eq!(after["blobs_waiting"], 0, "{after}");
    assert!(after["trees_dropped"].as_u64().unwrap() > 0, "{after}");
}

#[test]
fn verify_names_a_soft_deleted_point_and_restore_says_how_to_bring_it_back() {
    let t = TestVault::new();
    let src = t.path("src");
    let (old, _) = backup_state(&t, "a", &src, 1);
    backup_state(&t, "a", &src, 2);
    t.ok(&["forget", &format!("a@{old}")]);
    // verify reads the deleted point's packs (it is still recoverable, so still checked).
    let (code, r) = run_json(&t, &["verify", "--json", &format!("a@{old}")]);
    assert_eq!(code, 0, "{r}");
    assert!(r["packs_verified"].as_u64().unwrap() >= 1, "{r}");
    // Commands that need a live point say it is soft-deleted and how to undelete it.
    let out = t.run(&[
        "restore",
        &format!("a@{}", &old[..8]),
        "--to",
        t.path("back").to_str().unwrap(),
    ]);
    assert_fails(&out, &format!("is soft-deleted: `coffre undelete a@{old}`"));
    // An id that names nothing is still "no recovery point".
    let out = t.run(&["verify", "a@ffffffffffff"]);
    assert_fails(&out, "no recovery point");
}
