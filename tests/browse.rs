//! End-to-end: browsing points without a mount (`ls`, `find`, `diff`, `dump`), every way of
//! naming a point, JSON output and JSON errors, through the real binaries. `diff` is checked
//! against `diff -rq` of the two source trees, `dump` against `tar -x` of its stream.

mod common;

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output};

use common::{
    MountGuard, OutputWithin, TestVault, is_root, json, json_ns, noise, set_mtime, set_xattr,
    snapshot, stderr, text, write,
};
use serde_json::Value;

/// Runs coffre with extra environment variables.
fn run_env(t: &TestVault, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = t.cmd();
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args).output_within()
}

fn ok_env(t: &TestVault, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = run_env(t, env, args);
    assert!(
        out.status.success(),
        "coffre {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// Asserts a failure with exit `code` whose stderr holds `needle`.
fn fails(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "stderr: {}", stderr(out));
    assert!(stderr(out).contains(needle), "stderr: {}", stderr(out));
    assert!(!stderr(out).contains("panicked"), "{}", stderr(out));
}

/// A backup recorded as taken at `secs` (Unix seconds).
fn backup_at(t: &TestVault, secs: i64, args: &[&str]) -> Value {
    let mut all = vec!["backup", "--json"];
    all.extend_from_slice(args);
    let out = ok_env(t, &[("COFFRE_TEST_POINT_TIME", &secs.to_string())], &all);
    json(&out)[0]["point"].clone()
}

#[test]
fn ls_lists_a_point_with_every_option() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("a.txt"), b"alpha");
    std::fs::set_permissions(src.join("a.txt"), PermissionsExt::from_mode(0o640)).unwrap();
    write(&src.join("docs/b.md"), b"bee");
    write(&src.join("docs/sub/c.md"), b"sea");
    symlink("a.txt", src.join("link")).unwrap();
    set_mtime(&src.join("a.txt"), 1_600_000_000, 500_000_000);
    t.backup("home", &src);
    let utc = [("TZ", "UTC")];

    assert_eq!(lines(&t.ok(&["ls", "home"])), ["a.txt", "docs/", "link"]);
    assert_eq!(
        lines(&t.ok(&["ls", "home", "docs"])),
        ["docs/b.md", "docs/sub/"]
    );
    assert_eq!(
        lines(&t.ok(&["ls", "home", "/docs/"])),
        ["docs/b.md", "docs/sub/"]
    );
    let all = ["docs/b.md", "docs/sub/", "docs/sub/c.md"];
    assert_eq!(lines(&t.ok(&["ls", "home", "docs", "--recursive"])), all);
    assert_eq!(lines(&t.ok(&["ls", "-R", "home", "docs"])), all);
    assert_eq!(lines(&t.ok(&["ls", "home", "a.txt"])), ["a.txt"]);

    let long = ok_env(&t, &utc, &["ls", "home", "-l"]);
    let l = lines(&long);
    assert!(l[0].starts_with("-rw-r----- "), "{long}");
    assert!(l[0].contains(" 5  2020-09-13 12:26:40  a.txt"), "{long}");
    assert!(l[1].starts_with("drwx"), "{long}");
    assert!(
        l[2].starts_with("lrwxrwxrwx ") && l[2].ends_with("link -> a.txt"),
        "{long}"
    );
    // Tables show local time.
    let tokyo = ok_env(&t, &[("TZ", "Asia/Tokyo")], &["ls", "home", "-l", "a.txt"]);
    assert!(tokyo.contains("2020-09-13 21:26:40"), "{tokyo}");

    let v = json(&t.ok(&["ls", "home", "--json", "--recursive"]));
    let points = t.points("home");
    assert_eq!(v["point"]["id"], points[0]["id"]);
    assert_eq!(v["point"]["time"], points[0]["time"]);
    assert_eq!(v["point"]["mount_path"], points[0]["mount_path"]);
    let mp = v["point"]["mount_path"].as_str().unwrap();
    assert!(mp.starts_with("items/home/20") && mp.ends_with('Z'), "{mp}");
    let e = &v["entries"];
    assert_eq!(e.as_array().unwrap().len(), 6);
    assert_eq!(e[0]["path"], "a.txt");
    assert_eq!(e[0]["kind"], "file");
    assert_eq!(e[0]["mode"], "0640");
    assert_eq!(e[0]["size"], 5);
    assert_eq!(e[0]["mtime"], "2020-09-13T12:26:40.5Z");
    assert_eq!(e[1]["kind"], "dir");
    assert_eq!(e[5]["path"], "link");
    assert_eq!(e[5]["target"], "a.txt");

    fails(&t.run(&["ls", "home", "nope"]), 1, "has no \"nope\"");
    fails(&t.run(&["ls", "home", "a.txt/x"]), 1, "has no \"a.txt/x\"");
    fails(&t.run(&["ls", "nosuch"]), 1, "no item named \"nosuch\"");
    fails(&t.run(&["ls", "home@ffffffff"]), 1, "no recovery point");
}

#[test]
fn find_matches_names_and_paths_across_points_newest_first() {
    let t = TestVault::new();
    let a = t.path("a");
    write(&a.join("x.c"), b"x");
    write(&a.join("src/y.c"), b"yy");
    write(&a.join("src/z.h"), b"z");
    let p1 = backup_at(&t, 1_795_442_405, &["--item", "a", a.to_str().unwrap()]);
    std::fs::remove_file(a.join("x.c")).unwrap();
    write(&a.join("src/new.c"), b"new");
    let p2 = backup_at(&t, 1_795_442_465, &["a"]);
    let b = t.path("b");
    write(&b.join("w.c"), b"w");
    let p3 = backup_at(&t, 1_795_442_525, &["--item", "b", b.to_str().unwrap()]);
    let id = |p: &Value| p["id"].as_str().unwrap().to_string();

    let out = ok_env(&t, &[("TZ", "UTC")], &["find", "*.c"]);
    let heads: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(heads.len(), 4, "{out}");
    assert!(
        heads[0].starts_with(&format!("b@{} (2026-11-23 14:02:05, items/b/", id(&p3))),
        "{out}"
    );
    assert!(heads[1].starts_with(&format!("a@{} ", id(&p2))), "{out}");
    assert!(heads[2].starts_with(&format!("a@{} ", id(&p1))), "{out}");
    assert_eq!(heads[3], "found 5 entries in 3 of 3 points");
    assert!(
        out.contains("  src/new.c\n") && out.contains("  x.c\n"),
        "{out}"
    );

    let v = json(&t.ok(&["find", "*.c", "a", "--json"]));
    let got: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["point"]["id"].as_str().unwrap().into(),
                m["path"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        (id(&p2), "src/new.c"),
        (id(&p2), "src/y.c"),
        (id(&p1), "src/y.c"),
        (id(&p1), "x.c"),
    ];
    assert_eq!(got, want.map(|(i, p)| (i, p.to_string())));
    assert_eq!(v[1]["size"], 2);
    assert_eq!(v[1]["kind"], "file");
    assert!(json_ns(&v[1]["mtime"]).is_some());
    assert!(json_ns(&v[1]["point"]["time"]).is_some());
    assert_eq!(v[3]["point"]["mount_path"], "items/a/2026-11-23T140005Z");

    // A pattern with a `/` matches the path; braces work; a leading `/` changes nothing.
    let paths = |pattern: &str| -> Vec<String> {
        json(&t.ok(&["find", pattern, "a", "b", "--json"]))
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["path"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        paths("src/*.{c,h}"),
        ["src/new.c", "src/y.c", "src/z.h", "src/y.c", "src/z.h"]
    );
    assert_eq!(paths("/src/y.c"), ["src/y.c", "src/y.c"]);
    assert_eq!(paths("**/z.*"), ["src/z.h", "src/z.h"]);
    assert_eq!(paths("y.?"), ["src/y.c", "src/y.c"]);
    assert_eq!(paths("src"), ["src", "src"]);
    assert!(
        t.ok(&["find", "*.zzz"])
            .ends_with("found 0 entries in 0 of 3 points\n")
    );

    fails(&t.run(&["find", "[", "a"]), 2, "bad pattern \"[\"");
    fails(
        &t.run(&["find", "*.c", "nosuch"]),
        1,
        "no item named \"nosuch\"",
    );
}

/// `diff -rq --no-dereference A B` as (letter, path) pairs, as `coffre diff` names them.
fn diff_r(a: &Path, b: &Path) -> BTreeSet<(char, String)> {
    let out = Command::new("diff")
        .args(["-rq", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output_within();
    let text = String::from_utf8(out.stdout).unwrap();
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());
    let rel = |p: &str, root: &str| {
        p.strip_prefix(root)
            .unwrap()
            .trim_start_matches('/')
            .to_string()
    };
    text.lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix("Only in ") {
                let (dir, name) = rest.split_once(": ").unwrap();
                let (letter, root) = if dir.starts_with(sb) {
                    ('+', sb)
                } else {
                    ('-', sa)
                };
                let d = rel(dir, root);
                (
                    letter,
                    if d.is_empty() {
                        name.to_string()
                    } else {
                        format!("{d}/{name}")
                    },
                )
            } else if l.contains(" while ") {
                // File A/p is a regular file while file B/p is a directory
                let p = l.split_whitespace().nth(1).unwrap();
                ('T', rel(p, sa))
            } else {
                // Files A/p and B/p differ; Symbolic links A/p and B/p differ
                let p = l.split(" and ").next().unwrap().rsplit(' ').next().unwrap();
                ('M', rel(p, sa))
            }
        })
        .collect()
}

/// The change lines of `coffre diff`, and its summary line.
fn coffre_diff(t: &TestVault, args: &[&str]) -> (Vec<(char, String)>, String) {
    let out = t.ok(args);
    let mut l: Vec<&str> = out.lines().collect();
    let summary = l.pop().unwrap().to_string();
    let changes = l
        .iter()
        .map(|l| {
            let (letter, path) = l.split_once("    ").unwrap();
            (
                letter.chars().next().unwrap(),
                path.trim_end_matches('/').to_string(),
            )
        })
        .collect();
    (changes, summary)
}

#[test]
fn diff_agrees_with_diff_r_and_reports_metadata_changes() {
    let t = TestVault::new();
    let a = t.path("A");
    write(&a.join("same.txt"), b"same");
    write(&a.join("edit.txt"), b"before");
    write(&a.join("chmod.txt"), b"mode");
    write(&a.join("gone.txt"), b"bye");
    write(&a.join("gone-dir/x/y.txt"), b"deep");
    write(&a.join("kind"), b"a file, later a directory");
    write(&a.join("sub/keep.txt"), b"keep");
    write(&a.join("sub/big.bin"), &noise(3 << 20, 9));
    write(&a.join("untouched/u.txt"), b"u");
    symlink("same.txt", a.join("link")).unwrap();
    let b = t.path("B");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&a)
            .arg(&b)
            .output_within()
            .status
            .success()
    );
    write(&b.join("edit.txt"), b"after!");
    std::fs::set_permissions(b.join("chmod.txt"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::remove_file(b.join("gone.txt")).unwrap();
    std::fs::remove_dir_all(b.join("gone-dir")).unwrap();
    std::fs::remove_file(b.join("kind")).unwrap();
    write(&b.join("kind/inside"), b"now a directory");
    write(&b.join("sub/added.txt"), b"new");
    write(&b.join("new-dir/n/m.txt"), b"new deep");
    let mut big = noise(3 << 20, 9);
    big[2 << 20] ^= 1;
    write(&b.join("sub/big.bin"), &big);
    std::fs::remove_file(b.join("link")).unwrap();
    symlink("edit.txt", b.join("link")).unwrap();
    t.ok(&["backup", "--item", "t", a.to_str().unwrap()]);
    t.ok(&["backup", "--item", "t", b.to_str().unwrap()]);

    let (changes, summary) = coffre_diff(&t, &["diff", "t@latest~1", "@latest"]);
    // Only what diff -r sees: content changes, type changes, and the top of added or removed
    // subtrees (coffre lists everything under them, as restic does).
    let listed: BTreeSet<(char, String)> = changes.iter().cloned().collect();
    let tops: BTreeSet<(char, String)> = listed
        .iter()
        .filter(|(c, p)| match c {
            '+' | '-' => !listed
                .iter()
                .any(|(d, q)| d == c && p.starts_with(&format!("{q}/"))),
            'U' => false,
            _ => true,
        })
        .cloned()
        .collect();
    assert_eq!(tops, diff_r(&a, &b), "coffre diff: {changes:?}");
    assert!(listed.contains(&('U', "chmod.txt".into())), "{changes:?}");
    assert!(
        listed.contains(&('-', "gone-dir/x/y.txt".into())),
        "{changes:?}"
    );
    assert!(
        listed.contains(&('+', "new-dir/n/m.txt".into())),
        "{changes:?}"
    );
    assert!(
        !listed
            .iter()
            .any(|(_, p)| p.starts_with("untouched") || p == "same.txt")
    );
    // In path order, like restic diff.
    let order: Vec<&String> = changes.iter().map(|(_, p)| p).collect();
    let mut sorted = order.clone();
    sorted.sort_by(|x, y| x.split('/').cmp(y.split('/')));
    assert_eq!(order, sorted);
    let count = |c: char| changes.iter().filter(|(d, _)| *d == c).count();
    let want = format!(
        "{} added, {} removed, {} modified, {} metadata only, {} type changed",
        count('+'),
        count('-'),
        count('M'),
        count('U'),
        count('T')
    );
    assert!(summary.ends_with(&want), "{summary} vs {want}");
    assert_eq!((count('M'), count('T')), (3, 1), "{changes:?}");

    // JSON: the same changes, typed, with both points and the counts.
    let v = json(&t.ok(&["diff", "t@latest~1", "t@latest", "--json"]));
    assert_eq!(v["changes"].as_array().unwrap().len(), changes.len());
    assert_eq!(v["counts"]["modified"], 3);
    assert_eq!(v["counts"]["metadata"], count('U'));
    assert!(
        v["before"]["mount_path"]
            .as_str()
            .unwrap()
            .starts_with("items/t/")
    );
    let chmod = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "chmod.txt")
        .unwrap();
    assert_eq!(chmod["change"], "metadata");
    assert_eq!(
        (
            chmod["before"]["mode"].as_str(),
            chmod["after"]["mode"].as_str()
        ),
        (Some("0644"), Some("0600"))
    );

    // A PATH limits both sides; equal points have no changes.
    let (sub, _) = coffre_diff(&t, &["diff", "t@latest~1", "t@latest", "sub"]);
    assert_eq!(
        sub,
        [
            ('+', "sub/added.txt".to_string()),
            ('M', "sub/big.bin".to_string())
        ]
    );
    let (none, summary) = coffre_diff(&t, &["diff", "t", "t@latest"]);
    assert!(none.is_empty());
    assert!(summary.ends_with("0 added, 0 removed, 0 modified, 0 metadata only, 0 type changed"));
    fails(
        &t.run(&["diff", "t@latest~1", "@latest", "nope"]),
        1,
        "has no \"nope\"",
    );
    fails(
        &t.run(&["diff", "t@latest~5", "@latest"]),
        1,
        "no recovery point \"t@latest~5\"",
    );
}

/// A tree with everything a tar stream must carry: long names and link targets, hard links,
/// special modes, nanosecond times, xattrs, fifos, names that are not UTF-8, multi-chunk data.
fn make_dump_tree(root: &Path) {
    write(&root.join("big.bin"), &noise(5 << 20, 3));
    write(&root.join("text.txt"), &text(200_000, 4));
    let long_dir = root.join("d".repeat(120));
    write(&long_dir.join("f".repeat(255)), b"long path");
    symlink("t".repeat(150), root.join("long-link")).unwrap();
    symlink("text.txt", root.join("link")).unwrap();
    write(&root.join("links/one"), b"linked");
    std::fs::hard_link(root.join("links/one"), root.join("links/two")).unwrap();
    std::fs::hard_link(root.join("links/one"), long_dir.join("three")).unwrap();
    write(&root.join("suid"), b"#!/bin/sh\n");
    std::fs::set_permissions(root.join("suid"), PermissionsExt::from_mode(0o4750)).unwrap();
    std::fs::create_dir(root.join("empty-dir")).unwrap();
    std::fs::set_permissions(root.join("empty-dir"), PermissionsExt::from_mode(0o1770)).unwrap();
    let fifo = common::c_path(&root.join("fifo"));
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    write(
        &root.join(std::ffi::OsStr::from_bytes(b"caf\xe9")),
        b"latin-1",
    );
    set_xattr(&root.join("text.txt"), "user.note", b"kept\0binary");
    set_xattr(&root.join("empty-dir"), "user.dir", b"on a dir");
    if is_root() {
        std::os::unix::fs::lchown(root.join("text.txt"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("link"), Some(4321), Some(8765)).unwrap();
    }
    set_mtime(&root.join("text.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("link"), 1_500_000_000, 1);
    set_mtime(&root.join("links"), 1_400_000_000, 42);
    set_mtime(&long_dir, 1_300_000_000, 0);
    set_mtime(root, 1_200_000_000, 7);
}

#[test]
fn dump_writes_a_file_and_a_tar_stream_that_tar_extracts_exactly() {
    let t = TestVault::new();
    let src = t.path("src");
    make_dump_tree(&src.join("tree"));
    t.backup("home", &src);

    let out = t.run(&["dump", "home", "tree/big.bin"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == std::fs::read(src.join("tree/big.bin")).unwrap());

    let out = t.run(&["dump", "home", "tree"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let archive = t.path("tree.tar");
    std::fs::write(&archive, &out.stdout).unwrap();
    let dest = t.path("dest");
    std::fs::create_dir(&dest).unwrap();
    let x = Command::new("tar")
        .args([
            "-x",
            "-p",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-f",
        ])
        .arg(&archive)
        .arg("-C")
        .arg(&dest)
        .output_within();
    assert!(x.status.success(), "tar: {}", stderr(&x));
    common::assert_same(
        &snapshot(&src.join("tree"), true),
        &snapshot(&dest.join("tree"), true),
    );

    // The root dumps its entries, with relative names.
    let out = t.run(&["dump", "home", "/"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&archive, &out.stdout).unwrap();
    let list = Command::new("tar").arg("-tf").arg(&archive).output_within();
    let names = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        names.starts_with("tree\n") || names.starts_with("tree/\n"),
        "{names}"
    );
    assert!(
        names.contains("tree/links/two") && !names.contains("\n/"),
        "{names}"
    );

    // A tar stream is never written to a terminal (script(1) gives coffre one).
    let tty = Command::new("script")
        .args([
            "-qec",
            &format!("{} dump home tree", env!("CARGO_BIN_EXE_coffre")),
            "/dev/null",
        ])
        .env("COFFRE_VAULT", t.vault())
        .output_within();
    let said = String::from_utf8_lossy(&tty.stdout).into_owned();
    assert_eq!(tty.status.code(), Some(2), "{said}");
    assert!(said.contains("redirect it to a file or a pipe"), "{said}");

    fails(
        &t.run(&["dump", "home", "tree/nope"]),
        1,
        "has no \"tree/nope\"",
    );
    fails(
        &t.run(&["dump", "home@latest~1", "tree"]),
        1,
        "no recovery point",
    );
}

#[test]
fn points_are_named_in_every_form_users_see() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"one");
    // 2026-11-23 14:00:05 UTC twice (one second, two points), then a day later.
    const T: i64 = 1_795_442_405;
    let p1 = backup_at(&t, T, &["--item", "a", src.to_str().unwrap()]);
    write(&src.join("f"), b"two");
    let p2 = backup_at(&t, T, &["a"]);
    write(&src.join("f"), b"three");
    let p3 = backup_at(&t, T + 86_400, &["a"]);
    let id = |p: &Value| p["id"].as_str().unwrap().to_string();
    let (i1, i2, i3) = (id(&p1), id(&p2), id(&p3));
    let tokyo = [("TZ", "Asia/Tokyo")];
    let which = |spec: &str| -> String {
        let v = json(&ok_env(&t, &tokyo, &["ls", &format!("a@{spec}"), "--json"]));
        v["point"]["id"].as_str().unwrap().to_string()
    };
    assert_eq!(which("latest"), i3);
    assert_eq!(which("latest~1"), i2);
    assert_eq!(which("latest~2"), i1);
    assert_eq!(which(&i1), i1);
    let unique = (1..8)
        .map(|n| &i3[..n])
        .find(|p| !i1.starts_with(p) && !i2.starts_with(p))
        .unwrap();
    assert_eq!(which(unique), i3);
    assert_eq!(which("2026-11-23T140005Z"), i1);
    assert_eq!(which(&format!("2026-11-23T140005Z-{i2}")), i2);
    assert_eq!(which("2026-11-24T14:00:05Z"), i3);
    assert_eq!(which("2026-11-24T23:00:05+09:00"), i3);
    // The local time and date tables print (Tokyo is UTC+9).
    let table = ok_env(&t, &tokyo, &["points", "a"]);
    assert!(
        table.contains(&format!("{i3}  a")) && table.contains("2026-11-24 23:00:05"),
        "{table}"
    );
    assert_eq!(which("2026-11-24 23:00:05"), i3);
    assert_eq!(which("2026-11-24T23:00:05"), i3);
    assert_eq!(which("2026-11-24"), i3);

    // Ambiguous input lists the candidates; a point too far back is not found.
    let out = run_env(&t, &tokyo, &["ls", "a@2026-11-23T14:00:05Z"]);
    fails(&out, 1, "ambiguous");
    assert!(
        stderr(&out).contains(&i1) && stderr(&out).contains(&i2),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("2026-11-23 23:00:05"),
        "{}",
        stderr(&out)
    );
    fails(
        &run_env(&t, &tokyo, &["ls", "a@2026-11-23"]),
        1,
        "ambiguous",
    );
    fails(
        &t.run(&["ls", "a@latest~3"]),
        1,
        "no recovery point \"a@latest~3\"",
    );

    // Every command that takes a point reads the same forms.
    let to = t.path("r");
    t.ok(&["restore", "a@latest~2", "--to", to.to_str().unwrap()]);
    assert_eq!(std::fs::read(to.join("f")).unwrap(), b"one");
    let f = t.run(&["dump", "a@2026-11-24T14:00:05Z", "f"]);
    assert_eq!(f.stdout, b"three");

    // JSON: RFC 3339 times and mount paths that exist in a mount.
    let points = t.points("a");
    let paths: Vec<&str> = points
        .iter()
        .map(|p| p["mount_path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "items/a/2026-11-23T140005Z".to_string(),
            format!("items/a/2026-11-23T140005Z-{i2}"),
            "items/a/2026-11-24T140005Z".to_string()
        ]
    );
    assert_eq!(points[2]["time"], "2026-11-24T14:00:05Z");
    t.ok(&["forget", "a@latest~1"]);
    let deleted = json(&t.ok(&["points", "--deleted", "--json"]));
    assert_eq!(deleted[0]["id"], i2.as_str());
    assert_eq!(deleted[0]["mount_path"], "deleted/a/2026-11-23T140005Z");
    assert!(
        json_ns(&deleted[0]["purge_at"]).unwrap() > json_ns(&deleted[0]["deleted_at"]).unwrap()
    );
    {
        let m = MountGuard::start(&t, &[]);
        for p in t.points("a").iter().chain(deleted.as_array().unwrap()) {
            let dir = m.dir.join(p["mount_path"].as_str().unwrap());
            assert!(
                dir.join("f").is_file(),
                "{} is not in the mount",
                dir.display()
            );
        }
    }
    t.ok(&["undelete", "a@2026-11-23T140005Z"]);
    assert_eq!(t.points("a").len(), 3);
}

#[test]
fn the_sidecar_reads_the_same_point_forms() {
    let t = TestVault::new();
    let img = t.path("disk.raw");
    std::fs::write(&img, noise(1 << 20, 1)).unwrap();
    t.ok(&["backup-disk", "--item", "d", img.to_str().unwrap()]);
    let first = std::fs::read(&img).unwrap();
    std::fs::write(&img, noise(1 << 20, 2)).unwrap();
    t.ok(&["backup-disk", "--item", "d", img.to_str().unwrap()]);
    let out = t.path("out.raw");
    let r = common::sidecar(&t, &["disk", "d@latest~1", "--to", out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(std::fs::read(&out).unwrap() == first);
    let r = common::sidecar(
        &t,
        &["disk", "d@latest~2", "--to", t.path("x").to_str().unwrap()],
    );
    fails(&r, 1, "no recovery point \"d@latest~2\"");
}

#[test]
fn errors_under_json_are_json_with_the_same_exit_codes() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"x");
    t.backup("home", &src);
    let check = |args: &[&str], code: i32, needle: &str| {
        let out = t.run(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
        let v = json(stderr(&out).trim());
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{args:?}: {v}"
        );
    };
    check(
        &["points", "nosuch", "--json"],
        1,
        "no item named \"nosuch\"",
    );
    check(&["ls", "home@ffffffff", "--json"], 1, "no recovery point");
    check(&["find", "[", "--json"], 2, "bad pattern");
    check(
        &["ls", "--json"],
        2,
        "required arguments were not provided: <NAME[@POINT]>",
    );
    check(
        &["diff", "home", "--json", "--bogus"],
        2,
        "unexpected argument '--bogus'",
    );
    // Without --json, the usual one line.
    fails(&t.run(&["points", "nosuch"]), 1, "error: no item named");
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let t = TestVault::new();
    let src = t.path("src");
    for i in 0..4000 {
        write(
            &src.join(format!("dir{}/file-with-a-longish-name-{i:05}.c", i % 10)),
            b"x",
        );
    }
    t.backup("home", &src);
    for args in [
        &["ls", "home", "-R", "-l"][..],
        &["find", "*.c"],
        &["dump", "home", "/"],
    ] {
        let mut child = t
            .cmd()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut head = [0u8; 100];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
        drop(child.stdout.take());
        let Some(status) = common::wait_within(&mut child, std::time::Duration::from_secs(60))
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("coffre {args:?} did not end after its reader left");
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        // Ended like any Unix tool: by SIGPIPE (or done), with nothing on stderr.
        use std::os::unix::process::ExitStatusExt;
        let quiet = status.success() || status.signal() == Some(libc::SIGPIPE);
        assert!(quiet && err.is_empty(), "{args:?}: {status:?} {err}");
    }
}
