//! Shared helpers for the end-to-end tests: a temporary vault driven through the real `coffre`
//! binary, tree generators and an exact tree comparison (lstat fields, xattrs, content, holes,
//! hard-link identity).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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
            .env_remove("COFFRE_CRASH_AT")
            .env_remove("COFFRE_FAIL_WRITE_AFTER")
            .env("RUST_BACKTRACE", "0");
        c
    }

    /// Runs coffre with `args`; returns the output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run coffre")
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
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(p).unwrap();
    let size = f.metadata().unwrap().len() as i64;
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < size {
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
