//! End-to-end replication to object storage, against the real services' emulators started here
//! (moto's S3 server and Azurite, which `.ci/run` installs; a test fails if one cannot start):
//! a replica restores and mounts every point exactly and verifies; the second run after a 1 %
//! change sends about that 1 %; a killed run resumes without sending a pack twice and shows
//! nothing half-done; soft deletes and purges follow; a writing command on the replica, a bad
//! URL, an unreachable endpoint and missing credentials fail with one clear line.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Azurite's well-known development account.
const AZ_ACCOUNT: &str = "devstoreaccount1";
const AZ_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An emulator process on a free port, killed when dropped.
struct Emulator {
    child: Child,
    port: u16,
    azure: bool,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Emulator {
    /// moto's S3 server with bucket `coffre`.
    fn s3() -> Emulator {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let e = Self::start(cmd, port, false, dir);
        let (code, body) = e.http("PUT", "/coffre", &[]);
        assert_eq!(code, 200, "cannot create the S3 bucket: {body}");
        e
    }

    /// Azurite's blob service with container `coffre`.
    fn azure() -> Emulator {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("azurite-blob");
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path())
            .args(["--skipApiVersionCheck", "--silent"]);
        let e = Self::start(cmd, port, true, dir);
        let date = jiff::Timestamp::now()
            .strftime("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
             /{AZ_ACCOUNT}/{AZ_ACCOUNT}/coffre\nrestype:container"
        );
        let auth = format!("SharedKey {AZ_ACCOUNT}:{}", hmac_b64(AZ_KEY, &to_sign));
        let (code, body) = e.http(
            "PUT",
            &format!("/{AZ_ACCOUNT}/coffre?restype=container"),
            &[
                ("x-ms-date", &date),
                ("x-ms-version", version),
                ("Authorization", &auth),
            ],
        );
        assert_eq!(code, 201, "cannot create the Azure container: {body}");
        e
    }

    /// Spawns `cmd` and waits (at most a minute) until its port answers; panics if it cannot.
    fn start(mut cmd: Command, port: u16, azure: bool, dir: tempfile::TempDir) -> Emulator {
        let name = format!("{:?}", cmd.get_program());
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({e}); .ci/run installs it"));
        let mut e = Emulator {
            child,
            port,
            azure,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return e;
            }
            if let Ok(Some(status)) = e.child.try_wait() {
                let log = std::fs::read_to_string(e._dir.path().join("log")).unwrap_or_default();
                panic!("{name} exited with {status} before listening: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not listen on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One HTTP/1.1 request with an empty body: (status, response text).
    fn http(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n",
            self.port
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, resp)
    }

    /// The environment coffre reads to reach this emulator.
    fn env(&self) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{}", self.port);
        let pairs: Vec<(&str, String)> = if self.azure {
            vec![
                ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
                ("AZURITE_BLOB_STORAGE_URL", url),
            ]
        } else {
            vec![
                ("AWS_ACCESS_KEY_ID", "test".into()),
                ("AWS_SECRET_ACCESS_KEY", "test".into()),
                ("AWS_REGION", "us-east-1".into()),
                ("AWS_ENDPOINT", url),
                ("AWS_ALLOW_HTTP", "true".into()),
            ]
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn url(&self, prefix: &str) -> String {
        match self.azure {
            true => format!("azure://coffre/{prefix}"),
            false => format!("s3://coffre/{prefix}"),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// base64(HMAC-SHA256(base64-decoded key, text)): Azure's Shared Key signature.
fn hmac_b64(key: &str, text: &str) -> String {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A test vault and the emulator its replica lives in; coffre runs with the emulator's
/// environment and a private cache directory.
struct Setup {
    t: TestVault,
    emu: Emulator,
}

impl Setup {
    fn new(emu: Emulator) -> Setup {
        Setup {
            t: TestVault::new(),
            emu,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = self.t.cmd();
        c.envs(self.emu.env())
            .env("XDG_CACHE_HOME", self.t.path("cache"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run_with_deadline(self.cmd().args(args), Duration::from_secs(180))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "coffre {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn replicate(&self, url: &str) -> serde_json::Value {
        json(&self.ok(&["replicate", "--json", "--to", url]))
    }

    fn point_ids(&self, vault: &str, deleted: bool) -> Vec<String> {
        let mut args = vec!["--vault", vault, "points", "--json"];
        if deleted {
            args.push("--deleted");
        }
        let mut ids: Vec<String> = json(&self.ok(&args))
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    fn restores(&self, vault: &str, spec: &str, snap: &BTreeMap<Vec<u8>, Snap>) {
        let to = self.t.path("restored");
        if to.exists() {
            std::fs::remove_dir_all(&to).unwrap();
        }
        self.ok(&[
            "--vault",
            vault,
            "restore",
            spec,
            "--to",
            to.to_str().unwrap(),
        ]);
        assert_same(snap, &snapshot(&to, false));
        std::fs::remove_dir_all(&to).unwrap();
    }

    /// Mounts `vault` (the emulator's environment passed through `env`) with a block cache of
    /// at most `cache_mb`.
    fn mount(&self, vault: &str, cache_mb: u64) -> MountGuard {
        let mut wrapper = vec![
            "env".to_string(),
            format!("COFFRE_REMOTE_CACHE_MB={cache_mb}"),
        ];
        wrapper.extend(self.emu.env().into_iter().map(|(k, v)| format!("{k}={v}")));
        wrapper.push(format!("XDG_CACHE_HOME={}", self.t.path("cache").display()));
        let w: Vec<&str> = wrapper.iter().map(|s| s.as_str()).collect();
        MountGuard::start_wrapped(&self.t, &w, &["--vault", vault])
    }
}

/// `backup_files` naming the point as `item@id`.
fn backup_spec(
    t: &TestVault,
    item: &str,
    src: &Path,
    files: &[(&str, Vec<u8>)],
) -> (String, BTreeMap<Vec<u8>, Snap>) {
    let (id, snap) = backup_files(t, item, src, files);
    (format!("{item}@{id}"), snap)
}

/// Items `a` (three points), `b` (two) and `c` (one, many files): one pack per backup.
fn several_items(t: &TestVault) -> Vec<(String, BTreeMap<Vec<u8>, Snap>)> {
    let mut out = Vec::new();
    for k in 0..3u64 {
        let files = [
            ("big", noise(400_000, 10 + k)),
            ("notes/t.txt", text(50_000, 20 + k)),
            ("same", noise(100_000, 5)),
        ];
        out.push(backup_spec(t, "a", &t.path("a"), &files));
    }
    for k in 0..2u64 {
        let files = [
            ("disk.img", noise(300_000, 30 + k)),
            ("same", noise(100_000, 5)),
        ];
        out.push(backup_spec(t, "b", &t.path("b"), &files));
    }
    let files: Vec<(String, Vec<u8>)> = (0..100u64)
        .map(|i| (format!("d{}/f{i}", i % 7), noise(20_000, 100 + i)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    out.push(backup_spec(t, "c", &t.path("c"), &refs));
    out
}

fn pack_bytes(t: &TestVault) -> u64 {
    std::fs::read_dir(t.vault().join("packs"))
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Bytes in the block caches under the cache directory `cache`.
fn blocks_bytes(cache: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(cache.join("coffre/remote")).unwrap() {
        let dir = e.unwrap().path().join("blocks");
        for b in std::fs::read_dir(&dir).into_iter().flatten() {
            total += b.unwrap().metadata().unwrap().len();
        }
    }
    total
}

/// The whole story on one service: replicate, read every point back (restore and mount),
/// verify, refuse writes, an incremental run after a 1 % change, soft delete and purge.
fn replica_cycle(s: &Setup) {
    let t = &s.t;
    let points = several_items(t);
    let url = s.emu.url("host1/vault");
    let first = s.replicate(&url);
    assert_eq!(first["created"], true, "{first}");
    assert_eq!(first["points_added"], 6, "{first}");
    assert_eq!(first["bytes_copied"], pack_bytes(t), "{first}");
    assert_eq!(
        s.point_ids(&url, false),
        s.point_ids(t.vault().to_str().unwrap(), false)
    );
    for (spec, snap) in &points {
        s.restores(&url, spec, snap);
    }
    {
        // Every point read through a mount whose block cache may hold 1 MiB: exact, and the
        // cache stays within its bound (the packs are several times that).
        let m = s.mount(&url, 1);
        for (spec, snap) in &points {
            let id = spec.split_once('@').unwrap().1;
            let dir = std::fs::canonicalize(m.dir.join("ids").join(id)).unwrap();
            assert_same(snap, &snapshot(&dir, false));
        }
        let blocks = blocks_bytes(&t.path("cache"));
        assert!(pack_bytes(t) > 3 << 20);
        assert!(blocks <= 1 << 20, "the block cache holds {blocks} bytes");
    }
    let v = json(&s.ok(&["--vault", &url, "verify", "--json"]));
    assert!(v["packs_verified"].as_u64().unwrap() >= 6, "{v}");
    // Writing commands on the replica: one clear line, nothing changed.
    let src = t.path("a");
    for args in [
        vec![
            "--vault",
            &url,
            "backup",
            "--item",
            "z",
            src.to_str().unwrap(),
        ],
        vec!["--vault", &url, "forget", &points[0].0],
        vec!["--vault", &url, "gc"],
    ] {
        let out = s.run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("can only be read"), "{args:?}: {err}");
    }
    // Nothing new: only the lock object moves.
    let again = s.replicate(&url);
    assert_eq!(again["bytes_copied"], 0, "{again}");
    assert_eq!(again["catalog_bytes_sent"], 0, "{again}");
    // A 1 % change: the second run sends about what the primary grew by.
    let before = pack_bytes(t);
    let c = t.path("c");
    // About 1 % of the vault's bytes: three files rewritten, one added.
    for (i, name) in ["d0/f0", "d1/f1", "d2/f2"].iter().enumerate() {
        write(&c.join(name), &noise(20_000, 990 + i as u64));
    }
    write(&c.join("d3/new"), &noise(4_000, 998));
    let changed = backup_spec(t, "c", &c, &[]);
    let growth = pack_bytes(t) - before;
    let inc = s.replicate(&url);
    assert_eq!(inc["points_added"], 1, "{inc}");
    let sent = inc["bytes_sent"].as_u64().unwrap();
    eprintln!("incremental run: sent {sent} bytes for a pack growth of {growth}");
    assert!(
        sent as f64 <= 1.2 * growth as f64,
        "sent {sent} bytes for a growth of {growth}: {inc}"
    );
    assert!(inc["catalog_bytes_sent"].as_u64().unwrap() > 0, "{inc}");
    s.restores(&url, &changed.0, &changed.1);
    // Soft delete, undelete and purge follow the primary.
    t.ok(&["forget", &points[0].0]);
    t.ok(&["forget", &points[1].0]);
    let upd = s.replicate(&url);
    assert_eq!(upd["points_updated"], 2, "{upd}");
    assert_eq!(s.point_ids(&url, true).len(), 2);
    t.ok(&["undelete", &points[1].0]);
    t.ok(&["purge", &points[0].0]);
    let pur = s.replicate(&url);
    assert_eq!(pur["points_purged"], 1, "{pur}");
    assert!(s.point_ids(&url, true).is_empty());
    assert_eq!(
        s.point_ids(&url, false),
        s.point_ids(t.vault().to_str().unwrap(), false)
    );
    for (spec, snap) in &points[1..] {
        s.restores(&url, spec, snap);
    }
    // Another reader (a fresh cache) sees the same catalog, built from base and deltas.
    std::fs::remove_dir_all(t.path("cache")).unwrap();
    assert_eq!(
        s.point_ids(&url, false),
        s.point_ids(t.vault().to_str().unwrap(), false)
    );
    s.restores(&url, &changed.0, &changed.1);
}

#[test]
#[ignore = "needs the Azurite and moto emulators, which .ci/run installs"]
fn an_s3_replica_restores_mounts_and_follows_the_primary() {
    replica_cycle(&Setup::new(Emulator::s3()));
}

#[test]
#[ignore = "needs the Azurite and moto emulators, which .ci/run installs"]
fn an_azure_replica_restores_mounts_and_follows_the_primary() {
    replica_cycle(&Setup::new(Emulator::azure()));
}

/// A replicate to `url` killed (SIGKILL) at fault point `at`.
fn replicate_killed_at(s: &Setup, url: &str, at: &str) {
    use std::os::unix::process::ExitStatusExt;
    let mut cmd = s.cmd();
    cmd.env("COFFRE_CRASH_AT", at)
        .args(["replicate", "--json", "--to", url]);
    let out = run_with_deadline(&mut cmd, Duration::from_secs(120));
    assert_eq!(out.status.signal(), Some(9), "{}", stderr(&out));
}

/// Killed after the second pack went up, then before the catalog commit: nothing shows on the
/// replica, and the next run sends no pack twice.
fn killed_and_resumed(s: &Setup) {
    let t = &s.t;
    let points = several_items(t);
    let url = s.emu.url("resume");
    let total = pack_bytes(t);
    replicate_killed_at(s, &url, "replicate-pack-copied#2");
    // Nothing half-visible: there is no replica yet.
    let out = s.run(&["--vault", &url, "points"]);
    assert_fails(&out, "no replica there");
    replicate_killed_at(s, &url, "replicate-before-commit");
    assert_fails(&s.run(&["--vault", &url, "points"]), "no replica there");
    // The stale lock of the killed run (same host, process gone) is taken over.
    let r = s.replicate(&url);
    assert_eq!(r["packs_resumed"], 6, "every pack arrived before: {r}");
    assert_eq!(r["bytes_copied"], 0, "{r}");
    assert_eq!(r["points_added"], 6, "{r}");
    let sent = r["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < total / 10,
        "only the catalog goes up: {sent} of {total}: {r}"
    );
    for (spec, snap) in &points {
        s.restores(&url, spec, snap);
    }
    // A live writer's lock is respected: a second replicate fails at once, naming it.
    let c = t.path("c");
    write(&c.join("d0/f0"), &noise(20_000, 777));
    t.backup("c", &c);
    let gate = t.path("gate");
    let mut first = s.cmd();
    first
        .env(
            "COFFRE_TEST_PAUSE",
            format!("replicate-pack-copied:{}", gate.display()),
        )
        .args(["replicate", "--json", "--to", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = first.spawn().unwrap();
    let reached = t.path("gate.reached");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reached.exists() {
        assert!(
            Instant::now() < deadline,
            "the first replicate never got to its pack"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    one_line_error(
        &s.run(&["replicate", "--to", &url]),
        "is locked by another replicate",
    );
    std::fs::write(&gate, b"").unwrap();
    let status = wait_within(&mut child, Duration::from_secs(120)).expect("first replicate ends");
    assert!(status.success());
    assert_eq!(s.point_ids(&url, false).len(), 7);
}

#[cfg(feature = "fault-injection")]
#[test]
#[ignore = "needs the Azurite and moto emulators, which .ci/run installs"]
fn a_killed_replicate_to_s3_resumes_without_sending_twice() {
    killed_and_resumed(&Setup::new(Emulator::s3()));
}

#[cfg(feature = "fault-injection")]
#[test]
#[ignore = "needs the Azurite and moto emulators, which .ci/run installs"]
fn a_killed_replicate_to_azure_resumes_without_sending_twice() {
    killed_and_resumed(&Setup::new(Emulator::azure()));
}

/// Expects exit 1 and one `error:` line containing `needle`.
fn one_line_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{needle:?} in {err}"
    );
}

#[test]
#[ignore = "needs the Azurite and moto emulators, which .ci/run installs"]
fn bad_urls_unreachable_services_and_missing_credentials_fail_in_one_line() {
    let s = Setup::new(Emulator::s3());
    write(&s.t.path("src/f"), b"data");
    s.t.backup("x", &s.t.path("src"));
    for (url, needle) in [
        ("s3://", "bucket"),
        ("s3://Bad_Bucket/x", "bucket"),
        ("gs://bucket/x", "use s3://"),
        ("azure://c/../x", "prefix"),
    ] {
        one_line_error(&s.run(&["replicate", "--to", url]), needle);
        one_line_error(&s.run(&["--vault", url, "points"]), needle);
    }
    // No such bucket.
    one_line_error(
        &s.run(&["replicate", "--to", "s3://nosuchbucket/x"]),
        "nosuchbucket",
    );
    // Nothing there yet.
    one_line_error(
        &s.run(&["--vault", "s3://coffre/empty", "points"]),
        "no replica there",
    );
    // An endpoint nobody listens on: a quick error, not a hang.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = run_with_deadline(
        s.cmd()
            .env("AWS_ENDPOINT", &dead)
            .args(["replicate", "--to", "s3://coffre/x"]),
        Duration::from_secs(120),
    );
    one_line_error(&out, "s3://coffre/x");
    assert!(started.elapsed() < Duration::from_secs(60));
    // No credentials.
    let out = run_with_deadline(
        s.cmd()
            .env_remove("AWS_ACCESS_KEY_ID")
            .args(["replicate", "--to", "s3://coffre/x"]),
        Duration::from_secs(120),
    );
    one_line_error(&out, "no S3 credentials");
    let out = run_with_deadline(
        s.cmd().args(["--vault", "azure://coffre/x", "points"]),
        Duration::from_secs(120),
    );
    one_line_error(&out, "no Azure credentials");
    // A remembered replica by URL.
    s.ok(&["vault", "set", "replica", "cloud", "s3://coffre/named"]);
    let shown = json(&s.ok(&["vault", "show", "--json"]));
    assert_eq!(shown["replicas"]["cloud"], "s3://coffre/named", "{shown}");
    let r = json(&s.ok(&["replicate", "--json", "--to", "cloud"]));
    assert_eq!(r["points_added"], 1, "{r}");
    assert_eq!(s.point_ids("s3://coffre/named", false).len(), 1);
    // `init` on a URL says how a replica is made.
    one_line_error(
        &s.run(&["--vault", "s3://coffre/i", "init"]),
        "replicate --to",
    );
}

/// An encrypted replica in the emulator: it opens only with its key and then restores exactly;
/// a second run with the same key adds to it; the key check makes a wrong key one line.
fn sealed_cycle(s: &Setup) {
    let points = several_items(&s.t);
    let key = s.t.path("replica.key");
    s.ok(&["vault", "set", "replica-key", key.to_str().unwrap()]);
    let url = s.emu.url("sealed");
    let first = s.replicate(&url);
    assert_eq!(first["sealed"], true, "{first}");
    assert_eq!(first["points_added"], 6, "{first}");
    let out = s.run(&["--vault", &url, "points"]);
    one_line_error(&out, "is encrypted");
    let wrong = s.t.path("wrong.key");
    std::fs::write(&wrong, [3u8; 40]).unwrap();
    let out = s.run(&[
        "--vault",
        &url,
        "--key-file",
        wrong.to_str().unwrap(),
        "points",
    ]);
    one_line_error(&out, "not the key of");
    let k = key.to_str().unwrap();
    for (spec, snap) in &points {
        let to = s.t.path(&format!("sealed-{}", spec.replace('@', "-")));
        s.ok(&[
            "--vault",
            &url,
            "--key-file",
            k,
            "restore",
            spec,
            "--to",
            to.to_str().unwrap(),
        ]);
        assert_same(snap, &snapshot(&to, false));
    }
    let v = json(&s.ok(&["--vault", &url, "--key-file", k, "verify", "--json"]));
    assert!(v["packs_verified"].as_u64().unwrap() >= 6, "{v}");
    backup_spec(&s.t, "a", &s.t.path("a"), &[("new", noise(50_000, 77))]);
    let second = s.replicate(&url);
    assert_eq!(second["points_added"], 1, "{second}");
}

#[test]
#[ignore = "needs the Azurite and moto emulators, which .ci/run installs"]
fn encrypted_replicas_in_s3_and_azure_open_only_with_their_key() {
    sealed_cycle(&Setup::new(Emulator::s3()));
    sealed_cycle(&Setup::new(Emulator::azure()));
}
