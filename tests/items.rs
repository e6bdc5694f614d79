//! End-to-end: `coffre item show|edit|rename|rm`, tags and notes on points (`backup --tag
//! --note`, `points --tag`), the `items` table for every kind, and `--lock-wait` with two real
//! processes (one holds the writer lock in a VM pre-script that waits on a fifo).

mod common;

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn assert_usage(out: &std::process::Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn ids(points: &[serde_json::Value]) -> Vec<String> {
    points
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

fn tagged(t: &TestVault, args: &[&str]) -> Vec<String> {
    let mut a = vec!["points", "--json"];
    a.extend_from_slice(args);
    ids(json(&t.ok(&a)).as_array().unwrap())
}

#[test]
fn tags_and_notes_are_kept_shown_and_filtered() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"x");
    let s = src.to_str().unwrap();
    t.ok(&[
        "backup",
        "--item",
        "docs",
        s,
        "--tag",
        "t1",
        "--note",
        "before the upgrade",
    ]);
    t.ok(&["backup", "docs", "--tag", "t2,t3", "--tag", "t2"]);
    t.ok(&["backup", "docs"]);
    let all = t.points("docs");
    let (p1, p2, p3) = (&all[0], &all[1], &all[2]);
    assert_eq!(p1["tags"], serde_json::json!(["t1"]));
    assert_eq!(p1["note"], "before the upgrade");
    assert_eq!(
        p2["tags"],
        serde_json::json!(["t2", "t3"]),
        "duplicates dropped"
    );
    assert_eq!(p2["note"], serde_json::Value::Null);
    assert_eq!(p3["tags"], serde_json::json!([]));
    let id = |p: &serde_json::Value| p["id"].as_str().unwrap().to_string();
    // --tag a,b: both; repeated: either (restic's rule).
    assert_eq!(tagged(&t, &["--tag", "t1"]), [id(p1)]);
    assert_eq!(tagged(&t, &["--tag", "t3,t2"]), [id(p2)]);
    assert_eq!(tagged(&t, &["--tag", "t1,t2"]), Vec::<String>::new());
    assert_eq!(
        tagged(&t, &["--tag", "t1", "--tag", "t3"]),
        [id(p1), id(p2)]
    );
    let human = t.ok(&["points", "docs"]);
    assert!(human.contains("TAGS") && human.contains("NOTE"), "{human}");
    assert!(
        human.contains("t2,t3") && human.contains("before the upgrade"),
        "{human}"
    );
    let one = t.ok(&["points", "--tag", "t1"]);
    assert!(one.contains(&id(p1)) && !one.contains(&id(p2)), "{one}");
    // Tags stay on soft-deleted points, and filter them too.
    t.ok(&["forget", &format!("docs@{}", id(p1))]);
    let deleted = json(&t.ok(&["points", "--deleted", "--json", "--tag", "t1"]));
    assert_eq!(ids(deleted.as_array().unwrap()), [id(p1)]);
    assert_eq!(deleted[0]["note"], "before the upgrade");
    // Bad tags are usage errors; nothing is backed up.
    for bad in ["a b", "", "x,,y"] {
        let out = t.run(&["backup", "docs", "--tag", bad]);
        assert_usage(&out, "invalid tag");
    }
    assert_usage(&t.run(&["points", "--tag", "a b"]), "invalid tag");
    let long = "n".repeat(5000);
    assert_usage(
        &t.run(&["backup", "docs", "--note", &long]),
        "--note is longer",
    );
    assert_eq!(t.points("docs").len(), 2);
}

/// A disk image and a VM, to see every kind in `items`.
fn disk_and_vm(t: &TestVault) -> (String, String) {
    let (img, cfg) = (t.path("d.img"), t.path("vm.conf"));
    write(&img, &noise(65536, 3));
    write(&cfg, b"memory = 1G\n");
    let d = json(&t.ok(&[
        "backup-disk",
        "--json",
        "--item",
        "disk1",
        img.to_str().unwrap(),
        "--tag",
        "disk-tag",
        "--note",
        "raw image",
    ]));
    let v = json(&t.ok(&[
        "backup-vm",
        "--json",
        "--item",
        "vm1",
        "--config",
        cfg.to_str().unwrap(),
        "--disk",
        img.to_str().unwrap(),
        "--pre-script",
        "true",
    ]));
    let id = |v: &serde_json::Value| v[0]["point"]["id"].as_str().unwrap().to_string();
    (id(&d), id(&v))
}

#[test]
fn items_show_every_kind_and_item_show_tells_all() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"x");
    let p = t.backup("docs", &src);
    let (disk_point, vm_point) = disk_and_vm(&t);
    let table = t.ok(&["items"]);
    let header = table.lines().next().unwrap();
    for col in [
        "ITEM",
        "KIND",
        "STATE",
        "POLICY",
        "POINTS",
        "LAST POINT",
        "SOURCE",
    ] {
        assert!(header.contains(col), "{table}");
    }
    for (name, kind, point, source) in [
        (
            "docs",
            "files",
            p["point"]["id"].as_str().unwrap(),
            src.clone(),
        ),
        ("disk1", "disk", disk_point.as_str(), t.path("d.img")),
        ("vm1", "vm", vm_point.as_str(), t.path("vm.conf")),
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {table}"));
        assert!(line.contains(kind) && line.contains("default"), "{line}");
        assert!(line.contains(point), "no last point in {line}");
        assert!(
            line.contains(source.to_str().unwrap()),
            "no source in {line}"
        );
    }
    assert!(table.contains("pre-script: true"), "{table}");
    // Sized to content: no line ends in padding.
    assert!(table.lines().all(|l| l == l.trim_end()), "{table}");
    let listed = json(&t.ok(&["items", "--json"]));
    let vm = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "vm1")
        .unwrap();
    assert_eq!(vm["last_point"]["id"], vm_point.as_str());
    assert_eq!(vm["points"], 1);

    let show = t.ok(&["item", "show", "vm1"]);
    for needle in [
        "kind",
        "vm",
        "pre-script",
        "true",
        "policy",
        "default",
        "protected",
        &vm_point,
    ] {
        assert!(show.contains(needle), "{needle} missing: {show}");
    }
    // Tags and notes on disk points too.
    assert_eq!(
        tagged(&t, &["--tag", "disk-tag"]),
        std::slice::from_ref(&disk_point)
    );
    assert_eq!(t.points("disk1")[0]["note"], "raw image");
    let shown = json(&t.ok(&["item", "show", "docs", "--json"]));
    assert_eq!(shown["kind"], "files");
    assert_eq!(shown["points"], 1);
    assert_eq!(shown["last_point"]["id"], p["point"]["id"]);
    assert_eq!(shown["source"]["path"], src.to_str().unwrap());
    assert_fails(&t.run(&["item", "show", "nope"]), "no item named \"nope\"");
}

#[test]
fn item_edit_changes_what_the_next_backup_does() {
    let t = TestVault::new();
    let (src, src2) = (t.path("src"), t.path("src2"));
    write(&src.join("f"), b"x");
    write(&src2.join("a.txt"), b"kept");
    write(&src2.join("b.log"), b"left out");
    t.backup("docs", &src);
    t.ok(&[
        "policy",
        "create",
        "weekly",
        "--schedule",
        "weekly sun 03:00",
        "--keep-weekly",
        "8",
    ]);
    let out = t.ok(&[
        "item",
        "edit",
        "docs",
        "--path",
        src2.to_str().unwrap(),
        "--exclude",
        "*.log",
        "--exclude-larger-than",
        "10M",
        "--policy",
        "weekly",
    ]);
    assert!(out.contains("changed item \"docs\""), "{out}");
    assert!(
        out.contains("--exclude *.log") && out.contains("weekly"),
        "{out}"
    );
    let shown = json(&t.ok(&["item", "show", "docs", "--json"]));
    assert_eq!(shown["policy"], "weekly");
    assert_eq!(shown["source"]["path"], src2.to_str().unwrap());
    assert_eq!(shown["source"]["exclude_larger_than"], 10 << 20);
    t.ok(&["backup", "docs"]);
    let dst = t.path("dst");
    t.restore("docs", &dst);
    assert!(dst.join("a.txt").exists() && !dst.join("b.log").exists() && !dst.join("f").exists());
    // --clear-excludes and --no-exclude-larger-than take rules away.
    t.ok(&["item", "edit", "docs", "--clear-excludes"]);
    let shown = json(&t.ok(&["item", "show", "docs", "--json"]));
    assert_eq!(shown["source"]["excludes"], serde_json::json!([]));
    assert_eq!(shown["source"].get("exclude_larger_than"), None);

    // Scripts of a VM item; options that cannot apply are refused and change nothing.
    disk_and_vm(&t);
    t.ok(&[
        "item",
        "edit",
        "vm1",
        "--pre-script",
        "echo freeze",
        "--no-post-script",
    ]);
    let vm = json(&t.ok(&["item", "show", "vm1", "--json"]));
    assert_eq!(vm["pre_script"], "echo freeze");
    assert_fails(
        &t.run(&["item", "edit", "disk1", "--exclude", "*.x"]),
        "applies to files items",
    );
    assert_fails(
        &t.run(&["item", "edit", "docs", "--pre-script", "x"]),
        "apply to vm items",
    );
    assert_fails(
        &t.run(&[
            "item",
            "edit",
            "docs",
            "--path",
            t.path("src2/a.txt").to_str().unwrap(),
        ]),
        "is not a directory",
    );
    assert_fails(
        &t.run(&["item", "edit", "docs", "--policy", "nope"]),
        "no policy named",
    );
    assert_usage(&t.run(&["item", "edit", "docs"]), "nothing to change");
    assert_usage(
        &t.run(&["item", "edit", "docs", "--exclude", "["]),
        "bad --exclude pattern",
    );
    assert_eq!(
        json(&t.ok(&["item", "show", "docs", "--json"]))["policy"],
        "weekly"
    );
}

#[test]
fn rename_keeps_points_and_rm_refuses_until_points_are_forgotten() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"x");
    t.backup("docs", &src);
    t.ok(&["backup", "docs", "--tag", "kept"]);
    let before = ids(&t.points("docs"));
    let out = t.ok(&["item", "rename", "docs", "papers"]);
    assert!(out.contains("its 2 points follow"), "{out}");
    assert_eq!(ids(&t.points("papers")), before);
    assert_eq!(tagged(&t, &["--tag", "kept"]), before[1..]);
    assert_fails(&t.run(&["points", "docs"]), "no item named \"docs\"");
    assert_fails(
        &t.run(&["item", "rename", "docs", "x"]),
        "no item named \"docs\"",
    );
    // The stored definition and the files cache followed the rename: the previous point is
    // found, so no file is new (an unchanged one is read again only when the cache cannot
    // trust it yet, listed `M`); a new item lists every file as new.
    let out = t.ok(&["backup", "papers", "-v"]);
    assert!(!out.lines().any(|l| l.starts_with("+ ")), "{out}");
    let out = t.ok(&["backup", "--item", "other", src.to_str().unwrap(), "-v"]);
    assert!(
        out.contains(&format!("+ {}", src.join("f").display())),
        "{out}"
    );
    assert_fails(
        &t.run(&["item", "rename", "papers", "other"]),
        "already exists",
    );
    assert_usage(
        &t.run(&["item", "rename", "papers", "bad/name"]),
        "invalid item name",
    );

    // rm: refused while points exist; --forget-points soft-deletes them with the item.
    let out = t.run(&["item", "rm", "papers"]);
    assert_fails(&out, "--forget-points");
    assert_eq!(t.points("papers").len(), 3);
    let out = t.ok(&["item", "rm", "papers", "--forget-points"]);
    assert!(out.contains("3 points are soft-deleted"), "{out}");
    assert_eq!(state(&t, "papers"), "removed");
    let deleted = json(&t.ok(&["points", "--deleted", "papers", "--json"]));
    assert_eq!(deleted.as_array().unwrap().len(), 3);
    assert_fails(&t.run(&["backup", "papers"]), "was removed");
    // A point comes back with `undelete`; purging the others frees the name once none is left.
    let first = deleted[0]["id"].as_str().unwrap().to_string();
    t.ok(&["undelete", &format!("papers@{first}")]);
    assert_eq!(ids(&t.points("papers")), std::slice::from_ref(&first));
    let others: Vec<String> = deleted.as_array().unwrap()[1..]
        .iter()
        .map(|p| format!("papers@{}", p["id"].as_str().unwrap()))
        .collect();
    let mut purge = vec!["purge"];
    purge.extend(others.iter().map(String::as_str));
    t.ok(&purge);
    assert_eq!(
        state(&t, "papers"),
        "removed",
        "a live point keeps the item"
    );
    t.ok(&["forget", &format!("papers@{first}")]);
    t.ok(&["purge", &format!("papers@{first}")]);
    let names = json(&t.ok(&["items", "--json"]));
    assert!(
        names
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["name"] != "papers"),
        "{names}"
    );
    t.backup("papers", &src); // the name is free again

    // With soft delete off, the points are purged and the item goes at once.
    t.ok(&["vault", "set", "soft-delete-days", "0"]);
    let out = t.ok(&["item", "rm", "other", "--forget-points"]);
    assert!(out.contains("were purged"), "{out}");
    assert_fails(&t.run(&["item", "show", "other"]), "no item named");
    // An item without points goes without the option.
    let img = t.path("d.img");
    write(&img, &[1u8; 4096]);
    t.ok(&["backup-disk", "--item", "disk1", img.to_str().unwrap()]);
    t.ok(&["item", "rm", "disk1", "--forget-points"]);
    assert_fails(&t.run(&["item", "rm", "disk1"]), "no item named");
}

#[test]
fn a_running_mount_shows_a_renamed_item_under_its_new_name() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"content");
    t.backup("docs", &src);
    let m = MountGuard::start(&t, &[]);
    let items = |m: &MountGuard| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(m.dir.join("items"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(items(&m), ["docs"]);
    t.ok(&["item", "rename", "docs", "papers"]);
    // The mount notices within a refresh (about a second): poll with a deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    while items(&m) != ["papers"] {
        assert!(Instant::now() < deadline, "still {:?}", items(&m));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read(m.latest("papers").join("f")).unwrap(),
        b"content"
    );
}

/// A child process killed (if still running) when the test ends, so a failing test never
/// leaves a writer blocked on its fifo.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_file(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn lock_wait_names_the_holder_and_waits_as_told() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("f"), b"x");
    t.backup("docs", &src);
    let (img, cfg) = (t.path("d.img"), t.path("vm.conf"));
    write(&img, &noise(65536, 3));
    write(&cfg, b"memory = 1G\n");
    let (ready, fifo) = (t.path("ready"), t.path("fifo"));
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // The holder: a VM backup whose pre-script (run under the writer lock) waits on the fifo.
    let pre = format!("touch {}; read x < {}", ready.display(), fifo.display());
    let holder = KillOnDrop(
        t.cmd()
            .args(["backup-vm", "--item", "vm1", "--config"])
            .arg(&cfg)
            .arg("--disk")
            .arg(&img)
            .args(["--pre-script", &pre])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = holder.0.id();
    wait_for_file(&ready);
    let holder_text = format!("PID {pid} (coffre backup-vm --item vm1");

    // --lock-wait 0: fails at once, naming the holder.
    let out = t.run(&["--lock-wait", "0", "backup", "docs"]);
    assert_fails(&out, &holder_text);
    assert!(
        stderr(&out).contains("locked by another writer"),
        "{}",
        stderr(&out)
    );
    // --no-wait is the same.
    assert_fails(&t.run(&["backup", "docs", "--no-wait"]), &holder_text);
    // A bounded wait says whom it waits for, then gives up after the limit.
    let started = Instant::now();
    let out = t.run(&["--lock-wait", "1s", "item", "rename", "docs", "papers"]);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_fails(&out, "gave up after waiting 1s");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("waiting for the vault lock held by {holder_text}")),
        "{err}"
    );
    assert_eq!(t.points("docs").len(), 1, "nothing changed");

    // The default: one line saying whom it waits for, then it waits until the lock is free.
    let mut waiter = KillOnDrop(
        t.cmd()
            .args(["backup", "docs"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = waiter.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("no waiting line");
    assert!(
        line.starts_with(&format!("waiting for the vault lock held by {holder_text}")),
        "{line}"
    );
    assert!(line.contains(" since ") && line.ends_with(" UTC"), "{line}");
    assert!(
        waiter.0.try_wait().unwrap().is_none(),
        "the waiter did not wait"
    );
    // Release the holder: both finish.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let mut holder = holder;
    let s = wait_within(&mut holder.0, Duration::from_secs(60)).expect("holder hangs");
    assert!(s.success());
    let s = wait_within(&mut waiter.0, Duration::from_secs(60)).expect("waiter hangs");
    assert!(s.success(), "the waiting backup failed");
    assert_eq!(t.points("docs").len(), 2);
    assert!(
        rx.try_iter().all(|l| !l.starts_with("waiting")),
        "said it waits twice"
    );

    // Bad durations are usage errors.
    assert_usage(
        &t.run(&["--lock-wait", "soon", "backup", "docs"]),
        "not a duration",
    );
    assert_usage(
        &t.run(&["--lock-wait=-5s", "backup", "docs"]),
        "not a duration",
    );
}
