//! Progress bars and Ctrl-C, through the real binaries: a bar is drawn on a terminal (a pty made
//! by util-linux `script`) and never in a pipe, `-q` silences it and the summaries, and an
//! interrupted backup keeps nothing of what it was doing and says so.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// Runs `bin args` on a pseudo-terminal (`script -qec`), with the vault of `t` and `env`; returns
/// the exit status and everything the terminal showed (stdout and stderr together).
fn on_terminal(
    t: &TestVault,
    bin: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let line = std::iter::once(bin)
        .chain(args.iter().copied())
        .map(|a| {
            assert!(!a.contains('\''), "{a}");
            format!("'{a}'")
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env("COFFRE_VAULT", t.vault())
        .env("COLUMNS", "200")
        .env("TERM", "xterm");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with_deadline(&mut cmd, Duration::from_secs(120));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), text)
}

const COFFRE: &str = env!("CARGO_BIN_EXE_coffre");
const SIDECAR: &str = env!("CARGO_BIN_EXE_coffre-restore");

fn tree(root: &Path) {
    write(&root.join("big"), &noise(3 << 20, 1));
    write(&root.join("d/a"), b"a");
    write(&root.join("d/b"), b"bb");
}

fn assert_no_bar(what: &str, out: &Output) {
    for s in [&out.stdout, &out.stderr] {
        let s = String::from_utf8_lossy(s);
        assert!(
            !s.contains('\r') && !s.contains('\x1b') && !s.contains("B/s"),
            "{what}: a bar reached a pipe: {s:?}"
        );
    }
}

#[test]
fn backup_and_restore_show_bars_on_a_terminal_only() {
    let t = TestVault::new();
    let src = t.path("src");
    tree(&src);
    let (code, screen) = on_terminal(
        &t,
        COFFRE,
        &["backup", "--item", "x", src.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{screen}");
    // The spinner: item, files, bytes, rate; then the summary in words.
    assert!(screen.contains("backup x: "), "{screen}");
    assert!(screen.contains("B/s"), "{screen}");
    assert!(screen.contains("3 files, 2 dirs, 3.0 MiB"), "{screen}");
    // The bar is cleared before the summary: the summary line starts clean.
    assert!(
        screen.contains("\x1b[2Kpoint ") || screen.starts_with("creating vault"),
        "{screen}"
    );

    let dst = t.path("r1");
    let (code, screen) = on_terminal(
        &t,
        COFFRE,
        &["restore", "x", "--to", dst.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{screen}");
    // The whole point: its size is known, so the bar has a total, a percentage and time left.
    assert!(screen.contains("/3.00 MiB"), "{screen}");
    assert!(
        screen.contains("% ") && screen.contains(" left"),
        "{screen}"
    );

    // In a pipe: no bar, same summaries.
    write(&src.join("d/c"), b"c");
    let out = t
        .cmd()
        .args(["backup", "--item", "x", src.to_str().unwrap()])
        .output_within();
    assert!(out.status.success());
    assert_no_bar("backup", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 files, 2 dirs"));
    let out = t
        .cmd()
        .args(["restore", "x", "--to", t.path("r2").to_str().unwrap()])
        .output_within();
    assert!(out.status.success());
    assert_no_bar("restore", &out);
}

#[test]
fn quiet_silences_bars_and_summaries_but_not_errors() {
    let t = TestVault::new();
    let src = t.path("src");
    tree(&src);
    let (code, screen) = on_terminal(
        &t,
        COFFRE,
        &["-q", "backup", "--item", "x", src.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        !screen.contains("backup x") && !screen.contains("point "),
        "{screen:?}"
    );
    let dst = t.path("r");
    let (code, screen) = on_terminal(
        &t,
        COFFRE,
        &["restore", "-q", "x", "--to", dst.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        !screen.contains('%') && !screen.contains("restored"),
        "{screen:?}"
    );
    assert_eq!(std::fs::read(dst.join("d/b")).unwrap(), b"bb");
    // Errors still show.
    let (code, screen) = on_terminal(
        &t,
        COFFRE,
        &["-q", "restore", "nosuch", "--to", dst.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(screen.contains("error: "), "{screen:?}");
}

#[test]
fn backup_of_several_items_shows_a_bar_per_item_and_the_count() {
    let t = TestVault::new();
    for name in ["a", "b", "c"] {
        let src = t.path(name);
        write(&src.join("f"), name.as_bytes());
        t.ok(&["backup", "-q", "--item", name, src.to_str().unwrap()]);
    }
    let (code, screen) = on_terminal(&t, COFFRE, &["backup", "a", "b", "c"], &[]);
    assert_eq!(code, Some(0), "{screen}");
    for s in [
        "backup a: ",
        "backup b: ",
        "backup c: ",
        "backup: 0 of 3 done",
    ] {
        assert!(screen.contains(s), "{s:?} not shown: {screen:?}");
    }
    // Each item's summary, in order.
    let at = |s: &str| screen.find(s).unwrap_or_else(|| panic!("{s}: {screen}"));
    assert!(at("of \"a\"") < at("of \"b\"") && at("of \"b\"") < at("of \"c\""));
}

#[test]
fn disk_backup_and_sidecar_restore_show_a_byte_bar() {
    let t = TestVault::new();
    let img = t.path("disk.img");
    write(&img, &noise(2 << 20, 7));
    let (code, screen) = on_terminal(
        &t,
        COFFRE,
        &["backup-disk", "--item", "d", img.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("backup d: [") && screen.contains("/2.00 MiB"),
        "{screen}"
    );
    let to = t.path("out.img");
    let (code, screen) = on_terminal(
        &t,
        SIDECAR,
        &["disk", "d", "--to", to.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("% ") && screen.contains("/2.00 MiB"),
        "{screen}"
    );
    assert_eq!(std::fs::read(&to).unwrap(), std::fs::read(&img).unwrap());
    let to2 = t.path("out2.img");
    let (code, screen) = on_terminal(
        &t,
        SIDECAR,
        &["-q", "disk", "d", "--to", to2.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        !screen.contains('%') && !screen.contains("written"),
        "{screen:?}"
    );
    assert_eq!(std::fs::read(&to2).unwrap(), std::fs::read(&img).unwrap());
}

/// Files of `packs/` with their sizes, and whether a quarantine exists.
#[cfg(feature = "fault-injection")]
fn packs(t: &TestVault) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(t.vault().join("packs"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Ctrl-C (a real SIGINT, raised once a pack of the running backup is sealed) stops the backup
/// before its commit: the line says nothing was committed, and it is true — same points, same
/// packs, and the next writer finds no stray pack to quarantine.
#[cfg(feature = "fault-injection")]
#[test]
fn interrupted_backup_keeps_nothing_and_says_so() {
    let t = TestVault::new();
    let src = t.path("src");
    write(&src.join("small"), b"x");
    t.ok(&["backup", "--item", "x", src.to_str().unwrap()]);
    let before = (t.points("x"), packs(&t));
    // More than one pack (32 MiB) of new data: a pack is sealed mid-backup.
    write(&src.join("big"), &noise(40 << 20, 3));
    let (code, screen) = on_terminal(
        &t,
        COFFRE,
        &["backup", "x"],
        &[("COFFRE_INTERRUPT_AT", "pack-sealed")],
    );
    assert_eq!(code, Some(130), "{screen}");
    let last = screen.lines().rfind(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(
        last.rsplit('\x1b')
            .next()
            .unwrap()
            .trim_start_matches("[2K")
            .trim(),
        "interrupted: nothing was committed; the vault is unchanged",
        "{screen:?}"
    );
    assert_eq!((t.points("x"), packs(&t)), before, "the vault changed");
    // The next writer quarantines nothing (no pack was left behind) and backs up.
    t.ok(&["backup", "x"]);
    assert!(
        !t.vault().join("packs/orphaned").exists()
            || std::fs::read_dir(t.vault().join("packs/orphaned"))
                .unwrap()
                .next()
                .is_none()
    );
    assert_eq!(t.points("x").len(), 2);
}

/// With several items, the ones committed before the interrupt are kept, and the line names them.
#[cfg(feature = "fault-injection")]
#[test]
fn interrupted_backup_of_several_items_names_what_was_kept() {
    let t = TestVault::new();
    let (a, b) = (t.path("a"), t.path("b"));
    write(&a.join("f"), b"a");
    write(&b.join("f"), b"b");
    t.ok(&["backup", "-q", "--item", "a", a.to_str().unwrap()]);
    t.ok(&["backup", "-q", "--item", "b", b.to_str().unwrap()]);
    // `a` has nothing new (no pack sealed); `b` seals a pack and is interrupted there.
    write(&b.join("big"), &noise(40 << 20, 4));
    let out = t
        .cmd()
        .args(["backup", "a", "b", "c"])
        .env("COFFRE_INTERRUPT_AT", "pack-sealed")
        .output_within();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).lines().last().unwrap(),
        "interrupted: the new point of \"a\" is kept; nothing else was committed"
    );
    assert_eq!(t.points("a").len(), 2);
    assert_eq!(t.points("b").len(), 1);
    // Under --json: the points made, then the line as a JSON error.
    write(&b.join("big2"), &noise(40 << 20, 5));
    let out = t
        .cmd()
        .args(["backup", "--json", "a", "b"])
        .env("COFFRE_INTERRUPT_AT", "pack-sealed")
        .output_within();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made.as_array().unwrap().len(), 1);
    assert_eq!(made[0]["item"], "a");
    assert_eq!(
        stderr(&out).lines().last().unwrap(),
        r#"{"error":"interrupted: the new point of \"a\" is kept; nothing else was committed"}"#
    );
}

/// The bar keeps moving while nothing progresses (a large file, a slow disk): the backup below
/// blocks on a FUSE mount whose server is stopped, and the terminal still gets fresh frames,
/// the elapsed time growing over the same counts.
#[test]
fn the_bar_moves_while_the_backup_waits() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let served = TestVault::new();
    let inner = served.path("src");
    write(&inner.join("f"), b"f");
    served.backup("x", &inner);
    let m = MountGuard::start(&served, &[]);
    let pid = m.child.as_ref().unwrap().id() as i32;
    let t = TestVault::new();
    // SAFETY: stopping and continuing our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let line = format!(
        "'{COFFRE}' backup --item y '{}'",
        served.dir.path().display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("COFFRE_VAULT", t.vault())
        .env("COLUMNS", "200")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let screen = Arc::new(Mutex::new(String::new()));
    let mut out = child.stdout.take().unwrap();
    let sink = screen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    // Frames as (counts, elapsed): "backup y: 3 files, 1.2 KiB, 10 B/s, 2s".
    let frames = |s: &str| -> Vec<(String, String)> {
        s.split('\r')
            .filter_map(|f| f.split_once("backup y: ").map(|x| x.1.to_string()))
            .filter_map(|f| {
                let parts: Vec<&str> = f.trim_end().split(", ").collect();
                (parts.len() == 4).then(|| {
                    (
                        format!("{}, {}", parts[0], parts[1]),
                        parts[3].trim().to_string(),
                    )
                })
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let frozen = loop {
        let f = frames(&screen.lock().unwrap());
        let stuck = f.iter().find(|(_, e)| e == "2s").and_then(|(c, _)| {
            f.iter()
                .any(|(c1, e1)| c1 == c && e1 == "1s")
                .then(|| c.clone())
        });
        if let Some(c) = stuck {
            break c;
        }
        if std::time::Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGCONT) };
            panic!("no steady frames: {:?}", screen.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let status = wait_within(&mut child, Duration::from_secs(60)).expect("backup finished");
    reader.join().unwrap();
    assert!(status.success(), "{}", screen.lock().unwrap());
    assert!(frozen.contains(" file"), "{frozen}");
    drop(m); // unmounts
}

/// A restore cannot stop half-way cleanly: Ctrl-C ends it at once, with one line saying what is
/// left, on a terminal (the bar cleared first) and in a pipe alike.
#[cfg(feature = "fault-injection")]
#[test]
fn interrupted_restores_say_what_is_left() {
    use std::os::unix::process::ExitStatusExt;
    let t = TestVault::new();
    let src = t.path("src");
    tree(&src);
    t.backup("x", &src);
    let dst = t.path("r");
    let said = format!(
        "interrupted: the restore into {} did not finish; entries it was replacing are as they \
         were, a new file may be partly written; the same command completes it",
        dst.display()
    );
    let env = [("COFFRE_INTERRUPT_AT", "restore-file-written")];
    let (code, screen) = on_terminal(
        &t,
        COFFRE,
        &["restore", "x", "--to", dst.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, Some(130), "{screen}");
    assert!(screen.contains(&format!("\x1b[2K{said}")), "{screen:?}");
    assert!(!screen.contains("restored "), "{screen:?}");
    // The same command completes it.
    t.ok(&["restore", "x", "--to", dst.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(dst.join("big")).unwrap(),
        std::fs::read(src.join("big")).unwrap()
    );

    let img = t.path("disk.img");
    write(&img, &noise(2 << 20, 9));
    t.ok(&["backup-disk", "-q", "--item", "d", img.to_str().unwrap()]);
    let to = t.path("out.img");
    let out = Command::new(SIDECAR)
        .env("COFFRE_VAULT", t.vault())
        .env("COFFRE_INTERRUPT_AT", "image-data-written")
        .args(["disk", "d", "--to", to.to_str().unwrap()])
        .output_within();
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "{}", stderr(&out));
    let point = &t.points("d")[0]["id"];
    assert_eq!(
        stderr(&out).lines().last().unwrap(),
        format!(
            "interrupted: the restore of d@{} did not finish; a file target is replaced only when \
             complete (a partial copy may remain beside it), a device may be partly written; the \
             same command completes it",
            point.as_str().unwrap()
        )
    );
    assert!(!to.exists(), "a partial image took the target's name");
}

#[cfg(feature = "fault-injection")]
#[test]
fn verify_shows_a_byte_bar_with_its_total_on_a_terminal_only() {
    let t = TestVault::new();
    let src = t.path("src");
    tree(&src);
    t.backup("a", &src);
    write(&src.join("more"), &noise(1 << 20, 9));
    t.backup("a", &src);
    // A slow disk (300 ms a pack), so the bar is drawn more than once.
    let slow = [("COFFRE_TEST_DELAY", "verify-pack:300")];
    let (code, screen) = on_terminal(&t, COFFRE, &["verify", "--threads", "1"], &slow);
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains('%') && screen.contains("MiB"), "{screen}");
    assert!(screen.contains("no damage found"), "{screen}");
    let (code, screen) = on_terminal(&t, COFFRE, &["-q", "verify"], &slow);
    assert_eq!(code, Some(0), "{screen}");
    assert!(!screen.contains('%'), "-q: {screen:?}");
    assert!(
        !screen.contains("no damage"),
        "-q prints nothing when all is well: {screen:?}"
    );
    let out = t.run(&["verify"]);
    assert!(out.status.success());
    assert_no_bar("verify", &out);
}
