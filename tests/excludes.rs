//! End-to-end: the exclude options of `backup --item NAME PATH` (gitignore patterns through the
//! `ignore` crate, `--iexclude`, `--exclude-file`, `--exclude-caches`, `--exclude-if-present`,
//! `--exclude-larger-than`), stored with the item and reused by `coffre backup NAME`; and
//! `backup --dry-run -v`, which lists what would be read and writes nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;

const CACHEDIR_TAG: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n";

/// Every path under `root`, relative, directories with a trailing `/`.
fn paths(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.symlink_metadata().unwrap().is_dir() {
                out.insert(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn assert_usage(out: &std::process::Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A tree with something for every exclude option.
fn excludes_tree(src: &Path) {
    for (p, data) in [
        ("keep.txt", &b"keep"[..]),
        ("a.tmp", b"tmp"),
        ("sub/b.tmp", b"tmp"),
        ("sub/keep.tmp", b"re-included by !keep.tmp"),
        ("Photo.JPG", b"case"),
        ("notes.jpg.txt", b"not a jpg"),
        ("build/out.o", b"dir only"),
        ("sub/build", b"a file named build: kept"),
        ("m.o", b"brace"),
        ("m.a", b"brace"),
        ("m.c", b"kept"),
        ("top/only/x", b"anchored /top/only"),
        ("deep/top/only/x", b"not anchored here"),
        ("cache/CACHEDIR.TAG", CACHEDIR_TAG),
        ("cache/data", b"cached"),
        ("cache/inner/more", b"cached"),
        ("fake/CACHEDIR.TAG", b"no signature"),
        ("fake/data", b"kept: the tag is not valid"),
        ("tagged/.nobackup", b""),
        ("tagged/data", b"left out"),
        ("headed/.keepout", b"NOBACKUP please"),
        ("headed/data", b"left out"),
        ("unheaded/.keepout", b"something else"),
        ("unheaded/data", b"kept: the tag lacks the header"),
        ("small.bin", &[7u8; 1000]),
    ] {
        write(&src.join(p), data);
    }
    write(&src.join("big.bin"), &noise(2 << 20, 1));
}

#[test]
fn every_exclude_option_is_applied_stored_and_reused() {
    let t = TestVault::new();
    let src = t.path("src");
    excludes_tree(&src);
    let exfile = t.path("excludes.txt");
    std::fs::write(
        &exfile,
        "# patterns, one a line\n*.tmp\n!keep.tmp\n\n*.{o,a}\n",
    )
    .unwrap();
    let top = format!("{}/top/only", src.display()); // absolute: anchored at the source
    t.ok(&[
        "backup",
        "--item",
        "x",
        src.to_str().unwrap(),
        "--exclude-file",
        exfile.to_str().unwrap(),
        "--exclude",
        "build/",
        "--exclude",
        &top,
        "--iexclude",
        "*.jpg",
        "--exclude-caches",
        "--exclude-if-present",
        ".nobackup",
        "--exclude-if-present",
        ".keepout:NOBACKUP",
        "--exclude-larger-than",
        "1M",
    ]);
    let expected = set(&[
        "keep.txt",
        "sub/",
        "sub/keep.tmp",
        "sub/build",
        "notes.jpg.txt",
        "m.c",
        "top/",
        "deep/",
        "deep/top/",
        "deep/top/only/",
        "deep/top/only/x",
        "cache/",
        "cache/CACHEDIR.TAG",
        "fake/",
        "fake/CACHEDIR.TAG",
        "fake/data",
        "tagged/",
        "tagged/.nobackup",
        "headed/",
        "headed/.keepout",
        "unheaded/",
        "unheaded/.keepout",
        "unheaded/data",
        "small.bin",
    ]);
    let dst = t.path("dst1");
    t.restore("x", &dst);
    assert_eq!(paths(&dst), expected);

    // The stored definition shows every rule, and `backup x` applies them again; the exclude
    // file is read again at every backup.
    let show: serde_json::Value =
        serde_json::from_str(&t.ok(&["item", "show", "x", "--json"])).unwrap();
    let source = &show["source"];
    assert_eq!(source["excludes"], serde_json::json!(["build/", top]));
    assert_eq!(source["iexcludes"], serde_json::json!(["*.jpg"]));
    assert_eq!(source["exclude_files"], serde_json::json!([exfile]));
    assert_eq!(source["exclude_caches"], true);
    assert_eq!(
        source["exclude_if_present"],
        serde_json::json!([".nobackup", ".keepout:NOBACKUP"])
    );
    assert_eq!(source["exclude_larger_than"], 1 << 20);
    let human = t.ok(&["item", "show", "x"]);
    assert!(human.contains("--exclude-caches"), "{human}");
    assert!(human.contains("--iexclude *.jpg"), "{human}");
    write(&src.join("new/c.tmp"), b"tmp");
    write(&src.join("new/d.log"), b"log");
    write(&src.join("new/e.txt"), b"kept");
    write(&src.join("cache/newer"), b"cached");
    std::fs::write(&exfile, "*.tmp\n!keep.tmp\n*.{o,a}\n*.log\n").unwrap();
    t.ok(&["backup", "x"]);
    let dst = t.path("dst2");
    t.restore("x", &dst);
    let mut expected = expected;
    expected.extend(set(&["new/", "new/e.txt"]));
    assert_eq!(paths(&dst), expected);
}

#[test]
fn bad_exclude_options_are_usage_errors_and_change_nothing() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"x");
    let s = src.to_str().unwrap();
    let out = t.run(&["backup", "--item", "x", s, "--exclude-larger-than", "10X"]);
    assert_usage(&out, "--exclude-larger-than");
    let out = t.run(&["backup", "--item", "x", s, "--exclude", "{a,b"]);
    assert_usage(&out, "bad --exclude pattern");
    let out = t.run(&["backup", "--item", "x", s, "--iexclude", "[z"]);
    assert_usage(&out, "bad --exclude pattern");
    let missing = t.path("missing.txt");
    let out = t.run(&[
        "backup",
        "--item",
        "x",
        s,
        "--exclude-file",
        missing.to_str().unwrap(),
    ]);
    assert_usage(&out, "cannot read exclude file");
    let out = t.run(&["backup", "--item", "x", s, "--exclude-if-present", "a/b"]);
    assert_usage(&out, "file name");
    assert!(!t.vault().exists(), "a refused backup created the vault");
    t.ok(&["backup", "--item", "x", s]);
    for opt in [
        &["--exclude-caches"][..],
        &["--iexclude", "*.x"],
        &["--exclude-file", "f"],
        &["--exclude-if-present", "n"],
        &["--exclude-larger-than", "1K"],
    ] {
        let mut args = vec!["backup", "x"];
        args.extend_from_slice(opt);
        let out = t.run(&args);
        assert_usage(&out, &format!("{} does not apply", opt[0]));
    }
    // An exclude file that went away fails the backup of the item (one line, exit 1) and keeps
    // its last point the newest.
    let exfile = t.path("ex.txt");
    std::fs::write(&exfile, "*.tmp\n").unwrap();
    t.ok(&[
        "backup",
        "--item",
        "y",
        s,
        "--exclude-file",
        exfile.to_str().unwrap(),
    ]);
    std::fs::remove_file(&exfile).unwrap();
    let out = t.run(&["backup", "y"]);
    assert_fails(&out, "cannot read exclude file");
    assert_eq!(t.points("y").len(), 1);
}

/// Every file under the vault with its size and content, to prove a dry run wrote nothing.
/// (`vault.db-shm` is SQLite's shared-memory index, rebuilt by every reader, not data.)
fn vault_files(v: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for p in paths(v) {
        if p.ends_with('/') || p.ends_with("-shm") {
            out.insert(p, Vec::new());
            continue;
        }
        out.insert(p.clone(), std::fs::read(v.join(&p)).unwrap());
    }
    out
}

fn listed(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .filter(|l| l.starts_with("+ ") || l.starts_with("M "))
        .map(str::to_string)
        .collect()
}

#[test]
fn dry_run_lists_what_would_be_read_and_writes_nothing() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("a.txt"), b"aaaa");
    write(&src.join("d/b.txt"), b"bbbbbbbb");
    write(&src.join("skip.tmp"), b"left out");
    write(&src.join("empty"), b"");
    let s = src.to_str().unwrap();
    let abs = |p: &str| format!("{s}/{p}");

    // No vault yet: a dry run does not create one; everything is new.
    let out = t.ok(&[
        "backup",
        "--item",
        "x",
        s,
        "--exclude",
        "*.tmp",
        "--dry-run",
        "-v",
    ]);
    assert_eq!(
        listed(&out),
        set(&[
            &format!("+ {}", abs("a.txt")),
            &format!("+ {}", abs("d/b.txt")),
            &format!("+ {}", abs("empty")),
        ])
    );
    assert!(out.contains("would back up 3 files, 2 dirs"), "{out}");
    assert!(out.contains("nothing was written"), "{out}");
    assert!(!t.vault().exists(), "the dry run created the vault");

    t.ok(&["backup", "--item", "x", s, "--exclude", "*.tmp"]);
    write(&src.join("a.txt"), b"aaaa, longer now");
    write(&src.join("d/new.txt"), b"new");
    write(&src.join("new.tmp"), b"still left out");
    let before = vault_files(&t.vault());
    let out = t.ok(&["backup", "x", "--dry-run", "-v"]);
    let lines = listed(&out);
    // New and changed files are listed; unchanged ones only when the files cache cannot trust
    // them (written within 2 s of the previous backup: read again, so listed as changed).
    assert!(lines.contains(&format!("+ {}", abs("d/new.txt"))), "{out}");
    assert!(lines.contains(&format!("M {}", abs("a.txt"))), "{out}");
    let allowed = set(&[
        &format!("+ {}", abs("d/new.txt")),
        &format!("M {}", abs("a.txt")),
        &format!("M {}", abs("d/b.txt")),
        &format!("M {}", abs("empty")),
    ]);
    assert!(lines.is_subset(&allowed), "{out}");
    assert!(out.contains("would back up 4 files"), "{out}");
    // Nothing changed in the vault: no point, no pack, no catalog change.
    assert_eq!(
        vault_files(&t.vault()),
        before,
        "the dry run wrote to the vault"
    );
    assert_eq!(t.points("x").len(), 1);

    // --json: the same counts for scripts.
    let v: serde_json::Value =
        serde_json::from_str(&t.ok(&["backup", "x", "--dry-run", "--json"])).unwrap();
    assert_eq!(v[0]["item"], "x");
    assert_eq!(v[0]["files"], 4);
    assert_eq!(v[0]["new_files"], 1);
    assert_eq!(vault_files(&t.vault()), before);

    // A real backup with -v lists the same files, then makes the point.
    let out = t.ok(&["backup", "x", "-v"]);
    let real = listed(&out);
    assert!(real.contains(&format!("+ {}", abs("d/new.txt"))), "{out}");
    assert!(real.contains(&format!("M {}", abs("a.txt"))), "{out}");
    assert!(real.is_subset(&allowed), "{out}");
    assert_eq!(t.points("x").len(), 2);
    // Without -v, no listing.
    write(&src.join("d/newer.txt"), b"newer");
    let out = t.ok(&["backup", "x"]);
    assert!(listed(&out).is_empty(), "{out}");

    // A dry run of a disk item is a usage error.
    let img = t.path("d.img");
    write(&img, &[1u8; 4096]);
    t.ok(&["backup-disk", "--item", "disk", img.to_str().unwrap()]);
    let out = t.run(&["backup", "disk", "--dry-run"]);
    assert_usage(&out, "--dry-run applies to files items");
}
