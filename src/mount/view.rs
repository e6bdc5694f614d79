//! What the mount shows, as pure logic over the vault: inodes, lookups, attributes, listings,
//! file reads, symlinks, xattrs and holes. Every method returns `Result<_, Errno>`; the fuser
//! adapter (`fuse.rs`) only turns results into replies.
//!
//! Layout: `/items/<item>/<point>/...`, `/items/<item>/latest -> <point>`,
//! `/ids/<point-id> -> ../items/<item>/<point>`. Inodes are handed out per path as entries are
//! first seen (a directory shared by two points gets one inode per place it appears, so the kernel
//! never sees a directory alias); hard links of one point share one inode. A point's tree is read
//! from the catalog only when visited, so mounting costs nothing per point. Points never change,
//! so everything under a point has long TTLs; the virtual directories above them are refreshed
//! by `refresh` and invalidated in the kernel by the adapter.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};

use crate::vault::catalog::{Catalog, ChunkLoc};
use crate::vault::format::{self, ChunkId};
use crate::vault::{
    Content, Entry, Extent, Kind, PointRow, Timestamp, VaultError, VaultRef, check_item_name,
    point_dir_names,
};

pub const ROOT: u64 = 1;
const ITEMS: u64 = 2;
const IDS: u64 = 3;

/// One recovery point as the mount shows it.
pub struct PointInfo {
    pub rowid: i64,
    pub id: String,
    pub item: String,
    pub time_ns: i64,
    /// Directory name under `items/<item>/` (UTC time, unique within the item).
    pub dir_name: String,
    pub root: Entry,
}

/// The points of the vault, grouped by item; replaced whole by `refresh`.
#[derive(Default)]
pub struct Points {
    /// item name -> points, oldest first
    pub by_item: BTreeMap<String, Vec<Arc<PointInfo>>>,
    pub by_id: HashMap<String, Arc<PointInfo>>,
    /// A fingerprint of the points table, to notice changes cheaply.
    pub signature: (i64, i64, i64),
}

impl Points {
    fn build(items: Vec<String>, rows: Vec<PointRow>, signature: (i64, i64, i64)) -> Points {
        let mut by_item: BTreeMap<String, Vec<Arc<PointInfo>>> =
            items.into_iter().map(|i| (i, Vec::new())).collect();
        // A name no item may have (made before names were checked, or by hand) would make
        // `items/` unlistable: leave such an item out.
        by_item.retain(|name, _| match check_item_name(name) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("{e}; item not shown");
                false
            }
        });
        let mut by_id = HashMap::new();
        let names = point_dir_names(&rows);
        for (row, dir_name) in rows.into_iter().zip(names) {
            let Ok(root) = format::decode_root(&row.root) else {
                log::warn!("point {} has a damaged root entry; not shown", row.id);
                continue;
            };
            let Some(list) = by_item.get_mut(&row.item) else {
                continue;
            };
            let p = Arc::new(PointInfo {
                rowid: row.rowid,
                id: row.id.clone(),
                item: row.item.clone(),
                time_ns: row.time,
                dir_name,
                root,
            });
            by_id.insert(row.id, p.clone());
            list.push(p);
        }
        Points {
            by_item,
            by_id,
            signature,
        }
    }

    fn point(&self, item: &str, dir_name: &[u8]) -> Option<Arc<PointInfo>> {
        self.by_item
            .get(item)?
            .iter()
            .find(|p| p.dir_name.as_bytes() == dir_name)
            .cloned()
    }
}

/// The list of points before and after a refresh that changed it.
pub struct PointsChange {
    pub old: Arc<Points>,
    pub new: Arc<Points>,
}

/// What an inode is.
#[derive(Clone)]
enum Node {
    Root,
    Items,
    Ids,
    Item(String),
    Latest(String),
    IdLink(String),
    Point(Arc<PointInfo>),
    /// An entry inside a point (its name cleared: names live in the parent's listing), with the
    /// parent directory's inode and its index there (for directory-order prefetch).
    Entry(Arc<PointInfo>, Arc<Entry>, u64, u32),
}

/// One extent of a layout, with what is resolved lazily: a chunk's location, a segment's layout.
struct Piece {
    start: u64,
    x: Extent,
    loc: OnceLock<ChunkLoc>,
    sub: OnceLock<Arc<Layout>>,
}

/// Where a file's bytes are. Chunk locations and segments (`Extent::Sub`, used by disk images)
/// are looked up on first use, so opening a 1 TiB image costs one list, not a million rows.
pub struct Layout {
    size: u64,
    pieces: Vec<Piece>,
}

impl Layout {
    fn new(size: u64, extents: Vec<Extent>) -> Layout {
        let mut pos = 0;
        let pieces = extents
            .into_iter()
            .map(|x| {
                let p = Piece {
                    start: pos,
                    x,
                    loc: OnceLock::new(),
                    sub: OnceLock::new(),
                };
                pos += x.len();
                p
            })
            .collect();
        Layout { size, pieces }
    }

    /// Bytes that hold data, rounded up to 4 KiB per extent (what `st_blocks` reports).
    fn data_bytes(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| match p.x {
                Extent::Data { len, .. } => len.div_ceil(4096) * 4096,
                Extent::Hole { .. } => 0,
                Extent::Sub { data, .. } => data,
            })
            .sum()
    }

    fn index_at(&self, offset: u64) -> usize {
        self.pieces
            .partition_point(|p| p.start + p.x.len() <= offset)
    }
}

/// Nesting limit for segments: a tampered catalog cannot send a read into a loop.
const MAX_DEPTH: u32 = 4;

#[derive(Default)]
struct Inodes {
    nodes: Vec<Node>,
    /// children of the virtual directories (items/, ids/, items/<item>/) by name
    by_name: HashMap<(u64, Vec<u8>), u64>,
    /// hard-link groups: (point rowid, dev, ino) -> inode
    links: HashMap<(i64, u64, u64), u64>,
}

impl Inodes {
    fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(ino.checked_sub(1)? as usize)
    }

    fn push(&mut self, n: Node) -> u64 {
        self.nodes.push(n);
        self.nodes.len() as u64
    }
}

/// A directory's children in order: name and inode.
pub type Listing = Arc<Vec<(Box<[u8]>, u64)>>;

/// The mounted view of a vault.
pub struct View {
    vault: VaultRef,
    inodes: RwLock<Inodes>,
    points: RwLock<Arc<Points>>,
    /// Listings of directories inside points, kept for the life of the mount: they fix the
    /// inode numbers of their children (8 bytes and a name per entry).
    listings: RwLock<HashMap<u64, Listing>>,
    /// Bit per inode: the file was read from its start or pushed into the page cache.
    pushed: Mutex<Vec<u64>>,
    layouts: Mutex<HashMap<u64, Arc<Layout>>>,
    pool: Mutex<Vec<Catalog>>,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

/// How long the kernel may cache what never changes (everything inside a point).
pub const TTL_POINT: Duration = Duration::from_secs(24 * 3600);
/// How long the kernel may cache the virtual directories above points.
pub const TTL_VIRTUAL: Duration = Duration::from_secs(1);

fn eio(e: VaultError) -> Errno {
    log::error!("{e}");
    Errno::EIO
}

fn systime(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

fn ns_time(ns: i64) -> SystemTime {
    systime(Timestamp {
        sec: ns.div_euclid(1_000_000_000),
        nsec: ns.rem_euclid(1_000_000_000) as u32,
    })
}

/// The kernel's 32-bit device encoding (`new_encode_dev`) of a glibc `dev_t`.
fn kernel_rdev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
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

impl View {
    pub fn new(vault: VaultRef) -> Result<View, VaultError> {
        let catalog = vault.connect()?;
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let view = View {
            vault,
            inodes: RwLock::new(Inodes::default()),
            points: RwLock::new(Arc::new(Points::default())),
            listings: RwLock::new(HashMap::new()),
            pushed: Mutex::new(Vec::new()),
            layouts: Mutex::new(HashMap::new()),
            pool: Mutex::new(vec![catalog]),
            uid,
            gid,
            started: SystemTime::now(),
        };
        {
            let mut ino = view.inodes.write().expect("inodes lock");
            ino.push(Node::Root);
            ino.push(Node::Items);
            ino.push(Node::Ids);
        }
        view.refresh()?;
        Ok(view)
    }

    /// Runs `f` with a catalog connection from the pool.
    fn with_catalog<T>(
        &self,
        f: impl FnOnce(&Catalog) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let conn = self.pool.lock().expect("pool lock").pop();
        let conn = match conn {
            Some(c) => c,
            None => self.vault.connect()?,
        };
        let r = f(&conn);
        self.pool.lock().expect("pool lock").push(conn);
        r
    }

    fn points(&self) -> Arc<Points> {
        self.points.read().expect("points lock").clone()
    }

    /// Re-reads the list of points if it changed. Returns the old and new lists when it did.
    pub fn refresh(&self) -> Result<Option<PointsChange>, VaultError> {
        let sig = self.with_catalog(|c| c.points_signature())?;
        let old = self.points();
        if sig == old.signature && !old.by_item.is_empty() {
            return Ok(None);
        }
        let (items, rows) = self.with_catalog(|c| {
            let items = c.items()?.into_iter().map(|i| i.name).collect();
            Ok((items, c.points(None)?))
        })?;
        let new = Arc::new(Points::build(items, rows, sig));
        *self.points.write().expect("points lock") = new.clone();
        Ok(Some(PointsChange { old, new }))
    }

    /// The inode of an already known child, if any (for kernel invalidations).
    pub fn known_child(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.inodes
            .read()
            .expect("inodes lock")
            .by_name
            .get(&(parent, name.to_vec()))
            .copied()
    }

    pub const ITEMS: u64 = ITEMS;
    pub const IDS: u64 = IDS;

    fn node(&self, ino: u64) -> Result<Node, Errno> {
        self.inodes
            .read()
            .expect("inodes lock")
            .get(ino)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    /// The inode for `name` under `parent`, created on first sight.
    fn child(&self, parent: u64, name: &[u8], make: impl FnOnce() -> Node) -> u64 {
        let key = (parent, name.to_vec());
        if let Some(&ino) = self.inodes.read().expect("inodes lock").by_name.get(&key) {
            return ino;
        }
        let mut inodes = self.inodes.write().expect("inodes lock");
        if let Some(&ino) = inodes.by_name.get(&key) {
            return ino;
        }
        let ino = inodes.push(make());
        inodes.by_name.insert(key, ino);
        ino
    }

    /// The entries of a point directory or of a directory inside a point. Built once per
    /// directory inode: all children get their inodes here (hard links of one point share one).
    fn tree_listing(
        &self,
        ino: u64,
        point: &Arc<PointInfo>,
        dir: &Entry,
    ) -> Result<Listing, Errno> {
        if let Some(l) = self.listings.read().expect("listings lock").get(&ino) {
            return Ok(l.clone());
        }
        let entries = match dir.subtree {
            Some(id) => self.with_catalog(|c| c.tree(&id)).map_err(eio)?,
            None => Vec::new(),
        };
        let mut listings = self.listings.write().expect("listings lock");
        if let Some(l) = listings.get(&ino) {
            return Ok(l.clone()); // another thread built it meanwhile
        }
        let mut inodes = self.inodes.write().expect("inodes lock");
        let mut out = Vec::with_capacity(entries.len());
        for (i, mut e) in entries.into_iter().enumerate() {
            let name = std::mem::take(&mut e.name).into_boxed_slice();
            let link = e.link_key().map(|(dev, src)| (point.rowid, dev, src));
            let child = match link.and_then(|k| inodes.links.get(&k).copied()) {
                Some(existing) => existing,
                None => {
                    let c = inodes.push(Node::Entry(point.clone(), Arc::new(e), ino, i as u32));
                    if let Some(k) = link {
                        inodes.links.insert(k, c);
                    }
                    c
                }
            };
            out.push((name, child));
        }
        let l: Listing = Arc::new(out);
        listings.insert(ino, l.clone());
        Ok(l)
    }

    /// Children of any directory, in order (without `.` and `..`).
    pub fn listing(&self, ino: u64) -> Result<Listing, Errno> {
        match self.node(ino)? {
            Node::Root => Ok(Arc::new(vec![
                (Box::from(&b"items"[..]), ITEMS),
                (Box::from(&b"ids"[..]), IDS),
            ])),
            Node::Items => {
                let pts = self.points();
                Ok(Arc::new(
                    pts.by_item
                        .keys()
                        .map(|name| {
                            let n = name.clone();
                            (
                                Box::from(name.as_bytes()),
                                self.child(ITEMS, name.as_bytes(), || Node::Item(n)),
                            )
                        })
                        .collect(),
                ))
            }
            Node::Ids => {
                let pts = self.points();
                let mut ids: Vec<&String> = pts.by_id.keys().collect();
                ids.sort();
                Ok(Arc::new(
                    ids.into_iter()
                        .map(|id| {
                            let i = id.clone();
                            (
                                Box::from(id.as_bytes()),
                                self.child(IDS, id.as_bytes(), || Node::IdLink(i)),
                            )
                        })
                        .collect(),
                ))
            }
            Node::Item(item) => {
                let pts = self.points();
                let list = pts.by_item.get(&item).ok_or(Errno::ENOENT)?;
                let mut out = Vec::with_capacity(list.len() + 1);
                if !list.is_empty() {
                    let it = item.clone();
                    out.push((
                        Box::from(&b"latest"[..]),
                        self.child(ino, b"latest", || Node::Latest(it)),
                    ));
                }
                for p in list {
                    let pc = p.clone();
                    let name = p.dir_name.as_bytes();
                    out.push((Box::from(name), self.child(ino, name, || Node::Point(pc))));
                }
                Ok(Arc::new(out))
            }
            Node::Point(p) => self.tree_listing(ino, &p, &p.root.clone()),
            Node::Entry(p, e, ..) if e.kind() == Kind::Dir => self.tree_listing(ino, &p, &e),
            Node::Entry(..) | Node::Latest(_) | Node::IdLink(_) => Err(Errno::ENOTDIR),
        }
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<u64, Errno> {
        match self.node(parent)? {
            Node::Root => match name {
                b"items" => Ok(ITEMS),
                b"ids" => Ok(IDS),
                _ => Err(Errno::ENOENT),
            },
            Node::Items => {
                let pts = self.points();
                let item = std::str::from_utf8(name).map_err(|_| Errno::ENOENT)?;
                if !pts.by_item.contains_key(item) {
                    return Err(Errno::ENOENT);
                }
                Ok(self.child(ITEMS, name, || Node::Item(item.to_string())))
            }
            Node::Ids => {
                let pts = self.points();
                let id = std::str::from_utf8(name).map_err(|_| Errno::ENOENT)?;
                if !pts.by_id.contains_key(id) {
                    return Err(Errno::ENOENT);
                }
                Ok(self.child(IDS, name, || Node::IdLink(id.to_string())))
            }
            Node::Item(item) => {
                let pts = self.points();
                if name == b"latest" {
                    if pts.by_item.get(&item).is_none_or(|l| l.is_empty()) {
                        return Err(Errno::ENOENT);
                    }
                    return Ok(self.child(parent, name, || Node::Latest(item)));
                }
                let p = pts.point(&item, name).ok_or(Errno::ENOENT)?;
                Ok(self.child(parent, name, || Node::Point(p)))
            }
            Node::Point(_) | Node::Entry(..) => {
                let l = self.listing(parent)?;
                let i = l
                    .binary_search_by(|(n, _)| (**n).cmp(name))
                    .map_err(|_| Errno::ENOENT)?;
                Ok(l[i].1)
            }
            Node::Latest(_) | Node::IdLink(_) => Err(Errno::ENOTDIR),
        }
    }

    /// The TTL the kernel may cache this inode's attributes and entry for.
    pub fn ttl(&self, ino: u64) -> Duration {
        match self.node(ino) {
            Ok(Node::Point(_) | Node::Entry(..)) => TTL_POINT,
            _ => TTL_VIRTUAL,
        }
    }

    fn virtual_dir(&self, ino: u64, mtime: SystemTime) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn symlink_attr(&self, ino: u64, target_len: usize, mtime: SystemTime) -> FileAttr {
        FileAttr {
            kind: FileType::Symlink,
            perm: 0o777,
            size: target_len as u64,
            nlink: 1,
            ..self.virtual_dir(ino, mtime)
        }
    }

    /// Attributes of an inode.
    pub fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let pts = self.points();
        let newest = |item: &str| {
            pts.by_item
                .get(item)
                .and_then(|l| l.last())
                .map(|p| ns_time(p.time_ns))
                .unwrap_or(self.started)
        };
        Ok(match self.node(ino)? {
            Node::Root | Node::Items | Node::Ids => self.virtual_dir(ino, self.started),
            Node::Item(item) => self.virtual_dir(ino, newest(&item)),
            Node::Latest(item) => {
                let target = self.readlink(ino)?;
                self.symlink_attr(ino, target.len(), newest(&item))
            }
            Node::IdLink(id) => {
                let target = self.readlink(ino)?;
                let t = pts
                    .by_id
                    .get(&id)
                    .map(|p| ns_time(p.time_ns))
                    .unwrap_or(self.started);
                self.symlink_attr(ino, target.len(), t)
            }
            Node::Point(p) => {
                let t = ns_time(p.time_ns);
                FileAttr {
                    perm: (p.root.mode & 0o7777) as u16,
                    uid: p.root.uid,
                    gid: p.root.gid,
                    ..self.virtual_dir(ino, t)
                }
            }
            Node::Entry(_, e, ..) => {
                let kind = e.kind();
                let blocks = match (kind, e.content) {
                    (Kind::File, Content::List(_)) => self.layout(ino)?.data_bytes() / 512,
                    (Kind::File, _) => e.size.div_ceil(4096) * 8,
                    _ => 0,
                };
                let mtime = systime(e.mtime);
                FileAttr {
                    ino: INodeNo(ino),
                    size: e.size,
                    blocks,
                    atime: mtime,
                    mtime,
                    ctime: systime(e.ctime),
                    crtime: mtime,
                    kind: file_type(kind),
                    perm: (e.mode & 0o7777) as u16,
                    nlink: if matches!(kind, Kind::File | Kind::Dir) {
                        e.nlink.max(1) as u32
                    } else {
                        1
                    },
                    uid: e.uid,
                    gid: e.gid,
                    rdev: kernel_rdev(e.rdev),
                    blksize: 4096,
                    flags: 0,
                }
            }
        })
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let pts = self.points();
        match self.node(ino)? {
            Node::Entry(_, e, ..) if e.kind() == Kind::Symlink => Ok(e.target.clone()),
            Node::Latest(item) => pts
                .by_item
                .get(&item)
                .and_then(|l| l.last())
                .map(|p| p.dir_name.clone().into_bytes())
                .ok_or(Errno::ENOENT),
            Node::IdLink(id) => pts
                .by_id
                .get(&id)
                .map(|p| format!("../items/{}/{}", p.item, p.dir_name).into_bytes())
                .ok_or(Errno::ENOENT),
            _ => Err(Errno::EINVAL),
        }
    }

    fn entry(&self, ino: u64) -> Result<Arc<Entry>, Errno> {
        match self.node(ino)? {
            Node::Entry(_, e, ..) => Ok(e),
            Node::Point(p) => Ok(Arc::new(p.root.clone())),
            _ => Err(Errno::ENODATA),
        }
    }

    /// The value of xattr `name`, if the inode has it (virtual inodes have none).
    pub fn xattr(&self, ino: u64, name: &[u8]) -> Option<Vec<u8>> {
        let e = self.entry(ino).ok()?;
        e.xattrs
            .iter()
            .find(|(k, _)| k.as_slice() == name)
            .map(|(_, v)| v.clone())
    }

    /// The xattr names of an inode as `listxattr` returns them (NUL-terminated, concatenated).
    pub fn xattr_names(&self, ino: u64) -> Vec<u8> {
        let mut names = Vec::new();
        if let Ok(e) = self.entry(ino) {
            for (k, _) in &e.xattrs {
                names.extend_from_slice(k);
                names.push(0);
            }
        }
        names
    }

    fn layout(&self, ino: u64) -> Result<Arc<Layout>, Errno> {
        if let Some(l) = self.layouts.lock().expect("layouts lock").get(&ino) {
            return Ok(l.clone());
        }
        let e = self.entry(ino)?;
        if e.kind() != Kind::File {
            return Err(Errno::EISDIR);
        }
        let extents = match e.content {
            Content::None => Vec::new(),
            Content::Chunk(id) => vec![Extent::Data { id, len: e.size }],
            Content::List(id) => self.with_catalog(|c| c.list(&id)).map_err(eio)?,
        };
        let l = Arc::new(Layout::new(e.size, extents));
        let mut cache = self.layouts.lock().expect("layouts lock");
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(ino, l.clone());
        Ok(l)
    }

    /// The layout of a segment, loaded on first use.
    fn sub_layout(&self, p: &Piece) -> Result<Arc<Layout>, Errno> {
        let Extent::Sub { id, len, .. } = p.x else {
            return Err(Errno::EIO);
        };
        if let Some(l) = p.sub.get() {
            return Ok(l.clone());
        }
        let extents = self.with_catalog(|c| c.list(&id)).map_err(eio)?;
        if extents.iter().map(|x| x.len()).sum::<u64>() != len {
            log::error!("segment {id} does not have the length its parent says");
            return Err(Errno::EIO);
        }
        Ok(p.sub
            .get_or_init(|| Arc::new(Layout::new(len, extents)))
            .clone())
    }

    /// Reads up to `size` bytes at `offset`. A damaged chunk is EIO, never wrong bytes.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let l = self.layout(ino)?;
        if offset >= l.size {
            return Ok(Vec::new());
        }
        let end = l.size.min(offset + size as u64);
        let mut out = Vec::with_capacity((end - offset) as usize);
        self.read_into(&l, offset, end, &mut out, 0)?;
        Ok(out)
    }

    fn read_into(
        &self,
        l: &Layout,
        offset: u64,
        end: u64,
        out: &mut Vec<u8>,
        depth: u32,
    ) -> Result<(), Errno> {
        if depth > MAX_DEPTH {
            return Err(Errno::EIO);
        }
        let mut i = l.index_at(offset);
        let mut pos = offset;
        while pos < end {
            // A content list shorter than the size it claims is damage.
            let p = l.pieces.get(i).ok_or(Errno::EIO)?;
            let skip = pos - p.start;
            let take = (p.start + p.x.len()).min(end) - pos;
            match p.x {
                Extent::Hole { .. } => out.resize(out.len() + take as usize, 0),
                Extent::Data { id, .. } => {
                    let (rec, range) = self.chunk_bytes(&id, &p.loc)?;
                    let data = &rec.bytes()[range];
                    let piece = data
                        .get(skip as usize..(skip + take) as usize)
                        .ok_or(Errno::EIO)?;
                    out.extend_from_slice(piece);
                }
                Extent::Sub { .. } => {
                    let sub = self.sub_layout(p)?;
                    self.read_into(&sub, skip, skip + take, out, depth + 1)?;
                }
            }
            pos += take;
            i += 1;
        }
        Ok(())
    }

    fn chunk_bytes(
        &self,
        id: &ChunkId,
        loc: &OnceLock<ChunkLoc>,
    ) -> Result<(Arc<crate::vault::chunks::Record>, std::ops::Range<usize>), Errno> {
        let loc = match loc.get() {
            Some(l) => *l,
            None => {
                let l = self
                    .with_catalog(|c| c.chunk(id))
                    .map_err(eio)?
                    .ok_or_else(|| {
                        log::error!("chunk {id} is missing from the catalog");
                        Errno::EIO
                    })?;
                *loc.get_or_init(|| l)
            }
        };
        self.with_catalog(|c| self.vault.chunk_reader().record(id, &loc, c))
            .map_err(eio)
    }

    /// `SEEK_DATA` / `SEEK_HOLE` over the file's extents.
    pub fn seek(&self, ino: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        let l = self.layout(ino)?;
        if offset < 0 {
            return Err(Errno::EINVAL);
        }
        if offset as u64 >= l.size {
            return Err(Errno::ENXIO);
        }
        let want_data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(Errno::EINVAL),
        };
        match self.seek_in(&l, offset as u64, want_data, 0)? {
            Some(o) => Ok(o as i64),
            None if want_data => Err(Errno::ENXIO),
            None => Ok(l.size as i64), // the end of a file counts as a hole
        }
    }

    /// The first offset at or after `offset` that is data (or a hole), if any.
    fn seek_in(
        &self,
        l: &Layout,
        offset: u64,
        want_data: bool,
        depth: u32,
    ) -> Result<Option<u64>, Errno> {
        if depth > MAX_DEPTH {
            return Err(Errno::EIO);
        }
        let mut i = l.index_at(offset);
        while let Some(p) = l.pieces.get(i) {
            let from = offset.max(p.start);
            let found = match p.x {
                Extent::Data { .. } => want_data.then_some(from),
                Extent::Hole { .. } => (!want_data).then_some(from),
                Extent::Sub { len, data, .. } => {
                    if (want_data && data == 0) || (!want_data && data == len) {
                        None // all hole, or all data: nothing to find inside
                    } else if (want_data && data == len) || (!want_data && data == 0) {
                        Some(from)
                    } else {
                        let sub = self.sub_layout(p)?;
                        self.seek_in(&sub, from - p.start, want_data, depth + 1)?
                            .map(|o| o + p.start)
                    }
                }
            };
            if found.is_some() {
                return Ok(found);
            }
            i += 1;
        }
        Ok(None)
    }

    /// The files that follow `ino` in its directory and were not read or prefetched yet, up to
    /// `max_files` files or `max_bytes` bytes: what a copy in directory order (cp -a, rsync, tar)
    /// reads next. Each is marked as prefetched.
    pub fn next_in_dir(&self, ino: u64, max_files: usize, max_bytes: u64) -> Vec<(u64, u64)> {
        let Ok(Node::Entry(_, _, dir, idx)) = self.node(ino) else {
            return Vec::new();
        };
        let Ok(list) = self.listing(dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, child) in list.iter().skip(idx as usize + 1) {
            if out.len() >= max_files || bytes >= max_bytes {
                break;
            }
            let Ok(Node::Entry(_, e, ..)) = self.node(*child) else {
                continue;
            };
            if e.kind() != Kind::File || e.size == 0 || e.size > max_bytes {
                continue;
            }
            if self.mark_read(*child) {
                bytes += e.size;
                out.push((*child, e.size));
            }
        }
        out
    }

    /// Marks a file as read from its start (or prefetched); true if it was not marked before.
    pub fn mark_read(&self, ino: u64) -> bool {
        let mut bits = self.pushed.lock().expect("pushed lock");
        let (word, bit) = ((ino / 64) as usize, 1u64 << (ino % 64));
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let fresh = bits[word] & bit == 0;
        bits[word] |= bit;
        fresh
    }

    /// Number of live points (for statfs).
    pub fn point_count(&self) -> u64 {
        self.points().by_id.len() as u64
    }
}
