//! End-to-end: real FUSE mounts of real vaults through the `coffre` binary. Every mount is a
//! `MountGuard` that waits for the mount with a deadline and unmounts in Drop.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::time::{Duration, Instant};

use common::*;

fn without_root(
    mut s: std::collections::BTreeMap<Vec<u8>, Snap>,
) -> std::collections::BTreeMap<Vec<u8>, Snap> {
    // The point directory itself carries the backup time, not the source root's metadata.
    s.remove(b"".as_slice());
    s
}

#[test]
fn every_kind_of_entry_reads_back_exactly_through_the_mount() {
    let t = TestVault::new();
    let src = t.path("src");
    make_tree(&src);
    t.backup("tree", &src);
    let m = MountGuard::start(&t, &[]);
    let latest = m.latest("tree");

    let mut want = without_root(snapshot(&src, true));
    want.remove(b"sock".as_slice());
    // Straight through the mount: lstat fields, xattrs (ACLs too), content, SEEK_DATA/SEEK_HOLE
    // maps, and hard links sharing one inode.
    assert_same(&want, &without_root(snapshot(&latest, true)));
    let ino = |p: &str| std::fs::symlink_metadata(latest.join(p)).unwrap().ino();
    assert_eq!(ino("links/a"), ino("links/b"));
    assert_eq!(ino("links/a"), ino("dir/c-link"));
    assert_ne!(ino("links/a"), ino("small.txt"));
    // Directories report the size and link count they had.
    for d in ["dir", "modes", "deep"] {
        let a = std::fs::metadata(src.join(d)).unwrap();
        let b = std::fs::metadata(latest.join(d)).unwrap();
        assert_eq!((a.size(), a.nlink()), (b.size(), b.nlink()), "{d}");
    }
    let sparse = std::fs::metadata(latest.join("sparse")).unwrap();
    assert!(
        sparse.blocks() < 1024,
        "sparse file reports {} blocks",
        sparse.blocks()
    );
    assert_eq!(
        data_map(&latest.join("sparse")),
        data_map(&src.join("sparse"))
    );

    // And what a user does: rsync -aHAX --numeric-ids out of the mount reproduces the tree.
    if std::process::Command::new("rsync")
        .arg("--version")
        .output()
        .is_ok()
    {
        // rsync itself cannot walk paths longer than PATH_MAX: leave the deep tree out.
        let copy = t.path("copy");
        let out = std::process::Command::new("rsync")
            .args(["-aHAX", "--numeric-ids", "--sparse", "--exclude=/deep"])
            .arg(format!("{}/", latest.display()))
            .arg(&copy)
            .output_within();
        assert!(out.status.success(), "rsync: {}", stderr(&out));
        want.retain(|k, _| !k.starts_with(b"deep"));
        assert_same(&want, &without_root(snapshot(&copy, true)));
    } else {
        eprintln!("rsync not installed: the rsync half of this test did not run");
    }
}

#[test]
fn the_layout_has_items_points_latest_and_ids() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"one");
    let p1 = t.backup("a", &src)["point"].clone();
    std::thread::sleep(Duration::from_millis(1100)); // distinct point directory names
    write(&src.join("f"), b"two");
    let p2 = t.backup("a", &src)["point"].clone();
    t.backup("b", &src);
    let m = MountGuard::start(&t, &[]);
    let mut items: Vec<String> = std::fs::read_dir(m.dir.join("items"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    items.sort();
    assert_eq!(items, ["a", "b"]);
    let mut a: Vec<String> = std::fs::read_dir(m.dir.join("items/a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    a.sort();
    assert_eq!(a.len(), 3, "{a:?}");
    assert!(a.contains(&"latest".to_string()));
    let latest = std::fs::read_link(m.dir.join("items/a/latest")).unwrap();
    assert_eq!(
        std::fs::read(m.dir.join("items/a/latest/f")).unwrap(),
        b"two"
    );
    // Point directories are named by UTC time and carry it as mtime.
    let name = latest.to_str().unwrap();
    assert!(
        name.ends_with('Z') && name.len() == 18 && !name.contains(':'),
        "{name}"
    );
    let t2 = json_ns(&p2["time"]).unwrap();
    let md = std::fs::metadata(m.dir.join("items/a").join(name)).unwrap();
    assert_eq!(md.mtime(), t2.div_euclid(1_000_000_000));
    // ids/<point-id> -> ../items/<item>/<point>
    let id1 = p1["id"].as_str().unwrap();
    let target = std::fs::read_link(m.dir.join("ids").join(id1)).unwrap();
    assert!(
        target.to_str().unwrap().starts_with("../items/a/"),
        "{target:?}"
    );
    assert_eq!(
        std::fs::read(m.dir.join("ids").join(id1).join("f")).unwrap(),
        b"one"
    );
}

#[test]
fn every_kind_of_write_fails_with_erofs() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"data");
    std::fs::create_dir(src.join("d")).unwrap();
    t.backup("x", &src);
    let m = MountGuard::start(&t, &[]);
    let p = m.latest("x");
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(std::fs::write(p.join("f"), b"x"), "write");
    erofs(std::fs::write(p.join("new"), b"x"), "create");
    erofs(std::fs::remove_file(p.join("f")), "unlink");
    erofs(std::fs::create_dir(p.join("d2")), "mkdir");
    erofs(std::fs::remove_dir(p.join("d")), "rmdir");
    erofs(std::fs::rename(p.join("f"), p.join("g")), "rename");
    erofs(
        std::fs::set_permissions(p.join("f"), PermissionsExt::from_mode(0o600)),
        "chmod",
    );
    let k = c"user.x";
    let r = unsafe {
        libc::setxattr(
            c_path(&p.join("f")).as_ptr(),
            k.as_ptr(),
            b"v".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS),
        "setxattr"
    );
    erofs(
        std::fs::OpenOptions::new()
            .append(true)
            .open(p.join("f"))
            .map(drop),
        "open for append",
    );
}

#[test]
#[ignore = "needs root: acts as another user"]
fn permissions_are_enforced_and_other_users_need_allow_other() {
    let t = TestVault::new();
    std::fs::set_permissions(t.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let src = t.path("src");
    write(&src.join("secret"), b"root only");
    std::fs::set_permissions(src.join("secret"), PermissionsExt::from_mode(0o600)).unwrap();
    write(&src.join("public"), b"anyone");
    std::fs::set_permissions(src.join("public"), PermissionsExt::from_mode(0o644)).unwrap();
    t.backup("x", &src);
    let as_nobody = |args: &[&std::path::Path]| {
        std::process::Command::new("cat")
            .args(args)
            .uid(65534)
            .gid(65534)
            .output_within()
    };
    {
        let m = MountGuard::start(&t, &[]);
        let out = as_nobody(&[&m.latest("x").join("public")]);
        assert!(
            !out.status.success(),
            "nobody entered a mount without --allow-other"
        );
        assert!(
            stderr(&out).contains("Permission denied"),
            "{}",
            stderr(&out)
        );
    }
    let m = MountGuard::start(&t, &["--allow-other"]);
    let out = as_nobody(&[&m.latest("x").join("public")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"anyone");
    let out = as_nobody(&[&m.latest("x").join("secret")]);
    assert!(!out.status.success(), "nobody read a 0600 root file");
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_damaged_chunk_is_eio_and_other_files_still_read() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("victim.bin"), &noise(600_000, 1)); // a record of its own
    write(&src.join("good.txt"), &text(10_000, 2));
    t.backup("x", &src);
    // Corrupt the middle of the pack: the victim's record is most of it.
    let pack = std::fs::read_dir(t.vault().join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut data = std::fs::read(&pack).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&pack, &data).unwrap();
    let m = MountGuard::start(&t, &[]);
    let e = std::fs::read(m.latest("x").join("victim.bin")).expect_err("read damaged data");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(
        std::fs::read(m.latest("x").join("good.txt")).unwrap(),
        text(10_000, 2)
    );
    // The mount survives and still answers.
    assert!(std::fs::read_dir(m.dir.join("items")).is_ok());
}

#[test]
fn a_backup_made_while_mounted_appears_and_moves_latest() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"first");
    t.backup("x", &src);
    let m = MountGuard::start(&t, &[]);
    let count = || std::fs::read_dir(m.dir.join("items/x")).unwrap().count();
    assert_eq!(count(), 2); // one point + latest
    let link = m.dir.join("items/x/latest");
    let before = std::fs::read_link(&link).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    write(&src.join("f"), b"second");
    // The mount never holds the writer lock: the backup runs while mounted.
    t.backup("x", &src);
    t.backup("y", &src);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Both backups are committed; the mount notices them on its next refreshes.
    while count() != 3
        || std::fs::read_link(&link).unwrap() == before
        || !m.dir.join("items/y/latest/f").exists()
    {
        assert!(
            Instant::now() < deadline,
            "the new point and item did not appear within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(m.latest("x").join("f")).unwrap(), b"second");
}

#[test]
fn sigterm_and_umount_end_the_mount_cleanly() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"x");
    t.backup("x", &src);

    let mut m = MountGuard::start(&t, &[]);
    let pid = m.child.as_ref().unwrap().id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = m
        .wait_exit(Duration::from_secs(10))
        .expect("mount did not exit on SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?} (signal {:?})",
        status.signal()
    );
    assert!(!is_fuse_mounted(&m.dir), "still mounted after SIGTERM");

    let mut m = MountGuard::start(&t, &[]);
    t.ok(&["umount", m.dir.to_str().unwrap()]);
    let status = m
        .wait_exit(Duration::from_secs(10))
        .expect("mount did not exit after umount");
    assert!(status.success(), "{status:?}");
    assert!(!is_fuse_mounted(&m.dir));
}

#[test]
fn daemon_mode_returns_once_ready_and_bad_mount_points_are_refused() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"daemon");
    t.backup("x", &src);
    let dir = t.path("mnt-daemon");
    std::fs::create_dir(&dir).unwrap();
    let said = t.ok(&["mount", "--daemon", dir.to_str().unwrap()]);
    let guard = MountGuard {
        dir: dir.canonicalize().unwrap(),
        child: None,
    };
    let at = guard.dir.display();
    assert_eq!(
        said,
        format!("mounted on {at} (read-only); `coffre umount {at}` ends it\n")
    );
    assert_eq!(
        std::fs::read(dir.join("items/x/latest/f")).unwrap(),
        b"daemon"
    );
    // A busy mount point.
    let out = t.run(&["mount", dir.to_str().unwrap()]);
    assert_fails(&out, "already a mount point");
    t.ok(&["umount", dir.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_fuse_mounted(&guard.dir) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    // -q: nothing said.
    assert_eq!(
        t.ok(&["-q", "mount", "--daemon", dir.to_str().unwrap()]),
        ""
    );
    t.ok(&["umount", dir.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_fuse_mounted(&guard.dir) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    // A non-empty one, and one that does not exist.
    write(&dir.join("something"), b"x");
    let out = t.run(&["mount", dir.to_str().unwrap()]);
    assert_fails(&out, "not empty");
    let out = t.run(&["mount", t.path("nowhere").to_str().unwrap()]);
    assert_fails(&out, "does not exist");
}

#[test]
#[ignore = "needs root: trusted.* xattrs and acting as another user"]
fn trusted_xattr_names_are_hidden_from_unprivileged_callers() {
    let t = TestVault::new();
    std::fs::set_permissions(t.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let src = t.path("src");
    write(&src.join("f"), b"x");
    std::fs::set_permissions(src.join("f"), PermissionsExt::from_mode(0o644)).unwrap();
    set_xattr(&src.join("f"), "trusted.overlay", b"hidden");
    set_xattr(&src.join("f"), "user.note", b"shown");
    t.backup("x", &src);
    let m = MountGuard::start(&t, &["--allow-other"]);
    let f = m.latest("x").join("f");
    let list = |uid: u32| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import os,sys; print(sorted(os.listxattr(sys.argv[1])))",
            ])
            .arg(&f)
            .uid(uid)
            .gid(uid)
            .output_within();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(list(65534).trim(), "['user.note']");
    assert_eq!(list(0).trim(), "['trusted.overlay', 'user.note']");
}

#[test]
fn hundreds_of_packs_read_through_a_mount_with_a_low_file_limit() {
    let t = TestVault::new();
    let src = t.path("src");
    let points = 300;
    for i in 0..points {
        // One new chunk per backup: one new pack per point.
        write(&src.join("f"), &noise(5000, i));
        t.ok(&["backup", "-q", "--item", "x", src.to_str().unwrap()]);
    }
    let packs = std::fs::read_dir(t.vault().join("packs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "pack")
        })
        .count();
    assert!(packs >= points as usize, "{packs} packs");
    let ids: Vec<String> = t
        .points("x")
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), points as usize);
    let m = MountGuard::start_wrapped(&t, &["prlimit", "--nofile=64", "--"], &[]);
    // Oldest first: point i holds noise(5000, i).
    for (i, id) in ids.iter().enumerate() {
        let got = std::fs::read(m.dir.join("ids").join(id).join("f"))
            .unwrap_or_else(|e| panic!("point {i} ({id}): {e}"));
        assert!(got == noise(5000, i as u64), "point {i} read wrong bytes");
    }
}

#[test]
fn soft_deleted_points_show_read_only_under_deleted_until_undeleted() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"first");
    t.backup("x", &src);
    write(&src.join("f"), b"second");
    t.backup("x", &src);
    let first = t.points("x")[0]["id"].as_str().unwrap().to_string();
    let m = MountGuard::start(&t, &[]);
    let listing = |p: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(m.dir.join(p))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert_eq!(listing(""), ["deleted", "ids", "items"]);
    assert!(listing("deleted").is_empty());
    t.ok(&["forget", &format!("x@{first}")]);
    // The mount notices within a refresh (about a second): poll with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while listing("deleted/x").is_empty() {
        assert!(Instant::now() < deadline, "deleted/x did not appear");
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone = listing("deleted/x");
    assert_eq!(gone.len(), 1);
    let f = m.dir.join("deleted/x").join(&gone[0]).join("f");
    assert_eq!(std::fs::read(&f).unwrap(), b"first");
    let err = std::fs::write(&f, b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(listing("items/x").len(), 2, "latest and the live point");
    t.ok(&["undelete", &format!("x@{first}")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Both directories follow the undelete; each is refreshed (and cached by the kernel for up
    // to TTL_VIRTUAL) on its own, so wait for both.
    while !listing("deleted/x").is_empty() || listing("items/x").len() != 3 {
        assert!(
            Instant::now() < deadline,
            "after undelete: deleted/x {:?}, items/x {:?}",
            listing("deleted/x"),
            listing("items/x")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_point_name_that_passes_to_another_point_shows_that_point() {
    let t = TestVault::new();
    let src = t.path("src");
    let at = "2026-11-01T10:00:00Z";
    write(&src.join("f"), b"first");
    t.ok(&[
        "backup",
        "-q",
        "--time",
        at,
        "--item",
        "x",
        src.to_str().unwrap(),
    ]);
    write(&src.join("f"), b"second");
    t.ok(&[
        "backup",
        "-q",
        "--time",
        at,
        "--item",
        "x",
        src.to_str().unwrap(),
    ]);
    let first = t.points("x")[0]["id"].as_str().unwrap().to_string();
    let m = MountGuard::start(&t, &[]);
    let bare = m.dir.join("items/x/2026-11-01T100000Z/f");
    assert_eq!(std::fs::read(&bare).unwrap(), b"first");
    // Forget the first: the second point takes the bare name.
    t.ok(&["forget", &format!("x@{first}")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> = std::fs::read_dir(m.dir.join("items/x"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        if names.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the forgotten point stayed: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(&bare).unwrap(), b"second");
}

#[test]
fn a_running_mount_reads_damaged_data_again_once_a_backup_healed_it() {
    let t = TestVault::new();
    let src = t.path("src");
    let data = noise(2 << 20, 77);
    write(&src.join("big"), &data);
    t.backup("x", &src);
    let m = MountGuard::start(&t, &[]);
    // Damage the pack behind the file, read it: EIO.
    let pack = std::fs::read_dir(t.vault().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&pack, bytes).unwrap();
    let f = m.latest("x").join("big");
    let err = std::fs::read(&f).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // The next backup stores the damaged chunk again; the same mount then reads the old point.
    let out = t.ok(&["backup", "--json", "--item", "x", src.to_str().unwrap()]);
    assert!(out.contains("\"repaired\": 1"), "{out}");
    assert!(
        std::fs::read(&f).unwrap() == data,
        "the healed file reads wrong"
    );
}

/// `df -B1` and `stat -f` numbers of a mount: (size, used, available) in bytes, and the
/// (total, free, available) blocks, files and block size.
fn df(dir: &std::path::Path) -> ((u64, u64, u64), Vec<u64>) {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=size,used,avail"])
        .arg(dir)
        .output_within();
    assert!(out.status.success(), "df: {}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let n: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%b %f %a %c %S"])
        .arg(dir)
        .output_within();
    assert!(out.status.success(), "stat -f: {}", stderr(&out));
    let s = String::from_utf8(out.stdout).unwrap();
    let f = s.split_whitespace().map(|w| w.parse().unwrap()).collect();
    ((n[0], n[1], n[2]), f)
}

/// `coffre stats --json`: (logical bytes of the live points, bytes of the packs, points).
fn vault_sizes(t: &TestVault) -> (u64, u64, u64) {
    let v: serde_json::Value = serde_json::from_str(&t.ok(&["stats", "--json"])).unwrap();
    let n = |k: &str| v[k].as_u64().unwrap();
    (n("logical_bytes"), n("pack_bytes"), n("points"))
}

#[test]
fn df_shows_the_logical_size_as_size_and_the_stored_bytes_as_used() {
    let t = TestVault::new();
    let src = t.path("src");
    // Two identical copies of 2 MiB of noise and 1 MiB of zeros: stored ≈ 2 MiB, logical 5 MiB.
    let data = noise(2 << 20, 5);
    write(&src.join("a"), &data);
    write(&src.join("b"), &data);
    write(&src.join("z"), &vec![0u8; 1 << 20]);
    t.backup("x", &src);
    let m = MountGuard::start(&t, &[]);
    let up = |b: u64| b.div_ceil(4096) * 4096;
    let (logical, stored, points) = vault_sizes(&t);
    assert!(
        logical > 2 * stored,
        "dedup did not happen: {logical} vs {stored}"
    );
    let ((size, used, avail), f) = df(&m.dir);
    assert_eq!((size, used, avail), (up(logical), up(stored), 0));
    // stat -f: total, free (what dedup and compression save), available, files (points), bsize.
    assert_eq!(
        f,
        [
            up(logical) / 4096,
            (up(logical) - up(stored)) / 4096,
            0,
            points,
            4096
        ]
    );
    // A new point shows within the mount's refresh (about a second).
    write(&src.join("c"), &noise(1 << 20, 6));
    t.backup("x", &src);
    let (logical2, stored2, _) = vault_sizes(&t);
    assert!(logical2 > logical && stored2 > stored);
    let deadline = Instant::now() + Duration::from_secs(20);
    while df(&m.dir).0 != (up(logical2), up(stored2), 0) {
        assert!(Instant::now() < deadline, "df still shows {:?}", df(&m.dir));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_foreground_mount_says_where_it_serves_and_how_to_stop() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"f");
    t.backup("x", &src);
    let mut m = MountGuard::start(&t, &[]);
    let mut err = m.child.as_mut().unwrap().stderr.take().unwrap();
    t.ok(&["umount", m.dir.to_str().unwrap()]);
    assert!(m.wait_exit(Duration::from_secs(20)).unwrap().success());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut err, &mut text).unwrap();
    let dir = m.dir.display();
    assert_eq!(
        text.trim_end(),
        format!(
            "serving vault {} on {dir} (read-only); stop with Ctrl-C or `coffre umount {dir}`",
            t.vault().canonicalize().unwrap().display()
        )
    );
    // -q: nothing.
    let mut m = MountGuard::start(&t, &["-q"]);
    let mut err = m.child.as_mut().unwrap().stderr.take().unwrap();
    t.ok(&["umount", m.dir.to_str().unwrap()]);
    assert!(m.wait_exit(Duration::from_secs(20)).unwrap().success());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut err, &mut text).unwrap();
    assert_eq!(text, "");
}

/// `gio` (GLib's command line, what file managers use underneath) against the mount: list, info
/// and copy agree with the source.
#[test]
fn gio_lists_inspects_and_copies_from_the_mount() {
    if std::process::Command::new("gio")
        .arg("help")
        .output()
        .is_err()
    {
        eprintln!("gio not installed (Debian: libglib2.0-bin): this test did not run");
        return;
    }
    let t = TestVault::new();
    let src = t.path("src");
    make_tree(&src);
    t.backup("tree", &src);
    let m = MountGuard::start(&t, &[]);
    let latest = m.latest("tree");
    let gio_bytes = |args: &[&str]| {
        let out = std::process::Command::new("gio").args(args).output_within();
        assert!(out.status.success(), "gio {args:?}: {}", stderr(&out));
        out.stdout
    };
    let gio = |args: &[&str]| String::from_utf8_lossy(&gio_bytes(args)).into_owned();
    // Names as bytes: the tree has names that are not UTF-8, and gio prints them as they are.
    let names = |s: Vec<u8>| {
        let mut v: Vec<Vec<u8>> = s
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        v.sort();
        v
    };
    // Sockets are not captured; a name holding a newline prints as two lines.
    let mut listed = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let name = e.unwrap().file_name().as_encoded_bytes().to_vec();
        if name != b"sock" {
            listed.extend_from_slice(&name);
            listed.push(b'\n');
        }
    }
    let want = names(listed);
    assert_eq!(names(gio_bytes(&["list", latest.to_str().unwrap()])), want);
    assert_eq!(
        names(gio_bytes(&["list", m.dir.to_str().unwrap()])),
        [b"deleted".to_vec(), b"ids".to_vec(), b"items".to_vec()]
    );
    let file = latest.join("small.txt");
    let info = gio(&[
        "info",
        "-a",
        "standard::size,standard::type,unix::mode",
        file.to_str().unwrap(),
    ]);
    let meta = std::fs::metadata(src.join("small.txt")).unwrap();
    assert!(
        info.contains(&format!("standard::size: {}", meta.len())),
        "{info}"
    );
    assert!(
        info.contains(&format!("unix::mode: {}", meta.mode())),
        "{info}"
    );
    let info = gio(&["info", latest.join("dir").to_str().unwrap()]);
    assert!(
        info.contains("type: directory") && info.contains("fuse.coffre"),
        "{info}"
    );
    let copy = t.path("copied");
    gio(&["copy", file.to_str().unwrap(), copy.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(src.join("small.txt")).unwrap()
    );
    // Writes are refused, as on any read-only file system.
    let out = std::process::Command::new("gio")
        .args([
            "copy",
            copy.to_str().unwrap(),
            latest.join("new").to_str().unwrap(),
        ])
        .output_within();
    assert!(!out.status.success());
}

/// `tar c` of a point in the mount, `tar x` elsewhere: the result is the source tree.
#[test]
fn tar_of_a_point_reproduces_the_source() {
    let t = TestVault::new();
    let src = t.path("src");
    make_tree(&src);
    t.backup("tree", &src);
    let m = MountGuard::start(&t, &[]);
    let latest = m.latest("tree");
    let copy = t.path("copy");
    std::fs::create_dir(&copy).unwrap();
    let flags = [
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
        "--numeric-owner",
    ];
    // GNU tar cannot name paths longer than PATH_MAX: leave the deep tree out (as for rsync).
    let script = format!(
        "tar -C '{}' {f} --sparse --exclude=./deep -cf - . | tar -C '{}' {f} -xpf -",
        latest.display(),
        copy.display(),
        f = flags.map(|f| format!("'{f}'")).join(" ")
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output_within();
    assert!(out.status.success(), "tar: {}", stderr(&out));
    let mut want = without_root(snapshot(&src, true));
    want.remove(b"sock".as_slice());
    want.retain(|k, _| !k.starts_with(b"deep"));
    assert_same(&want, &without_root(snapshot(&copy, true)));
}
