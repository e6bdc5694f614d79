//! End-to-end regression tests for the trust findings of issue 7: each test names the guarantee
//! it proves, through the real `coffre` and `coffre-restore` binaries (and real mounts).

mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A vault with one files item `x` holding a few files worth reading through a mount.
fn vault_with_files() -> TestVault {
    let t = TestVault::new();
    let src = t.path("src");
    for i in 0..8 {
        write(&src.join(format!("f{i}")), &text(300_000, i));
    }
    t.backup("x", &src);
    t
}

/// Waits (with a deadline) until `dir` is no longer a mount point.
fn wait_unmounted(dir: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while is_fuse_mounted(dir) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn sigterm_and_expect_exit(m: &mut MountGuard, what: &str) {
    let pid = m.child.as_ref().unwrap().id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = m
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("mount did not exit on SIGTERM ({what})"));
    assert!(
        status.success(),
        "{what}: exit status {status:?} (signal {:?})",
        status.signal()
    );
    assert!(!is_fuse_mounted(&m.dir), "{what}: still mounted");
}

#[test]
fn sigterm_ends_the_mount_even_while_a_file_in_it_is_open() {
    let t = vault_with_files();
    let mut m = MountGuard::start(&t, &[]);
    // An open file makes a plain umount(2) fail with EBUSY for as long as it stays open.
    let mut held = std::fs::File::open(m.latest("x").join("f0")).unwrap();
    let mut buf = [0u8; 4096];
    held.read_exact(&mut buf).unwrap();
    sigterm_and_expect_exit(&mut m, "a file held open");
}

#[test]
fn sigterm_ends_the_mount_at_any_moment_while_reads_are_in_flight() {
    let t = vault_with_files();
    // SIGTERM right after the mount answers, then after more and more reads have been served
    // by concurrent readers (the signal lands at varied moments of their open/read/close).
    for (round, after_reads) in [0u64, 0, 1, 3, 10, 30, 100].into_iter().enumerate() {
        let mut m = MountGuard::start(&t, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..3)
            .map(|r| {
                let (stop, reads) = (stop.clone(), reads.clone());
                let dir = m.dir.join("items/x");
                std::thread::spawn(move || {
                    let mut i = r;
                    while !stop.load(Ordering::Relaxed) {
                        // Errors are expected once the mount goes away.
                        let Ok(link) = std::fs::read_link(dir.join("latest")) else {
                            break;
                        };
                        if std::fs::read(dir.join(link).join(format!("f{}", i % 8))).is_err() {
                            break;
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while reads.load(Ordering::Relaxed) < after_reads {
            assert!(Instant::now() < deadline, "readers made no progress");
            std::thread::yield_now();
        }
        sigterm_and_expect_exit(&mut m, &format!("round {round}, after {after_reads} reads"));
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert!(wait_unmounted(&m.dir, Duration::from_secs(1)));
    }
}

/// A tmpfs mounted for a test, unmounted in Drop.
struct TmpfsGuard(std::path::PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let p = c_path(&self.0);
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The fstype /proc/self/mountinfo gives the mount at `dir`, if any.
fn fstype_at(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
        .find_map(|l| l.split(" - ").nth(1)?.split(' ').next().map(String::from))
}

#[test]
#[ignore = "needs root to mount a tmpfs"]
fn umount_refuses_anything_but_a_coffre_mount_which_shows_as_fuse_coffre() {
    let t = vault_with_files();
    let tmp = t.path("tmpfs");
    std::fs::create_dir(&tmp).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "none"])
        .arg(&tmp)
        .output_within();
    assert!(st.status.success(), "mount tmpfs: {}", stderr(&st));
    let _tmpfs = TmpfsGuard(tmp.clone());
    write(&tmp.join("kept"), b"still here");

    let out = t.run(&["umount", tmp.to_str().unwrap()]);
    assert_fails(&out, "is not a coffre mount");
    assert_eq!(
        fstype_at(&tmp).as_deref(),
        Some("tmpfs"),
        "the tmpfs was unmounted"
    );
    assert_eq!(std::fs::read(tmp.join("kept")).unwrap(), b"still here");
    // A plain directory is no mount at all.
    let out = t.run(&["umount", t.path("src").to_str().unwrap()]);
    assert_fails(&out, "is not a mount point");

    // A coffre mount is typed fuse.coffre, so findmnt -t finds it, and coffre umount ends it.
    let mut m = MountGuard::start(&t, &[]);
    assert_eq!(fstype_at(&m.dir).as_deref(), Some("fuse.coffre"));
    let found = std::process::Command::new("findmnt")
        .args(["-n", "-o", "TARGET", "-t", "fuse.coffre"])
        .output_within();
    assert!(
        String::from_utf8_lossy(&found.stdout).contains(m.dir.to_str().unwrap()),
        "findmnt -t fuse.coffre: {}",
        String::from_utf8_lossy(&found.stdout)
    );
    t.ok(&["umount", m.dir.to_str().unwrap()]);
    assert!(
        m.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    assert!(!is_fuse_mounted(&m.dir));
}

/// `coffre backup --item NAME SRC --json` with the point's time forced to `secs` (test hook).
fn backup_at(t: &TestVault, item: &str, src: &Path, secs: i64) -> serde_json::Value {
    let out = t
        .cmd()
        .env("COFFRE_TEST_POINT_TIME", secs.to_string())
        .args(["backup", "--json", "--item", item, src.to_str().unwrap()])
        .output_within();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0]["point"].clone()
}

#[test]
fn every_point_name_the_mount_shows_resolves_and_ambiguous_specs_list_the_candidates() {
    let t = TestVault::new();
    let src = t.path("src");
    const T: i64 = 1_796_152_970; // 2026-12-01 19:22:50 UTC
    let mut ids = Vec::new();
    for content in ["one", "two", "three"] {
        write(&src.join("f"), content.as_bytes());
        ids.push(
            backup_at(&t, "x", &src, T)["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The mount names them by their shared second, the later ones with their id.
    let names: Vec<String> = {
        let m = MountGuard::start(&t, &[]);
        let mut names: Vec<String> = std::fs::read_dir(m.dir.join("items/x"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "latest")
            .collect();
        names.sort();
        let mut want = vec![
            "2026-12-01T192250Z".to_string(),
            format!("2026-12-01T192250Z-{}", ids[1]),
            format!("2026-12-01T192250Z-{}", ids[2]),
        ];
        want.sort();
        assert_eq!(names, want);
        for (n, content) in [
            ("2026-12-01T192250Z".to_string(), "one"),
            (format!("2026-12-01T192250Z-{}", ids[2]), "three"),
        ] {
            assert_eq!(
                std::fs::read(m.dir.join("items/x").join(n).join("f")).unwrap(),
                content.as_bytes()
            );
        }
        names
    };
    // Every one of those names, every id, a unique prefix and `latest` name the same point for
    // `coffre restore` as for the mount.
    let restored = |spec: &str| -> String {
        let dst = t.path(&format!("r-{}", spec.replace(['@', ' ', ':'], "_")));
        t.restore(spec, &dst);
        String::from_utf8(std::fs::read(dst.join("f")).unwrap()).unwrap()
    };
    assert_eq!(restored(&format!("x@{}", names[0])), "one");
    for (i, content) in ["one", "two", "three"].into_iter().enumerate() {
        assert_eq!(restored(&format!("x@{}", ids[i])), content);
    }
    assert_eq!(restored(&format!("x@2026-12-01T192250Z-{}", ids[1])), "two");
    assert_eq!(
        restored(&format!("x@2026-12-01T192250Z-{}", ids[2])),
        "three"
    );
    assert_eq!(restored("x@latest"), "three");
    assert_eq!(restored(&format!("x@{}", &ids[1][..7])), "two");

    // The time `coffre points` prints is shared by three points: ambiguous, with the candidates.
    let out = t.run(&[
        "restore",
        "x@2026-12-01 19:22:50",
        "--to",
        t.path("amb").to_str().unwrap(),
    ]);
    assert_fails(&out, "ambiguous:");
    for id in &ids {
        assert!(stderr(&out).contains(id.as_str()), "{}", stderr(&out));
    }
    // An id prefix two points share: back up until two ids start alike (17 points are enough).
    let prefix = loop {
        let pts = t.points("x");
        let firsts: Vec<char> = pts
            .iter()
            .map(|p| p["id"].as_str().unwrap().chars().next().unwrap())
            .collect();
        if let Some(c) = firsts
            .iter()
            .find(|c| firsts.iter().filter(|d| d == c).count() > 1)
        {
            break c.to_string();
        }
        assert!(pts.len() <= 17);
        backup_at(&t, "x", &src, T + pts.len() as i64);
    };
    let out = t.run(&[
        "restore",
        &format!("x@{prefix}"),
        "--to",
        t.path("amb").to_str().unwrap(),
    ]);
    assert_fails(&out, "ambiguous:");
    assert!(
        !stderr(&out).contains("no recovery point"),
        "{}",
        stderr(&out)
    );

    // The sidecar resolves the same way.
    let img = t.path("disk.raw");
    for (i, byte) in [1u8, 2].into_iter().enumerate() {
        write(&img, &vec![byte; 1 << 20]);
        let out = t
            .cmd()
            .env("COFFRE_TEST_POINT_TIME", T.to_string())
            .args(["backup-disk", "--json", "--item", "d"])
            .arg(&img)
            .output_within();
        assert!(out.status.success(), "backup-disk {i}: {}", stderr(&out));
    }
    let second = t.points("d")[1]["id"].as_str().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coffre-restore"))
        .env("COFFRE_VAULT", t.vault())
        .args(["disk", &format!("d@2026-12-01T192250Z-{second}"), "--to"])
        .arg(t.path("back.raw"))
        .output_within();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(t.path("back.raw")).unwrap(),
        vec![2u8; 1 << 20]
    );
}

/// Asserts a usage error: exit code 2 and `needle` on one `error:` line.
fn assert_usage(out: &std::process::Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn item_names(t: &TestVault) -> Vec<String> {
    let items: Vec<serde_json::Value> = serde_json::from_str(&t.ok(&["items", "--json"])).unwrap();
    items
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_way_to_create_an_item_refuses_a_name_the_mount_cannot_show() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"x");
    let img = t.path("disk.raw");
    write(&img, &[7u8; 65536]);
    let cfg = t.path("vm.conf");
    write(&cfg, b"memory=1G\n");
    t.backup("good", &src);
    let long = "n".repeat(201);
    for bad in ["x/y", "", ".", "..", ".hidden", "a@b", "a b", long.as_str()] {
        let s = src.to_str().unwrap();
        let out = t.run(&["backup", "--item", bad, s]);
        assert_usage(&out, "invalid item name");
        let out = t.run(&["backup-disk", "--item", bad, img.to_str().unwrap()]);
        assert_usage(&out, "invalid item name");
        let out = t.run(&[
            "backup-vm",
            "--item",
            bad,
            "--config",
            cfg.to_str().unwrap(),
            "--disk",
            img.to_str().unwrap(),
        ]);
        assert_usage(&out, "invalid item name");
    }
    // The sidecar's --protect-as is checked before anything is restored.
    t.ok(&[
        "backup-vm",
        "--item",
        "vm1",
        "--config",
        cfg.to_str().unwrap(),
        "--disk",
        img.to_str().unwrap(),
    ]);
    for bad in ["x/y", "", "..", "a@b"] {
        let to = t.path("copy");
        let out = sidecar(
            &t,
            &[
                "vm",
                "vm1",
                "--to",
                to.to_str().unwrap(),
                "--protect-as",
                bad,
            ],
        );
        assert_usage(&out, "invalid item name");
        assert!(
            !to.exists(),
            "{bad:?}: the VM was restored before the name was refused"
        );
    }
    assert_eq!(item_names(&t), ["good", "vm1"]);
    // A name that got into a catalog anyway (an older coffre, by hand) hides that item only:
    // items/ stays listable.
    let conn = rusqlite::Connection::open(t.vault().join("vault.db")).unwrap();
    conn.execute(
        "INSERT INTO items(name, kind, source, created) VALUES ('x/y', 'files', '{}', 0)",
        [],
    )
    .unwrap();
    drop(conn);
    let m = MountGuard::start(&t, &[]);
    let mut listed: Vec<String> = std::fs::read_dir(m.dir.join("items"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, ["good", "vm1"]);
}

/// The stored definition of an item, from `coffre items --json`.
fn item_source(t: &TestVault, name: &str) -> serde_json::Value {
    let items: Vec<serde_json::Value> = serde_json::from_str(&t.ok(&["items", "--json"])).unwrap();
    items
        .into_iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no item {name}"))["source"]
        .clone()
}

/// A files item `a`, a VM item `v` whose post-script fails (its points miss something: exit 3)
/// and a files item `b`; returns the source of `b`.
fn three_items(t: &TestVault) -> std::path::PathBuf {
    let (a, b) = (t.path("a"), t.path("b"));
    write(&a.join("f"), b"a");
    write(&b.join("f"), b"b");
    t.backup("a", &a);
    t.backup("b", &b);
    let img = t.path("vm.img");
    write(&img, &[3u8; 65536]);
    let cfg = t.path("vm.conf");
    write(&cfg, b"cpus=1\n");
    let out = t.run(&[
        "backup-vm",
        "--item",
        "v",
        "--config",
        cfg.to_str().unwrap(),
        "--disk",
        img.to_str().unwrap(),
        "--post-script",
        "false",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    b
}

#[test]
fn backing_up_several_items_backs_up_each_one_and_exits_with_the_worst_status() {
    let t = TestVault::new();
    let b = three_items(&t);
    // 3 (a point misses something) beats 0.
    let out = t.run(&["backup", "a", "v"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!((t.points("a").len(), t.points("v").len()), (2, 2));

    // 1 (an item failed) beats 3; the items after a failing one are still backed up.
    std::fs::remove_dir_all(&b).unwrap();
    let out = t.run(&["backup", "b", "a", "nosuch", "v", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let items: Vec<&str> = results
        .iter()
        .map(|r| r["item"].as_str().unwrap())
        .collect();
    assert_eq!(items, ["b", "a", "nosuch", "v"]);
    assert!(
        results[0]["error"]
            .as_str()
            .unwrap()
            .contains("backup of item \"b\" failed")
    );
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .contains("no item named \"nosuch\"")
    );
    for ok in [&results[1], &results[3]] {
        assert!(
            ok["point"]["id"].is_string() && ok.get("error").is_none(),
            "{ok}"
        );
    }
    assert_eq!(results[3]["warnings"].as_array().unwrap().len(), 1);
    assert_eq!((t.points("a").len(), t.points("v").len()), (3, 3));
    assert_eq!(t.points("b").len(), 1);
    // Without --json: each failure on its own line, each point as usual.
    let out = t.run(&["backup", "b", "a"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("error: backup of item \"b\" failed"), "{err}");
    assert!(err.contains("1 of 2 items failed: b"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("of \"a\""));
    assert_eq!(t.points("a").len(), 4);
}

#[test]
fn options_that_cannot_apply_are_refused_and_a_failed_backup_changes_no_definition() {
    let t = TestVault::new();
    three_items(&t);
    let a = t.path("a");
    let before = item_source(&t, "a");
    // Options the stored-item form cannot apply: refused, nothing backed up.
    let out = t.run(&["backup", "a", "--exclude", "*.tmp"]);
    assert_usage(&out, "coffre backup --item NAME PATH --exclude");
    let out = t.run(&["backup", "a", "-x"]);
    assert_usage(&out, "--one-file-system does not apply");
    let out = t.run(&["backup"]);
    assert_usage(&out, "nothing to back up");
    let out = t.run(&[
        "backup",
        "--item",
        "a",
        a.to_str().unwrap(),
        a.to_str().unwrap(),
    ]);
    assert_usage(&out, "exactly one PATH");
    assert_eq!(t.points("a").len(), 1);

    // A bad definition is refused before the catalog changes: not stored, no item created.
    let out = t.run(&[
        "backup",
        "--item",
        "a",
        a.to_str().unwrap(),
        "--exclude",
        "[",
    ]);
    assert_usage(&out, "bad --exclude pattern");
    let out = t.run(&[
        "backup",
        "--item",
        "fresh",
        a.to_str().unwrap(),
        "--exclude",
        "[",
    ]);
    assert_usage(&out, "bad --exclude pattern");
    assert_eq!(item_source(&t, "a"), before);
    // A first backup that fails leaves no item behind; a failed backup of an existing item
    // keeps its stored definition.
    let (cfg, img) = (t.path("vm.conf"), t.path("vm.img"));
    for item in ["vmfresh", "v"] {
        let out = t.run(&[
            "backup-vm",
            "--item",
            item,
            "--config",
            cfg.to_str().unwrap(),
            "--disk",
            img.to_str().unwrap(),
            "--pre-script",
            "false",
        ]);
        assert_fails(&out, "pre-script failed");
    }
    assert_eq!(item_names(&t), ["a", "b", "v"]);
    assert_eq!(item_source(&t, "v")["pre_script"], serde_json::Value::Null);
    assert_eq!(item_source(&t, "v")["post_script"], "false");
    // A backup that succeeds stores the definition it used.
    t.ok(&[
        "backup",
        "--item",
        "a",
        a.to_str().unwrap(),
        "--exclude",
        "*.log",
    ]);
    assert_eq!(
        item_source(&t, "a")["excludes"],
        serde_json::json!(["*.log"])
    );

    // The sidecar: options the chosen form cannot apply, and an --image that names nothing.
    let disk = t.path("d.raw");
    write(&disk, &[5u8; 65536]);
    t.ok(&["backup-disk", "--item", "d", disk.to_str().unwrap()]);
    let to = t.path("out.raw");
    let to_s = to.to_str().unwrap();
    for (args, needle) in [
        (vec!["disk", "d", "--in-place", "--force"], "--force"),
        (vec!["vm", "v", "--in-place", "--force"], "--force"),
        (vec!["disk", "d"], "--to"),
        (
            vec!["disk", "d", "--to", to_s, "--image", "nosuch"],
            "no such image",
        ),
        (
            vec!["disk", "d", "--in-place", "--image", "nosuch"],
            "no such image",
        ),
    ] {
        let out = sidecar(&t, &args);
        assert_usage(&out, needle);
    }
    assert!(!to.exists());
    let items: Vec<serde_json::Value> = serde_json::from_str(&t.ok(&["items", "--json"])).unwrap();
    assert!(items.iter().all(|i| i["state"] == "protected"), "{items:?}");
}

#[test]
fn items_shows_the_scripts_a_stored_backup_will_run() {
    let t = TestVault::new();
    let (cfg, img) = (t.path("vm.conf"), t.path("vm.img"));
    write(&cfg, b"cpus=1\n");
    write(&img, &[1u8; 65536]);
    t.ok(&[
        "backup-vm",
        "--item",
        "v",
        "--config",
        cfg.to_str().unwrap(),
        "--disk",
        img.to_str().unwrap(),
        "--pre-script",
        "echo freeze",
        "--post-script",
        "echo thaw",
    ]);
    // Whoever can write the vault decides what `coffre backup v` runs: here, a script that
    // leaves a marker. The listing shows it before anyone runs it.
    let marker = t.path("ran");
    let evil = format!("touch {}", marker.display());
    let conn = rusqlite::Connection::open(t.vault().join("vault.db")).unwrap();
    let source: String = conn
        .query_row("SELECT source FROM items WHERE name='v'", [], |r| r.get(0))
        .unwrap();
    let mut source: serde_json::Value = serde_json::from_str(&source).unwrap();
    source["pre_script"] = evil.clone().into();
    conn.execute(
        "UPDATE items SET source=?1 WHERE name='v'",
        [source.to_string()],
    )
    .unwrap();
    drop(conn);

    let human = t.ok(&["items"]);
    assert!(human.contains(&format!("pre-script: {evil}")), "{human}");
    assert!(human.contains("post-script: echo thaw"), "{human}");
    assert!(human.contains(cfg.to_str().unwrap()), "{human}");
    let items: Vec<serde_json::Value> = serde_json::from_str(&t.ok(&["items", "--json"])).unwrap();
    assert_eq!(items[0]["pre_script"], evil.as_str());
    assert_eq!(items[0]["post_script"], "echo thaw");
    assert!(!marker.exists());
    t.ok(&["backup", "v"]);
    assert!(marker.exists(), "coffre backup ran the stored pre-script");
}

/// Permission bits of a path (not following symlinks).
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Runs a command as user 65534 with no groups; true if it succeeded.
fn as_nobody(args: &[&std::ffi::OsStr]) -> bool {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .output_within()
        .status
        .success()
}

#[test]
#[ignore = "needs root to act as another user"]
fn a_vault_is_private_to_its_owner_whatever_the_umask_and_coffre_warns_when_it_is_not() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestVault::new();
    // Only the vault's own modes may keep others out: open up the directory around it.
    std::fs::set_permissions(t.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let src = t.path("src");
    write(&src.join("shadow"), &text(100_000, 9));
    std::fs::set_permissions(&src, PermissionsExt::from_mode(0o755)).unwrap();
    // Every coffre run below starts with umask 022, as root's shell often does.
    let with_umask_022 = |args: &[&str]| {
        let out = std::process::Command::new("sh")
            .args(["-c", "umask 022; exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_coffre"))
            .args(args)
            .env("COFFRE_VAULT", t.vault())
            .output_within();
        assert!(out.status.success(), "coffre {args:?}: {}", stderr(&out));
        out
    };
    let out = with_umask_022(&["backup", "--item", "x", src.to_str().unwrap()]);
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    // With a mount holding the catalog open, vault.db-wal and -shm stay; a second backup adds a
    // pack beside the first.
    let _m = MountGuard::start(&t, &[]);
    write(&src.join("more"), &noise(100_000, 10));
    with_umask_022(&["backup", "x"]);

    let v = t.vault();
    assert_eq!(mode(&v), 0o700, "vault directory");
    assert_eq!(mode(&v.join("packs")), 0o700, "packs/");
    for f in ["vault.db", "vault.db-wal", "vault.db-shm", "lock"] {
        assert_eq!(mode(&v.join(f)), 0o600, "{f}");
    }
    let packs: Vec<_> = std::fs::read_dir(v.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(packs.len(), 2);
    for p in &packs {
        assert_eq!(mode(p), 0o600, "{}", p.display());
        assert!(
            !as_nobody(&["cat".as_ref(), p.as_os_str()]),
            "nobody read {}",
            p.display()
        );
    }
    assert!(
        !as_nobody(&["ls".as_ref(), v.as_os_str()]),
        "nobody listed the vault"
    );
    // `coffre init` into an existing, open directory closes it too.
    let fresh = t.path("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::set_permissions(&fresh, PermissionsExt::from_mode(0o755)).unwrap();
    with_umask_022(&["--vault", fresh.to_str().unwrap(), "init"]);
    assert_eq!(mode(&fresh), 0o700);

    // A vault others can read (an older coffre made it, or someone loosened it): one warning line
    // that says how to fix it, for every command that opens it.
    std::fs::set_permissions(v.join("vault.db"), PermissionsExt::from_mode(0o644)).unwrap();
    let out = t.run(&["points"]);
    assert!(out.status.success());
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains(&format!("chmod -R go-rwx {}", v.display())),
        "{err}"
    );
    let out = sidecar(&t, &["reprotect", "x"]);
    assert!(stderr(&out).contains("chmod -R go-rwx"), "{}", stderr(&out));
    let out = t.run(&["backup", "x"]);
    assert!(out.status.success());
    assert_eq!(
        stderr(&out).matches("warning:").count(),
        1,
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(v.join("vault.db"), PermissionsExt::from_mode(0o600)).unwrap();
    assert!(!stderr(&t.run(&["points"])).contains("warning"));
}

/// A user no other test runs as, so its thread count is this test's alone.
const THREADS_UID: u32 = 54321;

/// Runs `bin args` as `THREADS_UID` with at most `nproc` processes and threads for that user.
fn with_nproc(t: &TestVault, nproc: u32, bin: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("prlimit")
        .arg(format!("--nproc={nproc}"))
        .args(["--", "setpriv"])
        .arg(format!("--reuid={THREADS_UID}"))
        .arg(format!("--regid={THREADS_UID}"))
        .args(["--clear-groups", bin])
        .args(args)
        .env("COFFRE_VAULT", t.vault())
        .env("RUST_BACKTRACE", "0")
        .output_within()
}

/// A refused thread is either absorbed (fewer workers: exit 0) or one `error:` line (exit 1).
fn assert_no_thread_panic(out: &std::process::Output, what: &str) -> bool {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "{what}: {err}");
    match out.status.code() {
        Some(0) => true,
        Some(1) => {
            let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(errors.len(), 1, "{what}: {err}");
            assert!(errors[0].contains("cannot start a"), "{what}: {err}");
            false
        }
        other => panic!("{what}: exit {other:?}: {err}"),
    }
}

#[test]
#[ignore = "needs root to run as another user with a process limit"]
fn a_thread_the_system_refuses_means_fewer_workers_or_one_error_line_never_a_panic() {
    let t = TestVault::new();
    let src = t.path("src");
    for i in 0..40 {
        write(&src.join(format!("f{i}")), &noise(50_000, i));
    }
    let img = t.path("disk.raw");
    write(&img, &text(3 << 20, 4));
    let out = t.run(&["init"]);
    assert!(out.status.success());
    let chown = |p: &Path| {
        let out = std::process::Command::new("chown")
            .args(["-R", &format!("{THREADS_UID}:{THREADS_UID}")])
            .arg(p)
            .output_within();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    chown(t.dir.path());
    let coffre = env!("CARGO_BIN_EXE_coffre");
    let sidecar_bin = env!("CARGO_BIN_EXE_coffre-restore");
    let (s, i) = (src.to_str().unwrap(), img.to_str().unwrap());

    // A few threads short of --threads 64: the pool shrinks, the backup is made.
    let out = with_nproc(
        &t,
        6,
        coffre,
        &["backup", "--item", "x", s, "--threads", "64"],
    );
    assert!(assert_no_thread_panic(&out, "backup"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("of 64 backup worker threads"),
        "{}",
        stderr(&out)
    );
    let out = with_nproc(
        &t,
        6,
        coffre,
        &["backup-disk", "--item", "d", i, "--threads", "64"],
    );
    assert!(
        assert_no_thread_panic(&out, "backup-disk"),
        "{}",
        stderr(&out)
    );
    let dst = t.path("dst");
    let d = dst.to_str().unwrap();
    let out = with_nproc(
        &t,
        4,
        coffre,
        &["restore", "x", "--to", d, "--threads", "64"],
    );
    assert!(assert_no_thread_panic(&out, "restore"), "{}", stderr(&out));
    assert_eq!(std::fs::read(dst.join("f7")).unwrap(), noise(50_000, 7));
    let back = t.path("back.raw");
    let out = with_nproc(
        &t,
        2,
        sidecar_bin,
        &["disk", "d", "--to", back.to_str().unwrap()],
    );
    assert!(
        assert_no_thread_panic(&out, "coffre-restore disk"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&back).unwrap(), text(3 << 20, 4));
    // With almost no threads left, some runs cannot even start what they need: one line.
    for nproc in 1..=3 {
        let out = with_nproc(&t, nproc, coffre, &["backup", "x", "--threads", "64"]);
        assert_no_thread_panic(&out, &format!("backup with nproc {nproc}"));
        let out = with_nproc(&t, nproc, coffre, &["backup", "d", "--threads", "64"]);
        assert_no_thread_panic(&out, &format!("backup-disk with nproc {nproc}"));
    }
    // Absurd requests are usage errors before anything runs.
    for cmd in [
        vec!["backup", "x", "--threads", "100000"],
        vec!["restore", "x", "--to", d, "--threads", "257"],
        vec!["mount", d, "--threads", "4096"],
    ] {
        let out = t.run(&cmd);
        assert_usage(&out, "from 0 (automatic) to 256");
    }
}
