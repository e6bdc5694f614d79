//! End-to-end: back up a generated tree with every kind of entry and metadata, restore it with the
//! real binary, and compare everything `lstat`, xattrs and content can tell.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use common::*;

/// Builds the tree of issue 2, item 5. Returns nothing; everything is under `root`.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    write(&root.join("small.txt"), b"hello, vault\n");
    write(&root.join("empty"), b"");
    // Several chunks, some compressible, some not.
    let mut big = text(3 << 20, 1);
    big.extend(noise(2 << 20, 2));
    write(&root.join("dir/big.bin"), &big);
    write(&root.join("dir/dup-of-small.txt"), b"hello, vault\n");
    // Modes: setuid, setgid, sticky, odd permissions.
    write(&root.join("modes/suid"), b"#!/bin/sh\n");
    std::fs::set_permissions(root.join("modes/suid"), PermissionsExt::from_mode(0o4755)).unwrap();
    write(&root.join("modes/sgid"), b"x");
    std::fs::set_permissions(root.join("modes/sgid"), PermissionsExt::from_mode(0o2710)).unwrap();
    std::fs::create_dir(root.join("modes/sticky")).unwrap();
    std::fs::set_permissions(root.join("modes/sticky"), PermissionsExt::from_mode(0o1777)).unwrap();
    write(&root.join("modes/none"), b"secret");
    std::fs::set_permissions(root.join("modes/none"), PermissionsExt::from_mode(0o000)).unwrap();
    // Symlinks: relative, absolute, dangling.
    symlink("../small.txt", root.join("dir/rel-link")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    // Hard links: three names for one inode, across directories.
    write(&root.join("links/a"), &text(100_000, 3));
    std::fs::hard_link(root.join("links/a"), root.join("links/b")).unwrap();
    std::fs::hard_link(root.join("links/a"), root.join("dir/c-link")).unwrap();
    // Sparse: data, a 64 MiB hole, data, trailing hole; and an all-hole file.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(root.join("sparse")).unwrap();
        f.write_all_at(&text(10_000, 4), 0).unwrap();
        f.write_all_at(&noise(70_000, 5), 64 << 20).unwrap();
        f.set_len(200 << 20).unwrap();
        let g = std::fs::File::create(root.join("all-hole")).unwrap();
        g.set_len(1 << 30).unwrap();
    }
    // Special files.
    let fifo = c_path(&root.join("fifo"));
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    if is_root() {
        let chr = c_path(&root.join("null-dev"));
        assert_eq!(
            unsafe { libc::mknod(chr.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
            0
        );
        let blk = c_path(&root.join("loop-dev"));
        assert_eq!(
            unsafe { libc::mknod(blk.as_ptr(), libc::S_IFBLK | 0o660, libc::makedev(7, 200)) },
            0
        );
    }
    // A socket is skipped with a note.
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    // Names: not UTF-8, 255 bytes, spaces and newlines.
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9-\xff\xfe");
    write(&root.join(odd), b"latin-1 name");
    let long = "n".repeat(255);
    write(&root.join(&long), b"long name");
    write(&root.join("with space\nand newline"), b"x");
    // Deep tree: deeper than PATH_MAX allows as one path (600 levels * 8 bytes).
    let mut deep = root.join("deep");
    std::fs::create_dir(&deep).unwrap();
    {
        let mut cur = std::fs::File::open(&deep).unwrap();
        use std::os::fd::AsRawFd;
        for i in 0..600 {
            let name = std::ffi::CString::new(format!("level{i:03}")).unwrap();
            assert_eq!(
                unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755) },
                0
            );
            let fd = unsafe {
                libc::openat(
                    cur.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )
            };
            assert!(fd >= 0);
            cur = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        }
        let leaf = std::ffi::CString::new("leaf").unwrap();
        let fd = unsafe {
            libc::openat(
                cur.as_raw_fd(),
                leaf.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT,
                0o644,
            )
        };
        assert!(fd >= 0);
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        std::io::Write::write_all(&mut f, b"at the bottom").unwrap();
    }
    deep.push("level000");
    // Xattrs: user attributes (binary value), and POSIX ACLs (access and default).
    set_xattr(&root.join("small.txt"), "user.comment", b"kept\0with nul");
    set_xattr(&root.join("dir"), "user.dir-attr", b"on a directory");
    // ACL_USER_OBJ=1, ACL_USER=2, ACL_GROUP_OBJ=4, ACL_MASK=0x10, ACL_OTHER=0x20
    let acl = acl_blob(&[
        (1, 6, u32::MAX),
        (2, 4, 1234),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ]);
    set_xattr(&root.join("links/a"), "system.posix_acl_access", &acl);
    set_xattr(&root.join("dir"), "system.posix_acl_default", &acl);
    // Owners (numeric, not in /etc/passwd).
    if is_root() {
        std::os::unix::fs::lchown(root.join("small.txt"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("dir/rel-link"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::lchown(root.join("dir"), Some(77), Some(88)).unwrap();
    }
    // Times with nanoseconds, including before 1970; set last (children change dir mtimes).
    set_mtime(&root.join("small.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("empty"), -86_400 * 365, 999_999_999);
    set_mtime(&root.join("dir/rel-link"), 1_500_000_000, 1);
    set_mtime(&root.join("dir"), 1_400_000_000, 42);
    set_mtime(root, 1_300_000_000, 7);
}

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
        .output()
        .unwrap();
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
    assert_eq!(
        std::fs::read(dst.join("one.txt")).unwrap(),
        b"one, first version"
    );
    assert_eq!(std::fs::read(dst.join("b/two.txt")).unwrap(), b"two");
    assert!(!dst.join("a").exists());

    let out = t.run(&[
        "restore",
        "item",
        "no/such/path",
        "--to",
        dst.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not in this recovery point"),
        "{}",
        stderr(&out)
    );
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
    use coffre::vault::format::{Entry, Hash32, Kind, encode_root, encode_tree};
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
        let id = Hash32::of(&tree);
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
