//! End-to-end: back up a generated tree with every kind of entry and metadata, restore it with the
//! real binary, and compare everything `lstat`, xattrs and content can tell.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};

use common::*;

#[test]
fn every_kind_of_entry_round_trips_exactly() {
    let t = TestVault::new();
    let src = t.path("src");
    make_tree(&src);
    let point = t.backup("tree", &src);
    assert_eq!(point["warnings"].as_array().unwrap().len(), 0, "{point}");
    let files = point["point"]["files"].as_u64().unwrap();
    assert!(files >= 15, "{point}");

    let dst = t.path("restored");
    t.restore("tree", &dst);
    let mut want = snapshot(&src, true);
    // The socket is not captured.
    want.remove(b"sock".as_slice());
    let got = snapshot(&dst, true);
    assert_same(&want, &got);

    // Independent spot checks (path-based libc calls, not the library's helpers).
    assert_eq!(
        xattrs(&dst.join("small.txt")),
        vec![(b"user.comment".to_vec(), b"kept\0with nul".to_vec())]
    );
    assert!(
        xattrs(&dst.join("dir"))
            .iter()
            .any(|(k, _)| k == b"system.posix_acl_default")
    );
    assert!(
        xattrs(&dst.join("links/a"))
            .iter()
            .any(|(k, _)| k == b"system.posix_acl_access")
    );
    assert_eq!(data_map(&dst.join("sparse")), data_map(&src.join("sparse")));
    let m = std::fs::symlink_metadata(dst.join("small.txt")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert_eq!(m.mode() & 0o7777, 0o644);
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
    }
    assert_eq!(
        std::fs::metadata(dst.join("modes/suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    // A name that is not UTF-8 can be chosen on the command line.
    let one = t.path("one");
    let out = t
        .cmd()
        .args(["restore", "tree"])
        .arg(std::ffi::OsStr::from_bytes(b"caf\xe9-\xff\xfe"))
        .args(["--to", one.to_str().unwrap()])
        .output_within();
    assert!(out.status.success(), "{}", stderr(&out));
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9-\xff\xfe");
    assert_eq!(std::fs::read(one.join(odd)).unwrap(), b"latin-1 name");
    // Holes come back as holes: the restored sparse file allocates about what the source did.
    let (a, b) = (
        std::fs::metadata(src.join("sparse")).unwrap(),
        std::fs::metadata(dst.join("sparse")).unwrap(),
    );
    assert!(
        b.blocks() <= a.blocks() + 64,
        "{} vs {}",
        b.blocks(),
        a.blocks()
    );
    assert_eq!(std::fs::metadata(dst.join("all-hole")).unwrap().blocks(), 0);
    // Hard links share one inode in the restore.
    let ino = |p: &str| std::fs::metadata(dst.join(p)).unwrap().ino();
    assert_eq!(ino("links/a"), ino("links/b"));
    assert_eq!(ino("links/a"), ino("dir/c-link"));
    assert_eq!(std::fs::metadata(dst.join("links/a")).unwrap().nlink(), 3);
}

#[test]
fn restoring_chosen_paths_and_older_points() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("a/one.txt"), b"one, first version");
    write(&src.join("b/two.txt"), b"two");
    let p1 = t.backup("item", &src)["point"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    write(&src.join("a/one.txt"), b"one, second version!");
    t.backup("item", &src);

    let dst = t.path("out");
    t.ok(&[
        "restore",
        &format!("item@{p1}"),
        "a/one.txt",
        "b",
        "--to",
        dst.to_str().unwrap(),
    ]);
    // Each path is restored under its own path inside the point.
    assert_eq!(
        std::fs::read(dst.join("a/one.txt")).unwrap(),
        b"one, first version"
    );
    assert_eq!(std::fs::read(dst.join("b/two.txt")).unwrap(), b"two");
    assert!(!dst.join("one.txt").exists());

    let out = t.run(&[
        "restore",
        "item",
        "no/such/path",
        "--to",
        dst.to_str().unwrap(),
    ]);
    assert_fails(&out, "not in this recovery point");
}

#[test]
fn restore_never_follows_a_symlink_inside_the_target() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("sub/file"), b"from the vault");
    t.backup("item", &src);
    // The target holds a symlink where the point has a directory, pointing outside.
    let outside = t.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let dst = t.path("dst");
    std::fs::create_dir(&dst).unwrap();
    symlink(&outside, dst.join("sub")).unwrap();
    t.restore("item", &dst);
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "wrote through the symlink"
    );
    assert!(std::fs::symlink_metadata(dst.join("sub")).unwrap().is_dir());
    assert_eq!(
        std::fs::read(dst.join("sub/file")).unwrap(),
        b"from the vault"
    );
}

#[test]
fn a_tampered_catalog_cannot_steer_a_restore_out_of_its_target() {
    use coffre::vault::format::{Entry, Kind, TreeId, encode_root, encode_tree};
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("a"), b"a");
    t.backup("item", &src);
    // Forge a point whose tree names an entry "..", "x/y" or "." (with correct hashes, so only
    // the name check can stop it).
    let conn = rusqlite::Connection::open(t.vault().join("vault.db")).unwrap();
    let item: i64 = conn
        .query_row("SELECT id FROM items", [], |r| r.get(0))
        .unwrap();
    for (i, bad) in [&b".."[..], b"x/y", b"."].iter().enumerate() {
        let evil = Entry {
            name: bad.to_vec(),
            kind: Some(Kind::Dir),
            mode: 0o755,
            ..Default::default()
        };
        let tree = encode_tree(&[evil]);
        let id = TreeId::of(&tree);
        conn.execute(
            "INSERT OR IGNORE INTO trees(id, data) VALUES (?1, ?2)",
            rusqlite::params![&id.0[..], zstd::bulk::compress(&tree, 3).unwrap()],
        )
        .unwrap();
        let root = Entry {
            kind: Some(Kind::Dir),
            mode: 0o755,
            subtree: Some(id),
            ..Default::default()
        };
        conn.execute(
            "INSERT INTO points(pid, item, time, root, files, dirs, logical_bytes, new_chunks,
                new_bytes, stored_bytes, warnings, duration_ms) VALUES (?1, ?2, ?3, ?4, 0, 0, 0, 0, 0, 0, 0, 0)",
            rusqlite::params![format!("evil000{i}"), item, 4_000_000_000_000_000_000i64 + i as i64, encode_root(&root)],
        )
        .unwrap();
        let dst = t.path(&format!("dst{i}"));
        let out = t.run(&[
            "restore",
            &format!("item@evil000{i}"),
            "--to",
            dst.to_str().unwrap(),
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("unsafe entry name"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Nothing was created beside the targets.
    let mut names: Vec<String> = std::fs::read_dir(t.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["dst0", "dst1", "dst2", "src", "vault"]);
}
