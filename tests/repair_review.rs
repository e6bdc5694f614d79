//! Hostile cases of `repair --from` and of the replicas `backup --due` brings up to date: a
//! chunk whose pack row the catalog lost is fetched back; a byte copy of the vault is a replica
//! to repair from; an unplugged replica is not created anew on the wrong disk; `--no-wait`
//! never waits for a replica's lock.

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
