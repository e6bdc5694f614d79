//! Shared helpers for the end-to-end tests: a temporary vault driven through the real `coffre`
//! binary, tree generators and an exact tree comparison (lstat fields, xattrs, content, holes,
//! hard-link identity).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A vault in a temporary directory, plus scratch space.
pub struct TestVault {
    pub dir: tempfile::TempDir,
}

impl TestVault {
    pub fn new() -> TestVault {
        TestVault {
            dir: tempfile::Builder::new()
                .prefix("coffre-test")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn vault(&self) -> PathBuf {
        self.dir.path().join("vault")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `coffre` command with this vault selected.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffre"));
        c.env("COFFRE_VAULT", self.vault())
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env_remove("COFFRE_KEY_FILE")
            .env_remove("COFFRE_CRASH_AT")
            .env_remove("COFFRE_FAIL_WRITE_AFTER")
            .env_remove("COFFRE_TEST_POINT_TIME")
            .env_remove("COFFRE_TEST_PAUSE")
            .env_remove("COFFRE_TEST_DELAY")
            .env("RUST_BACKTRACE", "0");
        c
    }

    /// Runs coffre with `args`; returns the output whatever the exit code. A run that takes
    /// more than two minutes is killed and fails the test (tests never hang).
    pub fn run(&self, args: &[&str]) -> Output {
        run_with_deadline(self.cmd().args(args), std::time::Duration::from_secs(120))
    }

    /// Runs coffre and insists on exit code 0.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "coffre {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// `coffre backup --item NAME PATH --json` and the new point as JSON.
    pub fn backup(&self, item: &str, src: &Path) -> serde_json::Value {
        let out = self.ok(&["backup", "--json", "--item", item, src.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v[0].clone()
    }

    pub fn points(&self, item: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["points", item, "--json"]);
        serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("json")
    }

    pub fn restore(&self, spec: &str, to: &Path) {
        self.ok(&["restore", spec, "--to", to.to_str().unwrap()]);
    }
}

/// Runs `coffre-restore` with `args` on the vault of `t` (with a deadline).
pub fn sidecar(t: &TestVault, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coffre-restore"))
        .env("COFFRE_VAULT", t.vault())
        .args(args)
        .output_within()
}

/// The protection state of `item` as `coffre items --json` shows it.
pub fn state(t: &TestVault, item: &str) -> String {
    let items: Vec<serde_json::Value> = serde_json::from_str(&t.ok(&["items", "--json"])).unwrap();
    items
        .iter()
        .find(|i| i["name"] == item)
        .map(|i| i["state"].as_str().unwrap().to_string())
        .unwrap()
}

/// Waits for a child to exit, for at most `within`.
pub fn wait_within(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Runs a command, killing it if it outlives `limit`.
pub fn run_with_deadline(cmd: &mut Command, limit: std::time::Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let Some(status) = wait_within(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {limit:?}");
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// `output()` with a two-minute deadline, for every process a test starts.
pub trait OutputWithin {
    fn output_within(&mut self) -> Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self) -> Output {
        run_with_deadline(self, std::time::Duration::from_secs(120))
    }
}

/// Asserts a command failed with exit code 1 and said `needle` on stderr.
pub fn assert_fails(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

/// The stderr of an output as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Deterministic pseudo-random bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Text-like bytes that compress (so packs are realistic).
pub fn text(n: usize, seed: u64) -> Vec<u8> {
    let words = [
        "vault ", "chunk ", "point ", "pack ", "tree ", "item ", "policy ", "\n", "restore ",
    ];
    let r = noise(n / 4 + 1, seed);
    let mut out = Vec::with_capacity(n + 16);
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(words[r[i % r.len()] as usize % words.len()].as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

pub fn c_path(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn set_xattr(p: &Path, key: &str, value: &[u8]) {
    let k = std::ffi::CString::new(key).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            c_path(p).as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {key} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// All xattrs of a path (not following symlinks), sorted.
pub fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let cp = c_path(p);
    let mut names = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "listxattr {}", p.display());
    let mut out = Vec::new();
    for k in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|k| !k.is_empty())
    {
        let kc = std::ffi::CString::new(k).unwrap();
        let mut v = vec![0u8; 65536];
        let m =
            unsafe { libc::lgetxattr(cp.as_ptr(), kc.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(m >= 0);
        v.truncate(m as usize);
        out.push((k.to_vec(), v));
    }
    out.sort();
    out
}

/// A POSIX ACL xattr value (`system.posix_acl_*`): version 2, then (tag, perm, id) entries.
pub fn acl_blob(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// Data extents of a file as (offset, len) from SEEK_DATA/SEEK_HOLE.
pub fn data_map(p: &Path) -> Vec<(u64, u64)> {
    let f = std::fs::File::open(p).unwrap();
    let size = f.metadata().unwrap().len();
    data_map_fd(&f, size)
}

/// Everything the comparison looks at for one entry.
#[derive(Debug, PartialEq)]
pub struct Snap {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub rdev: u64,
    pub link_target: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub content: Option<blake3::Hash>,
    /// For sparse files: the data extents (holes must come back as holes).
    pub data_map: Option<Vec<(u64, u64)>>,
    /// Index of the hard-link group (first path in walk order), for files with nlink > 1.
    pub link_group: Option<Vec<u8>>,
}

/// Walks `root` and records every entry (relative path bytes -> Snap). `root` itself is "".
/// Works with directory fds, so trees deeper than PATH_MAX can be compared.
pub fn snapshot(root: &Path, with_dir_mtime: bool) -> BTreeMap<Vec<u8>, Snap> {
    // Deep trees recurse deeply: give the walk a big stack.
    let root = root.to_path_buf();
    std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(move || snapshot_inner(&root, with_dir_mtime))
        .unwrap()
        .join()
        .unwrap()
}

fn snapshot_inner(root: &Path, with_dir_mtime: bool) -> BTreeMap<Vec<u8>, Snap> {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let fd = coffre::fsmeta::open_dir(root).unwrap();
    let parent = coffre::fsmeta::open_dir(&root.join("..")).unwrap();
    let name = root.file_name().unwrap().as_bytes().to_vec();
    walk(
        &parent,
        &name,
        Vec::new(),
        Some(fd),
        &mut out,
        &mut groups,
        with_dir_mtime,
    );
    out
}

fn walk(
    dir: &OwnedFd,
    name: &[u8],
    rel: Vec<u8>,
    self_fd: Option<OwnedFd>,
    out: &mut BTreeMap<Vec<u8>, Snap>,
    groups: &mut HashMap<(u64, u64), Vec<u8>>,
    with_dir_mtime: bool,
) {
    use coffre::fsmeta;
    let st = fsmeta::lstat_at(dir.as_fd(), name).unwrap();
    let fmt = st.st_mode & libc::S_IFMT;
    let is_dir = fmt == libc::S_IFDIR;
    let is_file = fmt == libc::S_IFREG;
    let size = st.st_size as u64;
    let sparse = is_file && (st.st_blocks as u64) * 512 < size;
    let link_group = (is_file && st.st_nlink > 1).then(|| {
        groups
            .entry((st.st_dev, st.st_ino))
            .or_insert(rel.clone())
            .clone()
    });
    let (content, data_map) = if is_file {
        let f = std::fs::File::from(fsmeta::open_at(dir.as_fd(), name, libc::O_RDONLY, 0).unwrap());
        let mut h = blake3::Hasher::new();
        std::io::copy(&mut &f, &mut h).unwrap();
        (Some(h.finalize()), sparse.then(|| data_map_fd(&f, size)))
    } else {
        (None, None)
    };
    out.insert(
        rel.clone(),
        Snap {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: if is_dir { 0 } else { size },
            mtime: if is_dir && !with_dir_mtime {
                (0, 0)
            } else {
                (st.st_mtime, st.st_mtime_nsec)
            },
            rdev: st.st_rdev,
            link_target: (fmt == libc::S_IFLNK)
                .then(|| fsmeta::readlink_at(dir.as_fd(), name).unwrap()),
            xattrs: fsmeta::xattrs_at(dir.as_fd(), name).unwrap(),
            content,
            data_map,
            link_group,
        },
    );
    if is_dir {
        let sub = self_fd.unwrap_or_else(|| fsmeta::open_dir_at(dir.as_fd(), name).unwrap());
        let mut names = fsmeta::read_dir_names(sub.as_fd()).unwrap();
        names.sort();
        for n in names {
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(&n);
            walk(&sub, &n, r, None, out, groups, with_dir_mtime);
        }
    }
}

fn data_map_fd(f: &std::fs::File, size: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < size as i64 {
        let d = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if d < 0 {
            break;
        }
        let h = unsafe { libc::lseek(f.as_raw_fd(), d, libc::SEEK_HOLE) };
        out.push((d as u64, (h - d) as u64));
        pos = h;
    }
    out
}

/// Asserts two snapshots are equal, reporting the first differing paths.
pub fn assert_same(a: &BTreeMap<Vec<u8>, Snap>, b: &BTreeMap<Vec<u8>, Snap>) {
    let mut diffs = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => diffs.push(format!("missing {:?}", OsStr::from_bytes(k))),
            Some(w) if w != v => diffs.push(format!(
                "differs {:?}:\n  want {v:?}\n  got  {w:?}",
                OsStr::from_bytes(k)
            )),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("extra {:?}", OsStr::from_bytes(k)));
    }
    assert!(
        diffs.is_empty(),
        "{} differences, first ones:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

pub fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, data).unwrap();
}

/// Sets mtime (and atime) with nanoseconds without following symlinks.
pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path(p).as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0);
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Builds the tree of issue 2, item 5. Returns nothing; everything is under `root`.
pub fn make_tree(root: &Path) {
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

/// Is `dir` a mount point of a FUSE file system right now?
pub fn is_fuse_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = dir.to_string_lossy();
    mounts.lines().any(|l| {
        l.split(' ').nth(1) == Some(&*want)
            && l.split(' ').nth(2).is_some_and(|t| t.starts_with("fuse"))
    })
}

/// A running `coffre mount`: waits (with a deadline) until the mount answers, and unmounts and
/// reaps the process in Drop, lazily as a last resort, so a failing test never leaks a mount or
/// hangs the suite.
pub struct MountGuard {
    pub dir: PathBuf,
    pub child: Option<std::process::Child>,
}

impl MountGuard {
    /// Mounts the vault of `t` on a fresh directory with extra `args`.
    pub fn start(t: &TestVault, args: &[&str]) -> MountGuard {
        Self::start_wrapped(t, &[], args)
    }

    /// Like `start`, with `coffre` run under `wrapper` (e.g. `prlimit --nofile=64 --`).
    pub fn start_wrapped(t: &TestVault, wrapper: &[&str], args: &[&str]) -> MountGuard {
        let dir = t.path(&format!(
            "mnt-{}",
            std::process::id() as u64 * 1000
                + COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_coffre"));
                c.env("COFFRE_VAULT", t.vault());
                c
            }
            None => t.cmd(),
        };
        let child = cmd
            .arg("mount")
            .arg(&dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn coffre mount");
        let mut g = MountGuard {
            dir: dir.canonicalize().unwrap(),
            child: Some(child),
        };
        g.wait_ready();
        g
    }

    fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if is_fuse_mounted(&self.dir) && std::fs::read_dir(&self.dir).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                self.child = None;
                panic!("coffre mount exited with {status} before the mount was ready: {err}");
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "the mount on {} was not ready within 20 s",
                    self.dir.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The directory of the latest point of `item` (the `latest` symlink resolved).
    pub fn latest(&self, item: &str) -> PathBuf {
        let dir = self.dir.join("items").join(item);
        dir.join(std::fs::read_link(dir.join("latest")).expect("latest symlink"))
    }

    /// Waits for the mount process to exit by itself (after umount or a signal).
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let status = wait_within(self.child.as_mut()?, within)?;
        self.child = None;
        Some(status)
    }
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let p = c_path(&self.dir);
        if is_fuse_mounted(&self.dir) && unsafe { libc::umount2(p.as_ptr(), 0) } != 0 {
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
        if let Some(mut c) = self.child.take()
            && wait_within(&mut c, std::time::Duration::from_secs(10)).is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_fuse_mounted(&self.dir) {
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A JSON time (RFC 3339, as `--json` prints them) as nanoseconds since the epoch; `None` for
/// null or anything else.
pub fn json_ns(v: &serde_json::Value) -> Option<i64> {
    let ts: jiff::Timestamp = v.as_str()?.parse().ok()?;
    i64::try_from(ts.as_nanosecond()).ok()
}

/// Parses a command's JSON output, failing the test with the text when it is not JSON.
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Bytes of every file under `dir`.
pub fn du(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() { du(&e.path()) } else { m.len() };
    }
    n
}

/// Flips a byte in every tree the catalog stores (checkpointing the WAL first); returns how
/// many trees were damaged.
pub fn damage_every_tree(t: &TestVault) -> usize {
    let _ = t.ok(&["points"]); // a reader: the WAL is checkpointed into vault.db on close
    let db = rusqlite::Connection::open(t.vault().join("vault.db")).unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = db
        .prepare("SELECT id, data FROM trees")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    for (id, mut data) in rows.iter().cloned() {
        let n = data.len();
        data[n / 2] ^= 0xff;
        db.execute(
            "UPDATE trees SET data=?2 WHERE id=?1",
            rusqlite::params![id, data],
        )
        .unwrap();
    }
    rows.len()
}

/// The pack files of `t`'s vault, sorted.
pub fn pack_files(t: &TestVault) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(t.vault().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    v.sort();
    v
}

/// Writes `files` (name, bytes) into `src` and backs it up as a new point of `item`; returns the
/// point's id and a snapshot of what was backed up.
pub fn backup_files(
    t: &TestVault,
    item: &str,
    src: &Path,
    files: &[(&str, Vec<u8>)],
) -> (String, BTreeMap<Vec<u8>, Snap>) {
    for (name, data) in files {
        write(&src.join(name), data);
    }
    let snap = snapshot(src, false);
    let p = t.backup(item, src);
    (p["point"]["id"].as_str().unwrap().to_string(), snap)
}
