//! Directory-relative file system calls that std does not offer: `fstatat`, xattrs, `readlinkat`,
//! `openat` of directories and files without following symlinks, and metadata setters that act
//! on a descriptor.
//!
//! Everything works relative to an open directory fd plus one name, so trees deeper than
//! PATH_MAX work and no path is ever resolved through a symlink. Metadata is only ever *set*
//! through a descriptor of the node itself (an `O_PATH | O_NOFOLLOW` one for symlinks, fifos and
//! devices), never by name, so a node swapped for a symlink after it was made cannot redirect a
//! chmod or chown. Xattrs of an entry are *read* through `/proc/self/fd/<dirfd>/<name>` with the
//! `l*xattr` calls (no fd can be opened on a fifo without side effects). Pure wrappers: no state,
//! no policy.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name has a NUL"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstat_at(dir: BorrowedFd, name: &[u8]) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid C string and out pointer; the kernel fills `st` on success.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat returned 0, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd and out pointer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat returned 0.
    Ok(unsafe { st.assume_init() })
}

/// Opens `name` in `dir` with `flags | O_CLOEXEC | O_NOFOLLOW`.
pub fn open_at(dir: BorrowedFd, name: &[u8], flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid C string; the returned fd is owned by the OwnedFd below.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory (never through a symlink).
pub fn open_dir_at(dir: BorrowedFd, name: &[u8]) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Opens a directory by path (following symlinks: the user named it).
pub fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: valid C string; fd ownership moves into OwnedFd.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `readlinkat(dir, name)`.
pub fn readlink_at(dir: BorrowedFd, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: buffer pointer and length describe `buf`.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// The `/proc/self/fd/N/name` path that reaches `name` in `dir` without following `name`.
fn proc_path(dir: BorrowedFd, name: &[u8]) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    cstr(&p)
}

/// All extended attributes of `name` in `dir` (not following a symlink), sorted by name.
/// File systems without xattr support give an empty list.
pub fn xattrs_at(dir: BorrowedFd, name: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let path = proc_path(dir, name)?;
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: buffer pointer and length describe `names`.
        let n = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    for key in names[..len].split(|&b| b == 0).filter(|k| !k.is_empty()) {
        let k = cstr(key)?;
        let mut val = vec![0u8; 256];
        loop {
            // SAFETY: valid C strings; buffer pointer and length describe `val`.
            let n = unsafe {
                libc::lgetxattr(
                    path.as_ptr(),
                    k.as_ptr(),
                    val.as_mut_ptr().cast(),
                    val.len(),
                )
            };
            if n >= 0 {
                val.truncate(n as usize);
                out.push((key.to_vec(), val));
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => val.resize(val.len() * 4, 0),
                // Removed between list and get: not there any more.
                Some(libc::ENODATA) => break,
                _ => return Err(e),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a directory's entry names (without `.` and `..`), unsorted.
pub fn read_dir_names(dir: BorrowedFd) -> io::Result<Vec<Vec<u8>>> {
    // opendir takes ownership of its fd, so hand it a duplicate.
    // SAFETY: dup of a valid fd.
    let fd = check(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: fd is ours; on success DIR* owns it.
    let d = unsafe { libc::fdopendir(fd) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the fd is still ours to close.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    // SAFETY: `d` is a valid DIR*; rewind in case the fd was read before.
    unsafe { libc::rewinddir(d) };
    let mut names = Vec::new();
    let result = loop {
        // errno distinguishes end-of-directory from an error.
        // SAFETY: errno location is thread-local.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: valid DIR*.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) != 0 {
                Err(e)
            } else {
                Ok(())
            };
        }
        // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    };
    // SAFETY: valid DIR*, closed once.
    unsafe { libc::closedir(d) };
    result.map(|_| names)
}

/// Raises the soft open-file limit to the hard limit (a backup walk keeps one fd per directory
/// level; a restore one per file in its queue and per directory with entries still to come).
/// Returns the soft limit now in force (`u64::MAX` if unlimited or unknown).
pub fn raise_fd_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return u64::MAX;
    }
    if rl.rlim_cur < rl.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: valid in pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            rl = raised;
        }
    }
    if rl.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        rl.rlim_cur
    }
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir_at(dir: BorrowedFd, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) }).map(drop)
}

/// `mknodat(dir, name, mode, rdev)` for fifos and devices.
pub fn mknod_at(dir: BorrowedFd, name: &[u8], mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat(target, dir, name)`.
pub fn symlink_at(target: &[u8], dir: BorrowedFd, name: &[u8]) -> io::Result<()> {
    let (t, c) = (cstr(target)?, cstr(name)?);
    // SAFETY: valid C strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// `linkat(old_dir, old, new_dir, new, 0)`: never follows a symlink at `old`.
pub fn link_at(old_dir: BorrowedFd, old: &[u8], new_dir: BorrowedFd, new: &[u8]) -> io::Result<()> {
    let (o, n) = (cstr(old)?, cstr(new)?);
    // SAFETY: valid C strings.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            o.as_ptr(),
            new_dir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// `unlinkat(dir, name, 0)` (not for directories).
pub fn unlink_at(dir: BorrowedFd, name: &[u8]) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
}

fn timespec(sec: i64, nsec: u32) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec as i64,
    }
}

/// The `/proc/self/fd/N` path of a descriptor: following it reaches exactly the node the
/// descriptor holds (a symlink itself, for an `O_PATH | O_NOFOLLOW` one), nothing further.
fn proc_fd_path(fd: BorrowedFd) -> io::Result<CString> {
    cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())
}

/// Is this the error a `f*` call gives for an `O_PATH` descriptor?
fn is_o_path_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBADF)
}

/// Sets atime and mtime of the node `fd` holds (any descriptor, `O_PATH` ones included; a
/// symlink's own times for an `O_PATH | O_NOFOLLOW` one).
pub fn set_times(fd: BorrowedFd, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let t = [timespec(atime.0, atime.1), timespec(mtime.0, mtime.1)];
    // SAFETY: valid fd, an empty C string and a two-element timespec array.
    let r = check(unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            t.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    });
    match r {
        // Kernels before AT_EMPTY_PATH support in utimensat.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let p = proc_fd_path(fd)?;
            // SAFETY: valid C string and timespec array.
            check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), t.as_ptr(), 0) }).map(drop)
        }
        r => r.map(drop),
    }
}

/// Sets the owner of the node `fd` holds (any descriptor, `O_PATH` ones included), never
/// following a symlink.
pub fn fchown(fd: BorrowedFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd and an empty C string.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Sets the mode of the node `fd` holds (any descriptor, `O_PATH` ones included: through
/// `fchmodat2(AT_EMPTY_PATH)` on Linux 6.6 and later, else `/proc/self/fd/N`). Never used on
/// symlinks (Linux cannot chmod them).
pub fn fchmod(fd: BorrowedFd, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    match check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }) {
        Err(e) if is_o_path_refusal(&e) => {}
        r => return r.map(drop),
    }
    // SAFETY: valid fd and an empty C string; fchmodat2 takes (dirfd, path, mode, flags).
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mode,
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(e);
    }
    let p = proc_fd_path(fd)?;
    // SAFETY: valid C string.
    check(unsafe { libc::chmod(p.as_ptr(), mode) }).map(drop)
}

/// Sets one extended attribute on the node `fd` holds (any descriptor, `O_PATH` ones included).
pub fn fset_xattr(fd: BorrowedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let k = cstr(key)?;
    // SAFETY: valid fd and C string; value pointer and length describe `value`.
    let r = check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    });
    match r {
        Err(e) if is_o_path_refusal(&e) => {
            let p = proc_fd_path(fd)?;
            // SAFETY: valid C strings; value pointer and length describe `value`.
            check(unsafe {
                libc::setxattr(
                    p.as_ptr(),
                    k.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            })
            .map(drop)
        }
        r => r.map(drop),
    }
}

/// Removes one extended attribute from the node `fd` holds (any descriptor, `O_PATH` ones
/// included). Not there, or not supported by the file system: nothing to do.
/// True if the open directory or file `fd` has extended attribute `key` (errors: false).
pub fn fhas_xattr(fd: BorrowedFd, key: &[u8]) -> bool {
    let Ok(k) = cstr(key) else { return false };
    // SAFETY: valid fd and C string; a null buffer of size 0 asks for the value's size only.
    unsafe { libc::fgetxattr(fd.as_raw_fd(), k.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

pub fn fremove_xattr(fd: BorrowedFd, key: &[u8]) -> io::Result<()> {
    let k = cstr(key)?;
    // SAFETY: valid fd and C string.
    let mut r = check(unsafe { libc::fremovexattr(fd.as_raw_fd(), k.as_ptr()) });
    if let Err(e) = &r
        && is_o_path_refusal(e)
    {
        let p = proc_fd_path(fd)?;
        // SAFETY: valid C strings.
        r = check(unsafe { libc::removexattr(p.as_ptr(), k.as_ptr()) });
    }
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => Ok(()),
        r => r.map(drop),
    }
}

/// Opens `name` in `dir` with `O_PATH | O_NOFOLLOW`: a handle on the node itself, whatever it is
/// (a symlink is not followed, a fifo is not opened for I/O).
pub fn open_path_at(dir: BorrowedFd, name: &[u8]) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_PATH, 0)
}

/// `renameat2(old_dir, old, new_dir, new, flags)` (`RENAME_NOREPLACE`, `RENAME_EXCHANGE` or 0).
pub fn rename_at(
    old_dir: BorrowedFd,
    old: &[u8],
    new_dir: BorrowedFd,
    new: &[u8],
    flags: libc::c_uint,
) -> io::Result<()> {
    let (o, n) = (cstr(old)?, cstr(new)?);
    // SAFETY: valid fds and C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            old_dir.as_raw_fd(),
            o.as_ptr(),
            new_dir.as_raw_fd(),
            n.as_ptr(),
            flags,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `unlinkat(dir, name, AT_REMOVEDIR)`: removes an empty directory.
pub fn rmdir_at(dir: BorrowedFd, name: &[u8]) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
}

/// Opens the directory at relative path `rel` (slash-separated names) under `dir` one component
/// at a time, never following a symlink and holding one descriptor at a time, so paths longer
/// than PATH_MAX work.
pub fn open_dir_components(dir: BorrowedFd, rel: &[u8]) -> io::Result<OwnedFd> {
    let mut cur = open_dir_at(dir, b".")?;
    for name in rel.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
        cur = open_dir_at(cur.as_fd(), name)?;
    }
    Ok(cur)
}

/// Opens the directory at relative path `rel` under `dir`, refusing symlinks anywhere on the way
/// and any escape from `dir` (`openat2` with `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`).
pub fn open_dir_beneath(dir: BorrowedFd, rel: &[u8]) -> io::Result<OwnedFd> {
    let c = cstr(if rel.is_empty() { b"." } else { rel })?;
    // The kernel's `struct open_how` (libc marks its own copy non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH,
    };
    // SAFETY: valid C string and open_how struct of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
