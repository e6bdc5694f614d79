//! Hostile cases of `repair --from` and of the replicas `backup --due` brings up to date: a
//! chunk whose pack row the catalog lost is fetched back; a byte copy of the vault is a source
//! to repair from; a vault whose packs/ is gone entirely gets every pack back; a damaged point
//! root is taken from a replica of this vault (never a worse one, never another vault's); an
//! unplugged replica is one clear line for `repair` and is not created anew on the wrong disk by
//! `backup --due`; `--no-wait` never waits for a replica's lock; a repair killed at each commit
//! is run again to a clean vault; a mount beside a repair reads exact files.

mod common;

use std::path::Path;

use common::*;

/// Runs a statement on the vault's catalog (checkpointing the WAL first).
fn sql(t: &TestVault, vault: &Path, statement: &str) {
    let _ = t.ok(&["--vault", vault.to_str().unwrap(), "points"]);
    let db = rusqlite::Connection::open(vault.join("vault.db")).unwrap();
    db.execute_batch(statement).unwrap();
}

/// A vault with one point of item `a` (two files) replicated to `replica`; returns the source.
fn replicated(t: &TestVault) -> std::path::PathBuf {
    let src = t.path("src");
    write(&src.join("big"), &noise(300_000, 1));
    write(&src.join("notes.txt"), &text(40_000, 2));
    t.backup("a", &src);
    t.ok(&[
        "replicate",
        "-q",
        "--to",
        t.path("replica").to_str().unwrap(),
    ]);
    src
}

fn restores_exactly(t: &TestVault, src: &Path) {
    let to = t.path("restored");
    t.restore("a", &to);
    assert_same(&snapshot(src, false), &snapshot(&to, false));
    std::fs::remove_dir_all(&to).unwrap();
}

#[test]
fn repair_fetches_chunks_whose_pack_row_the_catalog_lost() {
    let t = TestVault::new();
    let src = replicated(&t);
    // The catalog lost the pack's row: `check` names the chunks, nothing marks them bad.
    sql(&t, &t.vault(), "DELETE FROM packs");
    assert_eq!(t.run(&["check"]).status.code(), Some(1));
    let r = t.path("replica");
    let out = t.run(&["repair", "--json", "--from", r.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rep = json(&String::from_utf8_lossy(&out.stdout));
    assert!(rep["chunks_repaired"].as_u64().unwrap() >= 2, "{rep}");
    let out = t.run(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    t.ok(&["verify"]);
    restores_exactly(&t, &src);
}

#[test]
fn repair_takes_a_byte_copy_of_the_vault_but_not_the_vault_itself() {
    let t = TestVault::new();
    let src = replicated(&t);
    // An rsync-style copy of the whole vault: same id, not a replica, another directory.
    let copy = t.path("copy");
    let status = std::process::Command::new("cp")
        .args(["-a", t.vault().to_str().unwrap(), copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    for p in std::fs::read_dir(t.vault().join("packs")).unwrap() {
        let p = p.unwrap().path();
        if p.extension().is_some_and(|x| x == "pack") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let out = t.run(&["repair", "--from", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    t.ok(&["verify"]);
    restores_exactly(&t, &src);
    // The vault itself, by another spelling of its path, is still refused.
    let same = format!("{}/../vault/", t.vault().display());
    assert_fails(&t.run(&["repair", "--from", &same]), "from itself");
}

#[test]
fn repair_from_an_unplugged_replica_says_so_without_advice_to_create_one() {
    let t = TestVault::new();
    replicated(&t);
    let usb = t.path("usb");
    std::fs::create_dir(&usb).unwrap(); // a mount point, its disk unplugged
    t.ok(&["vault", "set", "replica", "usb", usb.to_str().unwrap()]);
    for from in ["usb", t.path("gone").to_str().unwrap()] {
        let out = t.run(&["repair", "--from", from]);
        assert_fails(&out, "to repair from (is its disk unplugged?)");
        assert!(!stderr(&out).contains("coffre init"), "{}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    }
    assert_eq!(
        std::fs::read_dir(&usb).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn repair_gives_back_every_pack_when_the_packs_directory_is_gone() {
    let t = TestVault::new();
    let src = replicated(&t);
    std::fs::remove_dir_all(t.vault().join("packs")).unwrap();
    let r = t.path("replica");
    let out = t.run(&["repair", "--from", r.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    t.ok(&["verify"]);
    restores_exactly(&t, &src);
}

/// Damages the root of every point in `vault`'s catalog: one flipped byte, or cut short.
fn damage_every_root(t: &TestVault, vault: &Path, cut: bool) {
    let _ = t.ok(&["--vault", vault.to_str().unwrap(), "points"]);
    let db = rusqlite::Connection::open(vault.join("vault.db")).unwrap();
    let rows: Vec<(i64, Vec<u8>)> = db
        .prepare("SELECT id, root FROM points")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    for (id, mut root) in rows {
        if cut {
            root.truncate(5);
        } else {
            let n = root.len();
            root[n / 2] ^= 0xff;
        }
        db.execute(
            "UPDATE points SET root=?2 WHERE id=?1",
            rusqlite::params![id, root],
        )
        .unwrap();
    }
}

#[test]
fn repair_takes_a_damaged_point_root_from_the_replica_and_never_a_worse_one() {
    for cut in [false, true] {
        let t = TestVault::new();
        let src = replicated(&t);
        let r = t.path("replica");
        // Damaged in the replica only: this vault's good root stays.
        damage_every_root(&t, &r, cut);
        t.ok(&["repair", "--from", r.to_str().unwrap()]);
        t.ok(&["check"]);
        restores_exactly(&t, &src);
        // Damaged here: taken from a whole replica.
        let r2 = t.path("replica2");
        t.ok(&["replicate", "-q", "--to", r2.to_str().unwrap()]);
        damage_every_root(&t, &t.vault(), cut);
        assert_eq!(t.run(&["check"]).status.code(), Some(1));
        let out = t.run(&["repair", "--json", "--from", r2.to_str().unwrap()]);
        assert!(out.status.success(), "{cut}: {}", stderr(&out));
        let out = t.run(&["check"]);
        assert_eq!(out.status.code(), Some(0), "{cut}: {}", stderr(&out));
        t.ok(&["verify"]);
        restores_exactly(&t, &src);
    }
}

#[test]
fn a_point_root_is_not_taken_from_a_vault_that_is_no_copy_of_this_one() {
    let t = TestVault::new();
    let src = replicated(&t);
    // Another vault holding the same files: its points are other points.
    let other = t.path("other");
    t.ok(&["--vault", other.to_str().unwrap(), "init"]);
    t.ok(&[
        "--vault",
        other.to_str().unwrap(),
        "backup",
        "-q",
        "--item",
        "a",
        src.to_str().unwrap(),
    ]);
    damage_every_root(&t, &t.vault(), false);
    let out = t.run(&["repair", "--from", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(t.run(&["check"]).status.code(), Some(1));
}

/// Flips 16 bytes in the middle of every pack of the vault.
fn flip_every_pack(t: &TestVault) {
    for p in std::fs::read_dir(t.vault().join("packs")).unwrap() {
        let p = p.unwrap().path();
        if p.extension().is_some_and(|x| x == "pack") {
            let mut b = std::fs::read(&p).unwrap();
            let mid = b.len() / 2;
            for x in &mut b[mid..mid + 16] {
                *x ^= 0x5a;
            }
            std::fs::write(&p, b).unwrap();
        }
    }
}

#[test]
fn a_repair_killed_before_its_commit_is_run_again_to_a_clean_vault() {
    let t = TestVault::new();
    let src = replicated(&t);
    flip_every_pack(&t);
    damage_every_tree(&t);
    assert_eq!(t.run(&["verify"]).status.code(), Some(1));
    let r = t.path("replica");
    // Killed at the trees' commit, then writing the chunks' pack, then at the chunks' commit.
    for at in ["before-commit", "pack-sealed", "before-commit"] {
        let out = t
            .cmd()
            .args(["repair", "--from", r.to_str().unwrap()])
            .env("COFFRE_CRASH_AT", at)
            .output_within();
        assert_eq!(out.status.code(), None, "{at}: killed: {}", stderr(&out));
    }
    let out = t.run(&["repair", "--json", "--from", r.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = t.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    restores_exactly(&t, &src);
}

#[test]
fn a_mount_of_the_vault_reads_exact_files_after_a_repair_beside_it() {
    let t = TestVault::new();
    let src = replicated(&t);
    let m = MountGuard::start(&t, &[]);
    flip_every_pack(&t);
    assert_eq!(t.run(&["verify"]).status.code(), Some(1));
    let r = t.path("replica");
    t.ok(&["repair", "--from", r.to_str().unwrap()]);
    assert_same(&snapshot(&src, false), &snapshot(&m.latest("a"), false));
    drop(m);
    t.ok(&["verify"]);
}

#[test]
fn repair_before_verify_changes_nothing_and_points_to_verify() {
    let t = TestVault::new();
    let src = replicated(&t);
    flip_every_pack(&t);
    let r = t.path("replica");
    let packs = std::fs::read_dir(t.vault().join("packs")).unwrap().count();
    // Flipped bytes in a pack of the right size are found only by reading them back.
    let out = t.ok(&["repair", "--from", r.to_str().unwrap()]);
    assert!(
        out.contains("nothing to repair") && out.contains("coffre verify"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_dir(t.vault().join("packs")).unwrap().count(),
        packs
    );
    assert_eq!(t.run(&["verify"]).status.code(), Some(1));
    t.ok(&["repair", "--from", r.to_str().unwrap()]);
    t.ok(&["verify"]);
    restores_exactly(&t, &src);
}

/// A point three days old of `item`: the default policy makes the item due now.
fn old_point(t: &TestVault, item: &str, src: &Path) {
    let old = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(72)).to_string();
    t.ok(&[
        "backup",
        "-q",
        "--item",
        item,
        src.to_str().unwrap(),
        "--time",
        &old,
    ]);
}

#[test]
fn backup_due_does_not_create_an_unplugged_replica_on_the_wrong_disk() {
    let t = TestVault::new();
    t.ok(&["init"]);
    let src = t.path("src");
    write(&src.join("f"), &noise(100_000, 3));
    // `usb` is a mount point whose disk is unplugged (an empty directory), `nas` a directory
    // under one that is gone; `home` holds a replica already.
    let (usb, nas, home) = (t.path("usb"), t.path("nas/coffre"), t.path("home"));
    std::fs::create_dir(&usb).unwrap();
    for (name, dir) in [("usb", &usb), ("nas", &nas), ("home", &home)] {
        t.ok(&["vault", "set", "replica", name, dir.to_str().unwrap()]);
    }
    old_point(&t, "a", &src);
    t.ok(&["replicate", "-q", "--to", "home"]);
    let out = t.run(&["backup", "--due", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    for name in ["usb", "nas"] {
        assert!(
            err.contains(&format!("error: replicate to replica \"{name}\" failed"))
                && err.contains("unplugged"),
            "{err}"
        );
    }
    assert_eq!(err.lines().count(), 2, "one line each: {err}");
    assert!(!Vault::exists_at(&usb) && !nas.exists(), "nothing written");
    assert_eq!(std::fs::read_dir(&usb).unwrap().count(), 0);
    let rep = json(&String::from_utf8_lossy(&out.stdout));
    let home_rep = rep["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "home")
        .unwrap()
        .clone();
    assert_eq!(home_rep["report"]["points_added"], 1, "{rep}");
    // `replicate --to NAME` still creates a replica on first use.
    t.ok(&["replicate", "-q", "--to", "usb"]);
    assert!(Vault::exists_at(&usb));
}

#[test]
fn backup_due_no_wait_does_not_wait_for_a_replicas_lock() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), &noise(100_000, 3));
    old_point(&t, "a", &src);
    let r = t.path("replica");
    t.ok(&["vault", "set", "replica", "r", r.to_str().unwrap()]);
    t.ok(&["replicate", "-q", "--to", "r"]);
    // Another replicate into the replica, paused while it holds the replica's lock.
    write(&src.join("g"), &noise(100_000, 4));
    t.backup("b", &src);
    let go = t.path("go");
    let mut held = t.cmd();
    held.args(["replicate", "-q", "--to", "r"]).env(
        "COFFRE_TEST_PAUSE",
        format!("replicate-pack-copied:{}", go.display()),
    );
    let child = std::thread::spawn(move || {
        run_with_deadline(&mut held, std::time::Duration::from_secs(120))
    });
    let reached = t.path("go.reached");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reached.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the replicate never paused"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    old_point(&t, "c", &src);
    let mut due = t.cmd();
    due.args(["backup", "--due", "--no-wait"]);
    let out = run_with_deadline(&mut due, std::time::Duration::from_secs(30));
    write(&go, b"");
    assert!(child.join().unwrap().status.success());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: replicate to replica \"r\" failed"),
        "{}",
        stderr(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("point "),
        "the backups were still made"
    );
}

/// Whether `dir` holds a vault.
struct Vault;

impl Vault {
    fn exists_at(dir: &Path) -> bool {
        dir.join("vault.db").exists()
    }
}
