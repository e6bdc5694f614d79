//! The FUSE floor for `scripts/bench`: serves a copy of a directory tree from RAM (names, sizes,
//! metadata, xattrs, hard links, content) with the same mount options and kernel capabilities as
//! `coffre mount`, and nothing else: no catalog, no decompression. Whatever it costs is what FUSE
//! itself costs on this machine; coffre's distance to it is coffre's own cost.
//!
//!   cargo run --release --example memfs -- SOURCE MOUNTPOINT
//!
//! Runs in the foreground until unmounted (umount MOUNTPOINT) or SIGINT/SIGTERM.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyOpen, ReplyXattr, Request,
};

const TTL: Duration = Duration::from_secs(24 * 3600);
const GEN: Generation = Generation(0);

struct Node {
    attr: FileAttr,
    children: Vec<(Vec<u8>, u64)>,
    data: Vec<u8>,
    target: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct MemFs {
    nodes: Vec<Node>,
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let dir = coffre::fsmeta::open_dir(p.parent().unwrap_or(Path::new("/"))).unwrap();
    let name = p.file_name().map(|n| n.as_bytes()).unwrap_or(b".");
    coffre::fsmeta::xattrs_at(std::os::fd::AsFd::as_fd(&dir), name).unwrap_or_default()
}

impl MemFs {
    fn load(root: &Path) -> MemFs {
        let mut fs = MemFs { nodes: Vec::new() };
        let mut links = HashMap::new();
        fs.add(root, &mut links);
        fs
    }

    fn add(&mut self, p: &Path, links: &mut HashMap<(u64, u64), u64>) -> u64 {
        let m = std::fs::symlink_metadata(p).unwrap();
        if m.is_file()
            && m.nlink() > 1
            && let Some(&ino) = links.get(&(m.dev(), m.ino()))
        {
            return ino;
        }
        let ino = self.nodes.len() as u64 + 1;
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            FileType::Directory
        } else if ft.is_symlink() {
            FileType::Symlink
        } else if ft.is_fifo() {
            FileType::NamedPipe
        } else if ft.is_char_device() {
            FileType::CharDevice
        } else if ft.is_block_device() {
            FileType::BlockDevice
        } else {
            FileType::RegularFile
        };
        let attr = FileAttr {
            ino: INodeNo(ino),
            size: m.size(),
            blocks: m.blocks(),
            atime: time(m.mtime(), m.mtime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: time(m.mtime(), m.mtime_nsec()),
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: 4096,
            flags: 0,
        };
        self.nodes.push(Node {
            attr,
            children: Vec::new(),
            data: if ft.is_file() {
                std::fs::read(p).unwrap()
            } else {
                Vec::new()
            },
            target: if ft.is_symlink() {
                std::fs::read_link(p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                Vec::new()
            },
            xattrs: xattrs(p),
        });
        if m.is_file() && m.nlink() > 1 {
            links.insert((m.dev(), m.ino()), ino);
        }
        if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            let mut kids = Vec::new();
            for n in names {
                let c = self.add(&p.join(&n), links);
                kids.push((n.as_bytes().to_vec(), c));
            }
            self.nodes[ino as usize - 1].children = kids;
        }
        ino
    }

    fn node(&self, ino: INodeNo) -> Option<&Node> {
        self.nodes.get((ino.0 as usize).checked_sub(1)?)
    }
}

impl Filesystem for MemFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        coffre::mount::configure_kernel(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(p) = self.node(parent) else {
            return reply.error(Errno::ENOENT);
        };
        match p
            .children
            .binary_search_by(|(n, _)| n.as_slice().cmp(name.as_bytes()))
        {
            Ok(i) => reply.entry(&TTL, &self.nodes[p.children[i].1 as usize - 1].attr, GEN),
            Err(_) => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Some(n) => reply.data(&n.target),
            None => reply.error(Errno::ENOENT),
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
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let start = (offset as usize).min(n.data.len());
        let end = (start + size as usize).min(n.data.len());
        reply.data(&n.data[start..end]);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        for (i, (name, c)) in n.children.iter().enumerate().skip(offset as usize) {
            let kind = self.nodes[*c as usize - 1].attr.kind;
            if reply.add(INodeNo(*c), i as u64 + 1, kind, OsStr::from_bytes(name)) {
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
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        for (i, (name, c)) in n.children.iter().enumerate().skip(offset as usize) {
            let attr = &self.nodes[*c as usize - 1].attr;
            if reply.add(
                INodeNo(*c),
                i as u64 + 1,
                OsStr::from_bytes(name),
                &TTL,
                attr,
                GEN,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match n
            .xattrs
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
        {
            Some((_, v)) => coffre::mount::reply_xattr(v, size, reply),
            None if name.as_bytes().starts_with(b"security.") => {
                reply.error(Errno::from_i32(libc::EOPNOTSUPP))
            }
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut names = Vec::new();
        for (k, _) in &n.xattrs {
            names.extend_from_slice(k);
            names.push(0);
        }
        coffre::mount::reply_xattr(&names, size, reply);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: memfs SOURCE MOUNTPOINT");
        std::process::exit(2);
    }
    let fs = MemFs::load(Path::new(&args[1]));
    eprintln!("memfs: {} inodes loaded", fs.nodes.len());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    let config = coffre::mount::session_config("memfs", false, threads);
    let session = fuser::Session::new(fs, Path::new(&args[2]), &config).expect("mount");
    session.run().expect("session");
}
