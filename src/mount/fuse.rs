//! The fuser adapter, the only code that knows fuser: each `Filesystem` method calls `View` and
//! turns its `Attr`/`ViewError` into a reply. No logic lives here beyond that, the kernel
//! capabilities asked for in `init`, the caller's capability check for `trusted.*` names, and
//! answering `open`/`opendir` with ENOSYS so the kernel stops sending them (no per-open state).
//! `forget` needs nothing: the view derives inode numbers instead of storing them per entry.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, Notifier, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request, SessionACL,
};

use super::view::{Attr, View, ViewError};
use crate::vault::Kind;

fn errno(e: ViewError) -> Errno {
    match e {
        ViewError::NotFound => Errno::ENOENT,
        ViewError::NotDir => Errno::ENOTDIR,
        ViewError::IsDir => Errno::EISDIR,
        ViewError::Invalid => Errno::EINVAL,
        ViewError::NoData => Errno::ENODATA,
        ViewError::NoSuchOffset => Errno::ENXIO,
        ViewError::Damaged => Errno::EIO,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// True if process `pid` has CAP_SYS_ADMIN in its effective set (bit 21 of CapEff) in this
/// mount's user namespace (a process in a user namespace of its own has every capability there,
/// and none over this mount).
fn has_sys_admin(pid: u32) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
    if ns(&pid.to_string()).is_none_or(|theirs| Some(theirs) != ns("self")) {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

/// The mount options and threading of a coffre mount. `examples/memfs.rs` (the benchmark's FUSE
/// floor) uses the same, so the two differ only in what answers the requests.
pub fn session_config(fsname: &str, allow_other: bool, threads: usize) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName(fsname.to_string()),
        // fuser's own mount(2) ignores `Subtype` (the type stays plain `fuse`); as a kernel
        // option the subtype makes the mount `fuse.coffre` in /proc/mounts, so `findmnt -t`,
        // `updatedb` and `coffre umount` can tell it (fusermount takes it the same way).
        MountOption::CUSTOM("subtype=coffre".into()),
    ];
    config.acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(threads);
    config.clone_fd = true;
    config
}

/// A mounted session, served by `run` until unmounted.
pub struct Served(fuser::Session<CoffreFs>);

/// Tells the kernel what changed or what to cache (FUSE notifications).
#[derive(Clone)]
pub struct Kernel(Notifier);

/// Unmounts the session (through fusermount when not root).
pub struct Unmounter(fuser::SessionUnmounter);

impl Served {
    /// Mounts `view` on `mountpoint`; files read from their start are sent on `prefetch`.
    pub fn start(
        view: Arc<View>,
        prefetch: crossbeam_channel::Sender<u64>,
        mountpoint: &std::path::Path,
        config: &Config,
    ) -> std::io::Result<(Served, Kernel, Unmounter)> {
        let fs = CoffreFs { view, prefetch };
        let mut session = fuser::Session::new(fs, mountpoint, config)?;
        let (kernel, unmounter) = (
            Kernel(session.notifier()),
            Unmounter(session.unmount_callable()),
        );
        Ok((Served(session), kernel, unmounter))
    }

    /// Serves requests until the file system is unmounted.
    pub fn run(self) -> std::io::Result<()> {
        self.0.run()
    }
}

impl Kernel {
    /// Pushes `data` into the page cache of `ino` at `at`; false if the kernel refused.
    pub fn store(&self, ino: u64, at: u64, data: &[u8]) -> bool {
        self.0.store(INodeNo(ino), at, data).is_ok()
    }

    /// Drops what the kernel cached of `ino` (attributes and data).
    pub fn inval_inode(&self, ino: u64) {
        let _ = self.0.inval_inode(INodeNo(ino), 0, 0);
    }

    /// Drops the kernel's cached entry `name` of directory `parent`.
    pub fn inval_entry(&self, parent: u64, name: &OsStr) {
        let _ = self.0.inval_entry(INodeNo(parent), name);
    }
}

impl Unmounter {
    pub fn unmount(&mut self) -> std::io::Result<()> {
        self.0.unmount()
    }
}

pub struct CoffreFs {
    pub view: Arc<View>,
    /// Files read from their start, for the prefetcher (see `mount::prefetch_loop`).
    pub prefetch: crossbeam_channel::Sender<u64>,
}

const GEN: Generation = Generation(0);

/// Answers a getxattr/listxattr: the size when asked for it, ERANGE when the buffer is short.
pub fn reply_xattr(data: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if (size as usize) < data.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

/// The kernel capabilities a coffre mount asks for (each on its own: an old kernel refuses the
/// ones it lacks) and the read-ahead it offers.
pub fn configure_kernel(config: &mut KernelConfig) {
    for cap in [
        InitFlags::FUSE_DO_READDIRPLUS,
        InitFlags::FUSE_NO_OPEN_SUPPORT,
        InitFlags::FUSE_NO_OPENDIR_SUPPORT,
        InitFlags::FUSE_CACHE_SYMLINKS,
        InitFlags::FUSE_PARALLEL_DIROPS,
        InitFlags::FUSE_MAX_PAGES,
        InitFlags::FUSE_ASYNC_READ,
        // The kernel then caches each inode's ACL and enforces ACLs with the mode bits.
        InitFlags::FUSE_POSIX_ACL,
    ] {
        if config.add_capabilities(cap).is_err() {
            log::info!("kernel lacks FUSE capability {cap:?}");
        }
    }
    let _ = config.set_max_readahead(1 << 20);
}

impl Filesystem for CoffreFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        configure_kernel(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self
            .view
            .lookup(parent.0, name.as_bytes())
            .and_then(|ino| Ok((ino, self.view.attr(ino)?)))
        {
            Ok((ino, attr)) => reply.entry(&self.view.ttl(ino), &file_attr(&attr), GEN),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.view.attr(ino.0) {
            Ok(attr) => reply.attr(&self.view.ttl(ino.0), &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.view.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.view.read(ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
        if offset == 0 {
            self.view.mark_read(ino.0);
            let _ = self.prefetch.try_send(ino.0);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let list = match self.view.listing(ino.0) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        // Offsets: 1 = ".", 2 = "..", 3.. = children.
        let mut off = offset;
        if off == 0 {
            if reply.add(ino, 1, fuser::FileType::Directory, ".") {
                return reply.ok();
            }
            off = 1;
        }
        if off == 1 {
            if reply.add(ino, 2, fuser::FileType::Directory, "..") {
                return reply.ok();
            }
            off = 2;
        }
        for (i, (name, child)) in list.iter().enumerate().skip((off - 2) as usize) {
            let kind = match self.view.attr(*child) {
                Ok(a) => file_type(a.kind),
                Err(_) => continue,
            };
            if reply.add(
                INodeNo(*child),
                i as u64 + 3,
                kind,
                OsStr::from_bytes(&name[..]),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let list = match self.view.listing(ino.0) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        let mut off = offset;
        if off < 2 {
            // "." and ".." carry no lookup count; their attributes are the directory's own.
            let Ok(attr) = self.view.attr(ino.0).map(|a| file_attr(&a)) else {
                return reply.error(Errno::ENOENT);
            };
            let ttl = self.view.ttl(ino.0);
            if off == 0 && reply.add(ino, 1, ".", &ttl, &attr, GEN) {
                return reply.ok();
            }
            if reply.add(ino, 2, "..", &ttl, &attr, GEN) {
                return reply.ok();
            }
            off = 2;
        }
        for (i, (name, child)) in list.iter().enumerate().skip((off - 2) as usize) {
            let attr = match self.view.attr(*child) {
                Ok(a) => file_attr(&a),
                Err(_) => continue,
            };
            let ttl = self.view.ttl(*child);
            if reply.add(
                INodeNo(*child),
                i as u64 + 3,
                OsStr::from_bytes(&name[..]),
                &ttl,
                &attr,
                GEN,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.view.fs_stats();
        let bsize = super::view::FsStats::BLOCK;
        reply.statfs(s.blocks, s.bfree, s.bavail, s.files, 0, bsize, 255, bsize);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // The kernel itself refuses trusted.* to callers without CAP_SYS_ADMIN.
        match self.view.xattr(ino.0, name.as_bytes()) {
            Ok(v) => reply_xattr(&v, size, reply),
            // An absent security label is "not supported", as a file system without labels says:
            // `ls -l` asks for security.selinux on every file until told so once, and each ask
            // is a FUSE round trip.
            Err(ViewError::NoData) if name.as_bytes().starts_with(b"security.") => {
                reply.error(Errno::from_i32(libc::EOPNOTSUPP))
            }
            Err(_) => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names = self.view.xattr_names(ino.0, || has_sys_admin(req.pid()));
        reply_xattr(&names, size, reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(Errno::EINVAL),
        };
        match self.view.seek(ino.0, offset, data) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }
}
