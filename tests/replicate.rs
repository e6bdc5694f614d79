//! End-to-end replication to a local directory: a replica restores every point exactly and
//! verifies; a second run copies only the new packs; a killed run resumes without copying again;
//! soft deletes and purges follow the primary; damage in the primary is found and marked on both
//! sides; a replica of another vault and bad targets are refused with one clear line.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `coffre replicate --to DIR ARGS... --json`, which must succeed.
fn replicate(t: &TestVault, to: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["replicate", "--json", "--to", to.to_str().unwrap()];
    all.extend_from_slice(args);
    json(&t.ok(&all))
}

/// Restores `item@id` from the vault at `vault` and compares it with `snap`.
fn assert_restores(t: &TestVault, vault: &Path, spec: &str, snap: &BTreeMap<Vec<u8>, Snap>) {
    let to = t.path(&format!("restored-{}", spec.replace('@', "-")));
    if to.exists() {
        std::fs::remove_dir_all(&to).unwrap();
    }
    t.ok(&[
        "--vault",
        vault.to_str().unwrap(),
        "restore",
        spec,
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_same(snap, &snapshot(&to, false));
    std::fs::remove_dir_all(&to).unwrap();
}

fn point_ids(t: &TestVault, vault: &Path, deleted: bool) -> Vec<String> {
    let mut args = vec!["--vault", vault.to_str().unwrap(), "points", "--json"];
    if deleted {
        args.push("--deleted");
    }
    let v = json(&t.ok(&args));
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn verify_ok(t: &TestVault, vault: &Path) {
    let out = t.ok(&["--vault", vault.to_str().unwrap(), "verify", "--json"]);
    let r = json(&out);
    assert!(r["packs_verified"].as_u64().unwrap() >= 1, "{out}");
}

/// A vault with items `a` (three points) and `b` (two points); returns (item@id, snapshot).
fn two_items(t: &TestVault) -> Vec<(String, BTreeMap<Vec<u8>, Snap>)> {
    let (a, b) = (t.path("a"), t.path("b"));
    let mut out = Vec::new();
    for k in 0..3u64 {
        let files = [
            ("big", noise(400_000, 10 + k)),
            ("notes/t.txt", text(50_000, 20 + k)),
            ("same", noise(100_000, 5)),
        ];
        let (id, snap) = backup_files(t, "a", &a, &files);
        out.push((format!("a@{id}"), snap));
    }
    for k in 0..2u64 {
        let files = [
            ("disk.img", noise(300_000, 30 + k)),
            ("same", noise(100_000, 5)),
        ];
        let (id, snap) = backup_files(t, "b", &b, &files);
        out.push((format!("b@{id}"), snap));
    }
    out
}

#[test]
fn a_replica_restores_every_point_exactly_and_verifies() {
    let t = TestVault::new();
    let points = two_items(&t);
    let r = t.path("replica");
    // One item first: only its points arrive.
    let first = replicate(&t, &r, &["b"]);
    assert_eq!(first["created"], true, "{first}");
    assert_eq!(first["points_added"], 2, "{first}");
    let items = json(&t.ok(&["--vault", r.to_str().unwrap(), "items", "--json"]));
    assert_eq!(items.as_array().unwrap().len(), 1, "{items}");
    // Then all of them.
    let all = replicate(&t, &r, &[]);
    assert_eq!(all["points_added"], 3, "{all}");
    assert_eq!(all["created"], false, "{all}");
    assert_eq!(point_ids(&t, &r, false), point_ids(&t, &t.vault(), false));
    for (spec, snap) in &points {
        assert_restores(&t, &r, spec, snap);
    }
    verify_ok(&t, &r);
    // Nothing new: nothing copied.
    let again = replicate(&t, &r, &[]);
    assert_eq!(again["points_added"], 0, "{again}");
    assert_eq!(again["bytes_copied"], 0, "{again}");
    assert!(!r.join("incoming").exists());
    // The text output says what happened.
    let out = t.ok(&["replicate", "--to", r.to_str().unwrap()]);
    assert!(out.contains("0 points added"), "{out}");
    // A replica remembered by name.
    let usb = t.path("usb");
    t.ok(&["vault", "set", "replica", "usb", usb.to_str().unwrap()]);
    let shown = json(&t.ok(&["vault", "show", "--json"]));
    assert_eq!(shown["replicas"]["usb"], usb.to_str().unwrap(), "{shown}");
    let named = json(&t.ok(&["replicate", "--json", "--to", "usb"]));
    assert_eq!(named["points_added"], 5, "{named}");
    assert_eq!(point_ids(&t, &usb, false), point_ids(&t, &t.vault(), false));
    let out = t.run(&["vault", "set", "replica", "a/b", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot name a replica"),
        "{}",
        stderr(&out)
    );
    t.ok(&["vault", "set", "no-replica", "usb"]);
    let shown = json(&t.ok(&["vault", "show", "--json"]));
    assert!(shown["replicas"].as_object().unwrap().is_empty(), "{shown}");
}

/// Makes `dir` read-only: a read-only remount of a tmpfs holding a copy (root ignores modes),
/// else its modes. Returns the directory to read and a guard that undoes it.
struct ReadOnly {
    dir: PathBuf,
    mounted: bool,
}

impl ReadOnly {
    fn of(t: &TestVault, from: &Path) -> ReadOnly {
        let dir = t.path("ro");
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let sh = |c: &mut Command| {
                let out = c.output_within();
                assert!(out.status.success(), "{}", stderr(&out));
            };
            sh(Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs"])
                .arg(&dir));
            sh(Command::new("cp").arg("-a").arg(from).arg(dir.join("v")));
            sh(Command::new("mount").args(["-o", "remount,ro"]).arg(&dir));
            return ReadOnly {
                dir: dir.join("v"),
                mounted: true,
            };
        }
        let out = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(dir.join("v"))
            .output_within();
        assert!(out.status.success());
        let out = Command::new("chmod")
            .arg("-R")
            .arg("a-w")
            .arg(dir.join("v"))
            .output_within();
        assert!(out.status.success());
        ReadOnly {
            dir: dir.join("v"),
            mounted: false,
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.parent().unwrap())
                .output_within();
        } else {
            let _ = Command::new("chmod")
                .arg("-R")
                .arg("u+w")
                .arg(&self.dir)
                .output_within();
        }
    }
}

#[test]
fn a_read_only_replica_lists_restores_mounts_and_verifies() {
    let t = TestVault::new();
    let points = two_items(&t);
    let r = t.path("replica");
    replicate(&t, &r, &[]);
    let ro = ReadOnly::of(&t, &r);
    assert_eq!(
        point_ids(&t, &ro.dir, false),
        point_ids(&t, &t.vault(), false)
    );
    for (spec, snap) in &points {
        assert_restores(&t, &ro.dir, spec, snap);
    }
    verify_ok(&t, &ro.dir);
    // The mount shows the newest point of each item as it was backed up.
    let m = MountGuard::start(&t, &["--vault", ro.dir.to_str().unwrap()]);
    assert_same(&points[2].1, &snapshot(&m.latest("a"), false));
    assert_same(&points[4].1, &snapshot(&m.latest("b"), false));
}

#[test]
fn a_second_replicate_copies_about_what_the_primary_grew() {
    let t = TestVault::new();
    let src = t.path("src");
    let files: Vec<(String, Vec<u8>)> = (0..100u64)
        .map(|i| (format!("d{}/f{i}", i % 7), noise(100_000, 100 + i)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (&**n, d.clone())).collect();
    backup_files(&t, "big", &src, &refs);
    let r = t.path("replica");
    let first = replicate(&t, &r, &[]);
    let before = du(&t.vault().join("packs"));
    assert_eq!(first["bytes_copied"].as_u64().unwrap(), before, "{first}");
    // A 1 % change: one file of a hundred rewritten.
    let (id, snap) = backup_files(&t, "big", &src, &[("d3/f10", noise(100_000, 9999))]);
    let growth = du(&t.vault().join("packs")) - before;
    let second = replicate(&t, &r, &[]);
    let copied = second["bytes_copied"].as_u64().unwrap();
    assert!(copied > 0, "{second}");
    assert!(
        copied as f64 <= 1.2 * growth as f64,
        "copied {copied} for a growth of {growth}: {second}"
    );
    assert_eq!(second["points_added"], 1, "{second}");
    assert_restores(&t, &r, &format!("big@{id}"), &snap);
}

/// Four points, each in a pack of its own.
fn four_packs(t: &TestVault) -> Vec<(String, BTreeMap<Vec<u8>, Snap>)> {
    let src = t.path("src");
    (0..4u64)
        .map(|k| {
            let (id, snap) =
                backup_files(t, "c", &src, &[(&format!("f{k}"), noise(200_000, 40 + k))]);
            (format!("c@{id}"), snap)
        })
        .collect()
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_killed_replicate_resumes_without_copying_again() {
    use std::os::unix::process::ExitStatusExt;
    let t = TestVault::new();
    let points = four_packs(&t);
    let packs = std::fs::read_dir(t.vault().join("packs")).unwrap().count() as u64;
    assert_eq!(packs, 4);
    // Killed after the 2nd pack's copy, after placing every pack, just before the commit.
    for (i, (at, done)) in [
        ("replicate-pack-copied#2", 2u64),
        ("replicate-packs-placed", 4),
        ("replicate-before-commit", 4),
    ]
    .into_iter()
    .enumerate()
    {
        let r = t.path(&format!("replica{i}"));
        let out = t
            .cmd()
            .args(["replicate", "--to", r.to_str().unwrap()])
            .env("COFFRE_CRASH_AT", at)
            .output_within();
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{at}");
        // Nothing is visible before the commit.
        assert!(point_ids(&t, &r, false).is_empty(), "{at}");
        let again = replicate(&t, &r, &[]);
        assert_eq!(again["packs_resumed"], done, "{at}: {again}");
        assert_eq!(again["packs_copied"], packs - done, "{at}: {again}");
        assert_eq!(again["points_added"], 4, "{at}: {again}");
        for (spec, snap) in &points {
            assert_restores(&t, &r, spec, snap);
        }
        verify_ok(&t, &r);
        assert!(!r.join("incoming").exists(), "{at}");
        let orphaned = r.join("packs/orphaned");
        assert!(
            !orphaned.exists() || std::fs::read_dir(&orphaned).unwrap().next().is_none(),
            "{at}"
        );
    }
}

#[test]
fn soft_deletes_undeletes_and_purges_follow_the_primary() {
    let t = TestVault::new();
    let points = four_packs(&t);
    let id = |k: usize| points[k].0.split_once('@').unwrap().1.to_string();
    let r = t.path("replica");
    replicate(&t, &r, &[]);
    t.ok(&["forget", &points[0].0]);
    t.ok(&["forget", &points[1].0]);
    let s = replicate(&t, &r, &[]);
    assert_eq!(s["points_updated"], 2, "{s}");
    assert_eq!(point_ids(&t, &r, true), {
        let mut v = vec![id(0), id(1)];
        v.sort();
        v
    });
    let deleted = json(&t.ok(&[
        "--vault",
        r.to_str().unwrap(),
        "points",
        "--deleted",
        "--json",
    ]));
    assert!(
        deleted
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["deleted_by"] == "forget"),
        "{deleted}"
    );
    // One comes back, the other is purged: the replica follows.
    t.ok(&["undelete", &points[1].0]);
    t.ok(&["purge", &points[0].0]);
    let s = replicate(&t, &r, &[]);
    assert_eq!(s["points_purged"], 1, "{s}");
    assert!(point_ids(&t, &r, true).is_empty());
    assert_eq!(point_ids(&t, &r, false), point_ids(&t, &t.vault(), false));
    // The purged point's data is garbage for the replica's own gc; the others stay whole.
    t.ok(&["--vault", r.to_str().unwrap(), "gc"]);
    for (spec, snap) in &points[1..] {
        assert_restores(&t, &r, spec, snap);
    }
    verify_ok(&t, &r);
}

/// Runs coffre expecting exit 1 and one `error:` line naming `needle`.
fn refused(t: &TestVault, args: &[&str], needle: &str) {
    let out = t.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(
        err.starts_with("error: cannot replicate to") && err.contains(needle),
        "{args:?}: {err}"
    );
}

#[test]
fn a_replica_of_another_vault_and_bad_targets_are_refused() {
    let t = TestVault::new();
    four_packs(&t);
    let r = t.path("replica");
    replicate(&t, &r, &[]);
    let other = TestVault::new();
    write(&other.path("src/x"), b"other data");
    other.backup("x", &other.path("src"));
    let rs = r.to_str().unwrap();
    refused(
        &other,
        &["replicate", "--to", rs],
        "replica of another vault",
    );
    // A vault with backups of its own is not a replica.
    let ov = other.vault();
    refused(
        &t,
        &["replicate", "--to", ov.to_str().unwrap()],
        "backups of its own",
    );
    refused(
        &t,
        &["replicate", "--to", t.vault().to_str().unwrap()],
        "this vault",
    );
    // A backup into a replica would be undone by the next replicate: refused, nothing written.
    let packs_of = |v: &Path| -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(v.join("packs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    let before = packs_of(&r);
    let src = t.path("other-src");
    write(&src.join("f"), b"into the replica");
    let out = t.run(&[
        "--vault",
        rs,
        "backup",
        "--item",
        "z",
        src.to_str().unwrap(),
    ]);
    assert_fails(&out, "is a replica");
    assert_eq!(packs_of(&r), before, "no pack was written");
    assert!(
        point_ids(&t, &r, false).len() == 4,
        "no point was added to the replica"
    );
    // A file, a directory of other things, a directory that cannot be written.
    let file = t.path("file");
    write(&file, b"x");
    refused(
        &t,
        &["replicate", "--to", file.to_str().unwrap()],
        "not a directory",
    );
    let busy = t.path("busy");
    write(&busy.join("mine.txt"), b"x");
    refused(
        &t,
        &["replicate", "--to", busy.to_str().unwrap()],
        "not empty",
    );
    let closed = t.path("closed");
    std::fs::create_dir(&closed).unwrap();
    let ro = ReadOnly::of(&t, &closed);
    refused(&t, &["replicate", "--to", ro.dir.to_str().unwrap()], "");
    drop(ro);
    // The refusals changed nothing: the replica still follows its own primary.
    let again = replicate(&t, &r, &[]);
    assert_eq!(again["bytes_copied"], 0, "{again}");
}

#[test]
fn chunks_damaged_in_the_primary_are_found_and_marked_bad_on_both_sides() {
    let t = TestVault::new();
    let src = t.path("src");
    let (id, _) = backup_files(&t, "d", &src, &[("big", noise(600_000, 77))]);
    let pack = std::fs::read_dir(t.vault().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&pack, bytes).unwrap();
    let r = t.path("replica");
    let out = t.run(&["replicate", "--json", "--to", r.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&String::from_utf8_lossy(&out.stdout));
    let damaged = report["damaged_chunks"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    assert!(
        stderr(&out).contains("is damaged in this vault"),
        "{}",
        stderr(&out)
    );
    // The replica knows: its check names the chunk, a restore of the file fails clearly.
    let rs = r.to_str().unwrap();
    let check = t.run(&["--vault", rs, "check", "--json"]);
    assert_eq!(check.status.code(), Some(1));
    let c = json(&String::from_utf8_lossy(&check.stdout));
    assert_eq!(c["check"]["bad_chunks"][0]["id"], damaged[0], "{c}");
    let out = t.run(&[
        "--vault",
        rs,
        "restore",
        &format!("d@{id}"),
        "--to",
        t.path("back").to_str().unwrap(),
    ]);
    assert_fails(&out, "damaged");
    // So does the primary: its next backup stores the chunk again from the source.
    let b = t.backup("d", &src);
    assert_eq!(b["repaired"], 1, "{b}");
    let c = t.run(&["check", "--json"]);
    let c = json(&String::from_utf8_lossy(&c.stdout));
    assert!(
        c["check"]["bad_chunks"].as_array().unwrap().is_empty(),
        "the next backup stored the chunk again: {c}"
    );
}

fn flip_middle(pack: &Path) {
    let mut bytes = std::fs::read(pack).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(pack, bytes).unwrap();
}

#[test]
fn repair_from_a_replica_heals_flipped_bytes_lost_packs_and_damaged_trees() {
    let t = TestVault::new();
    let points = two_items(&t);
    let r = t.path("replica");
    replicate(&t, &r, &[]);
    let rs = r.to_str().unwrap();
    let packs = pack_files(&t);
    assert!(packs.len() >= 4, "{packs:?}");
    flip_middle(&packs[0]);
    flip_middle(&packs[1]);
    std::fs::remove_file(&packs[2]).unwrap();
    assert!(damage_every_tree(&t) > 0);
    let out = t.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "the damage is seen first");

    let out = t.run(&["repair", "--json", "--from", rs]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rep = json(&String::from_utf8_lossy(&out.stdout));
    assert!(rep["chunks_repaired"].as_u64().unwrap() >= 3, "{rep}");
    assert!(rep["blobs_repaired"].as_u64().unwrap() >= 1, "{rep}");
    assert!(rep["unrepaired"].as_array().unwrap().is_empty(), "{rep}");
    let out = t.run(&["check", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = t.run(&["verify", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    for (spec, snap) in &points {
        assert_restores(&t, &t.vault(), spec, snap);
    }
    // Healed: a second repair has nothing to do, and says so.
    let again = t.ok(&["repair", "--from", rs]);
    assert!(again.contains("nothing to repair"), "{again}");
    // The replica was only read.
    verify_ok(&t, &r);
}

#[test]
fn repair_reports_what_the_replica_lacks_and_fails() {
    let t = TestVault::new();
    let src = t.path("src");
    backup_files(&t, "a", &src, &[("old", noise(200_000, 1))]);
    let r = t.path("replica");
    replicate(&t, &r, &[]);
    let before = pack_files(&t);
    // A point made after the replicate: its data exists only here.
    backup_files(&t, "a", &src, &[("new", noise(300_000, 2))]);
    let fresh: Vec<PathBuf> = pack_files(&t)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    flip_middle(&fresh[0]);
    assert_eq!(t.run(&["verify"]).status.code(), Some(1));
    let out = t.run(&["repair", "--json", "--from", r.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let rep = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(rep["chunks_repaired"], 0, "{rep}");
    assert!(rep["unrepaired_needed"].as_u64().unwrap() >= 1, "{rep}");
    let u = &rep["unrepaired"][0];
    assert_eq!(u["what"], "chunk", "{rep}");
    assert!(
        u["detail"]
            .as_str()
            .unwrap()
            .contains("the replica cannot give it"),
        "{rep}"
    );
    // The text form names it on stderr; the vault is unchanged and still says what is wrong.
    let out = t.run(&["repair", "--from", r.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not repaired: chunk"),
        "{}",
        stderr(&out)
    );
    assert_eq!(t.run(&["check"]).status.code(), Some(1));
    // A vault cannot repair from itself, and a missing replica is one clear line.
    let v = t.vault();
    let out = t.run(&["repair", "--from", v.to_str().unwrap()]);
    assert_fails(&out, "from itself");
    let out = t.run(&["repair", "--from", t.path("nowhere").to_str().unwrap()]);
    assert_fails(&out, "no vault at");
}

#[test]
fn repair_reads_a_read_only_replica_and_writes_nothing_there() {
    let t = TestVault::new();
    let points = two_items(&t);
    let r = t.path("replica");
    replicate(&t, &r, &[]);
    let ro = ReadOnly::of(&t, &r);
    let packs = pack_files(&t);
    flip_middle(&packs[0]);
    std::fs::remove_file(&packs[1]).unwrap();
    assert_eq!(t.run(&["verify"]).status.code(), Some(1));
    let before = du(&ro.dir);
    let out = t.run(&["repair", "--from", ro.dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(du(&ro.dir), before);
    t.ok(&["verify"]);
    for (spec, snap) in &points {
        assert_restores(&t, &t.vault(), spec, snap);
    }
}

#[test]
fn backup_due_brings_every_named_replica_up_to_date() {
    let t = TestVault::new();
    t.ok(&["init"]);
    let (usb, nas) = (t.path("usb"), t.path("nas"));
    t.ok(&["vault", "set", "replica", "usb", usb.to_str().unwrap()]);
    t.ok(&["vault", "set", "replica", "nas", nas.to_str().unwrap()]);
    // A point three days old: the default policy (daily at 02:00) makes the item due now.
    let src = t.path("src");
    write(&src.join("f"), &noise(100_000, 3));
    let old = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(72)).to_string();
    t.ok(&[
        "backup",
        "-q",
        "--item",
        "a",
        src.to_str().unwrap(),
        "--time",
        &old,
    ]);
    // Created by `replicate --to NAME` (`--due` never creates one: see tests/repair_review.rs).
    t.ok(&["replicate", "-q", "--to", "usb"]);
    t.ok(&["replicate", "-q", "--to", "nas"]);
    let out = json(&t.ok(&["backup", "--due", "--json"]));
    assert_eq!(out["backups"].as_array().unwrap().len(), 1, "{out}");
    let replicas = out["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{out}");
    for r in replicas {
        assert_eq!(r["report"]["points_added"], 1, "{out}");
    }
    for dir in [&usb, &nas] {
        assert_eq!(point_ids(&t, dir, false), point_ids(&t, &t.vault(), false));
    }
    // Nothing due: no replicate either.
    let out = json(&t.ok(&["backup", "--due", "--json"]));
    assert!(out["replicas"].as_array().unwrap().is_empty(), "{out}");
    // --no-replicate skips them; a replica that fails is one error line and exit 1, and the
    // other replicas and the backups are still done.
    t.ok(&[
        "backup",
        "-q",
        "--item",
        "b",
        src.to_str().unwrap(),
        "--time",
        &old,
    ]);
    let out = json(&t.ok(&["backup", "--due", "--no-replicate", "--json"]));
    assert!(out["replicas"].as_array().unwrap().is_empty(), "{out}");
    assert_eq!(point_ids(&t, &usb, false).len(), 2);
    t.ok(&[
        "backup",
        "-q",
        "--item",
        "c",
        src.to_str().unwrap(),
        "--time",
        &old,
    ]);
    std::fs::remove_dir_all(&nas).unwrap();
    std::fs::write(&nas, b"not a directory").unwrap();
    let out = t.run(&["backup", "--due"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: replicate to replica \"nas\" failed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        point_ids(&t, &usb, false),
        point_ids(&t, &t.vault(), false),
        "usb is up to date with every point, b's and c's included"
    );
    assert_eq!(t.points("c").len(), 2);
    let out = t.run(&["backup", "--no-replicate"]);
    assert_eq!(out.status.code(), Some(2), "--no-replicate needs --due");
}
