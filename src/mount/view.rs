//! What the mount shows, as pure logic over the vault: inodes, lookups, attributes, listings,
//! file reads, symlinks, xattrs and holes. FUSE-free: it answers with its own `Attr` and
//! `ViewError`; the fuser adapter (`fuse.rs`) maps them to replies. Unit-tested against a
//! temporary vault without mounting.
//!
//! Layout: `/items/<item>/<point>/...`, `/items/<item>/latest -> <point>`,
//! `/ids/<point-id> -> ../items/<item>/<point>`. Inode numbers: the few virtual nodes above the
//! points (items, point directories, links) get numbers from a small table; a directory inside a
//! point gets, when first listed, a block of consecutive numbers, one per entry, so an entry's
//! inode is `block + index` and nothing is stored per entry. A directory shared by two points is
//! listed once per place it appears (the kernel never sees a directory alias); hard links of one
//! point share the number of the first link seen, kept in a small map, so it is stable for the
//! life of the mount. Memory therefore grows with the directories visited (about 100 bytes
//! each), not with the entries the kernel holds; decoded trees, listings and file layouts live in
//! bounded caches, and FUSE `forget` has nothing to free. A point's tree is read only when
//! visited, so mounting costs nothing per point. Points never change, so everything under a
//! point has long TTLs; the virtual directories above them are refreshed by `refresh` and
//! invalidated in the kernel by the adapter.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::vault::format;
use crate::vault::{
    Content, ContentReader, Entry, Kind, PointRow, Timestamp, TreeId, VaultError, VaultReader,
    check_item_name, point_dir_names,
};

pub const ROOT: u64 = 1;
const ITEMS: u64 = 2;
const IDS: u64 = 3;
const DELETED: u64 = 4;
/// The first number handed out (virtual nodes and directory blocks share the counter).
const FIRST_FREE: u64 = 16;

/// Why the view cannot answer; the adapter turns each into an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewError {
    /// ENOENT
    NotFound,
    /// ENOTDIR
    NotDir,
    /// EISDIR
    IsDir,
    /// EINVAL
    Invalid,
    /// ENODATA: no such extended attribute
    NoData,
    /// ENXIO: no data (or hole) at or after an offset
    NoSuchOffset,
    /// EIO: the vault could not supply correct bytes (logged)
    Damaged,
}

type ViewResult<T> = Result<T, ViewError>;

fn damaged(e: VaultError) -> ViewError {
    log::error!("{e}");
    ViewError::Damaged
}

/// Attributes of an inode, as `stat` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// 512-byte blocks
    pub blocks: u64,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// The kernel's 32-bit device encoding.
    pub rdev: u32,
}

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
    /// item name -> soft-deleted points, oldest first (shown under `deleted/`)
    pub deleted: BTreeMap<String, Vec<Arc<PointInfo>>>,
    pub by_id: HashMap<String, Arc<PointInfo>>,
    /// A fingerprint of the points table, to notice changes cheaply.
    pub signature: (i64, i64, i64),
}

impl Points {
    fn build(
        items: Vec<String>,
        rows: Vec<PointRow>,
        deleted: Vec<PointRow>,
        signature: (i64, i64, i64),
    ) -> Points {
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
        let mut deleted_by_item: BTreeMap<String, Vec<Arc<PointInfo>>> = BTreeMap::new();
        for p in Self::infos(rows) {
            if let Some(list) = by_item.get_mut(&p.item) {
                by_id.insert(p.id.clone(), p.clone());
                list.push(p);
            }
        }
        for p in Self::infos(deleted) {
            if by_item.contains_key(&p.item) {
                deleted_by_item.entry(p.item.clone()).or_default().push(p);
            }
        }
        Points {
            by_item,
            deleted: deleted_by_item,
            by_id,
            signature,
        }
    }

    /// Points as the mount shows them, named by `point_dir_names` (damaged roots left out).
    fn infos(rows: Vec<PointRow>) -> Vec<Arc<PointInfo>> {
        let names = point_dir_names(&rows);
        rows.into_iter()
            .zip(names)
            .filter_map(|(row, dir_name)| {
                let Ok(root) = format::decode_root(&row.root) else {
                    log::warn!("point {} has a damaged root entry; not shown", row.id);
                    return None;
                };
                Some(Arc::new(PointInfo {
                    rowid: row.rowid,
                    id: row.id,
                    item: row.item,
                    time_ns: row.time,
                    dir_name,
                    root,
                }))
            })
            .collect()
    }

    fn deleted_point(&self, item: &str, dir_name: &[u8]) -> Option<Arc<PointInfo>> {
        find_named(&self.deleted, item, dir_name)
    }

    fn point(&self, item: &str, dir_name: &[u8]) -> Option<Arc<PointInfo>> {
        find_named(&self.by_item, item, dir_name)
    }
}

/// The point of `item` whose directory is named `dir_name`.
fn find_named(
    map: &BTreeMap<String, Vec<Arc<PointInfo>>>,
    item: &str,
    dir_name: &[u8],
) -> Option<Arc<PointInfo>> {
    map.get(item)?
        .iter()
        .find(|p| p.dir_name.as_bytes() == dir_name)
        .cloned()
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
    /// `deleted/`: soft-deleted points, by item, until they are purged.
    Deleted,
    Item(String),
    DeletedItem(String),
    Latest(String),
    IdLink(String),
    Point(Arc<PointInfo>),
    /// Entry `idx` of directory `dir` (a point directory or a directory inside a point).
    Entry {
        dir: u64,
        idx: u32,
    },
}

/// A directory inside a point (or a point's root) whose entries have inode numbers.
struct DirInfo {
    /// Inode of entry 0; entry i is `base + i` (unless it is a hard link seen before).
    base: u64,
    len: u32,
    tree: Option<TreeId>,
    point: Arc<PointInfo>,
}

#[derive(Default)]
struct Inodes {
    /// virtual nodes above the points
    virtuals: HashMap<u64, Node>,
    /// children of the virtual directories (items/, ids/, items/<item>/) by name
    by_name: HashMap<(u64, Vec<u8>), u64>,
    /// listed directories inside points
    dirs: HashMap<u64, DirInfo>,
    /// (base, directory inode) of every listed directory, by base (bases only grow)
    blocks: Vec<(u64, u64)>,
    /// hard-link groups: (point rowid, dev, ino) -> inode of the first link seen
    links: HashMap<(i64, u64, u64), u64>,
    next: u64,
}

impl Inodes {
    fn take(&mut self, n: u64) -> u64 {
        let first = self.next;
        self.next += n;
        first
    }
}

/// A small least-recently-used cache bounded by a weight (evicts the older half when full).
struct Lru<K, V> {
    map: HashMap<K, (V, u64)>,
    weight: usize,
    limit: usize,
    tick: u64,
    weigh: fn(&V) -> usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    fn new(limit: usize, weigh: fn(&V) -> usize) -> Self {
        Lru {
            map: HashMap::new(),
            weight: 0,
            limit,
            tick: 0,
            weigh,
        }
    }

    fn get(&mut self, k: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(k).map(|(v, t)| {
            *t = tick;
            v.clone()
        })
    }

    fn put(&mut self, k: K, v: V) {
        self.tick += 1;
        self.weight += (self.weigh)(&v);
        if let Some((old, _)) = self.map.insert(k, (v, self.tick)) {
            self.weight -= (self.weigh)(&old);
        }
        if self.weight > self.limit && self.map.len() > 1 {
            let mut ticks: Vec<u64> = self.map.values().map(|(_, t)| *t).collect();
            ticks.sort_unstable();
            let cut = ticks[ticks.len() / 2];
            let weigh = self.weigh;
            let mut freed = 0;
            self.map.retain(|_, (v, t)| {
                let keep = *t > cut;
                if !keep {
                    freed += weigh(v);
                }
                keep
            });
            self.weight -= freed;
        }
    }
}

/// A directory's children in order: name and inode.
pub type Listing = Arc<Vec<(Box<[u8]>, u64)>>;

type Tree = Arc<Vec<Entry>>;

/// The mounted view of a vault.
pub struct View {
    vault: Arc<VaultReader>,
    inodes: RwLock<Inodes>,
    points: RwLock<Arc<Points>>,
    /// Decoded trees by id, bounded by entry count.
    trees: Mutex<Lru<TreeId, Tree>>,
    /// Listings of directories inside points, bounded by entry count.
    listings: Mutex<Lru<u64, Listing>>,
    /// Content readers of files being read, bounded by count.
    layouts: Mutex<Lru<u64, Arc<ContentReader>>>,
    /// Bit per inode: the file was read from its start or pushed into the page cache.
    pushed: Mutex<Vec<u64>>,
    uid: u32,
    gid: u32,
    started: SystemTime,
    /// Sizes for `statfs`, read again when the points change.
    fs_stats: RwLock<FsStats>,
}

/// How long the kernel may cache what never changes (everything inside a point).
pub const TTL_POINT: Duration = Duration::from_secs(24 * 3600);
/// How long the kernel may cache the virtual directories above points.
pub const TTL_VIRTUAL: Duration = Duration::from_secs(1);

/// Decoded tree entries kept at most (about 200 bytes each).
const TREE_CACHE_ENTRIES: usize = 64 * 1024;
/// Listing entries kept at most (a name and a number each).
const LISTING_CACHE_ENTRIES: usize = 64 * 1024;
/// Open file layouts kept at most.
const LAYOUT_CACHE: usize = 4096;

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

/// What `statfs` (`df`, `stat -f`) shows of the mount, in blocks of `BLOCK`: the size is the
/// logical size of the live points (what a restore of all of them would write), the used part
/// the bytes the vault stores for them (its packs), so the free part is what deduplication and
/// compression save; nothing is available (the mount is read-only). Files: the live points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
}

impl FsStats {
    /// The block size `statfs` reports.
    pub const BLOCK: u32 = 4096;

    /// The statistics of `logical` bytes stored in `stored` bytes, over `points` points.
    pub fn of(logical: u64, stored: u64, points: u64) -> FsStats {
        let blocks = |b: u64| b.div_ceil(u64::from(Self::BLOCK));
        // Stored can exceed logical (tiny points, pack headers): the size is never below it.
        let total = blocks(logical.max(stored));
        FsStats {
            blocks: total,
            bfree: total - blocks(stored),
            bavail: 0,
            files: points,
        }
    }
}

/// The kernel's 32-bit device encoding (`new_encode_dev`) of a glibc `dev_t`.
fn kernel_rdev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

impl View {
    pub const ITEMS: u64 = ITEMS;
    pub const IDS: u64 = IDS;
    pub const DELETED: u64 = DELETED;

    pub fn new(vault: Arc<VaultReader>) -> Result<View, VaultError> {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let view = View {
            vault,
            inodes: RwLock::new(Inodes {
                next: FIRST_FREE,
                ..Default::default()
            }),
            points: RwLock::new(Arc::new(Points::default())),
            trees: Mutex::new(Lru::new(TREE_CACHE_ENTRIES, |t: &Tree| t.len().max(1))),
            listings: Mutex::new(Lru::new(LISTING_CACHE_ENTRIES, |l: &Listing| {
                l.len().max(1)
            })),
            layouts: Mutex::new(Lru::new(LAYOUT_CACHE, |_| 1)),
            pushed: Mutex::new(Vec::new()),
            uid,
            gid,
            started: SystemTime::now(),
            fs_stats: RwLock::new(FsStats::default()),
        };
        view.refresh()?;
        Ok(view)
    }

    fn points(&self) -> Arc<Points> {
        self.points.read().expect("points lock").clone()
    }

    /// Re-reads the list of points if it changed. Returns the old and new lists when it did.
    pub fn refresh(&self) -> Result<Option<PointsChange>, VaultError> {
        let sig = self.vault.points_signature()?;
        let old = self.points();
        if sig == old.signature && !old.by_item.is_empty() {
            return Ok(None);
        }
        let items = self.vault.items()?.into_iter().map(|i| i.name).collect();
        let rows = self.vault.points(None)?;
        let deleted = self.vault.deleted_points()?;
        let new = Arc::new(Points::build(items, rows, deleted, sig));
        let t = self.vault.totals()?;
        *self.fs_stats.write().expect("fs_stats lock") =
            FsStats::of(t.logical_bytes, t.pack_bytes, t.points);
        *self.points.write().expect("points lock") = new.clone();
        Ok(Some(PointsChange { old, new }))
    }

    /// The inode of an already known virtual child, if any (for kernel invalidations).
    pub fn known_child(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.inodes
            .read()
            .expect("inodes lock")
            .by_name
            .get(&(parent, name.to_vec()))
            .copied()
    }

    fn node(&self, ino: u64) -> ViewResult<Node> {
        match ino {
            ROOT => return Ok(Node::Root),
            ITEMS => return Ok(Node::Items),
            IDS => return Ok(Node::Ids),
            DELETED => return Ok(Node::Deleted),
            _ => {}
        }
        let inodes = self.inodes.read().expect("inodes lock");
        if let Some(n) = inodes.virtuals.get(&ino) {
            return Ok(n.clone());
        }
        let i = inodes.blocks.partition_point(|&(base, _)| base <= ino);
        let &(base, dir) = i
            .checked_sub(1)
            .and_then(|i| inodes.blocks.get(i))
            .ok_or(ViewError::NotFound)?;
        let info = inodes.dirs.get(&dir).ok_or(ViewError::NotFound)?;
        if ino - base >= info.len as u64 {
            return Err(ViewError::NotFound);
        }
        Ok(Node::Entry {
            dir,
            idx: (ino - base) as u32,
        })
    }

    /// The inode for virtual child `name` of `parent`, created on first sight.
    fn virtual_child(&self, parent: u64, name: &[u8], make: impl FnOnce() -> Node) -> u64 {
        let key = (parent, name.to_vec());
        if let Some(&ino) = self.inodes.read().expect("inodes lock").by_name.get(&key) {
            return ino;
        }
        let mut inodes = self.inodes.write().expect("inodes lock");
        if let Some(&ino) = inodes.by_name.get(&key) {
            return ino;
        }
        let ino = inodes.take(1);
        inodes.virtuals.insert(ino, make());
        inodes.by_name.insert(key, ino);
        ino
    }

    /// The inode of point directory `p` under `parent`. A name can pass from one point to
    /// another (the first of two same-second points forgotten, an import into that second): the
    /// inode is bound to the point, so a name that now means another point gets a new inode.
    fn point_child(&self, parent: u64, p: &Arc<PointInfo>) -> u64 {
        let key = (parent, p.dir_name.as_bytes().to_vec());
        let same = |inodes: &Inodes, ino: &u64| match inodes.virtuals.get(ino) {
            Some(Node::Point(q)) => q.rowid == p.rowid,
            _ => false,
        };
        {
            let inodes = self.inodes.read().expect("inodes lock");
            if let Some(ino) = inodes.by_name.get(&key).filter(|i| same(&inodes, i)) {
                return *ino;
            }
        }
        let mut inodes = self.inodes.write().expect("inodes lock");
        if let Some(&ino) = inodes.by_name.get(&key)
            && same(&inodes, &ino)
        {
            return ino;
        }
        let ino = inodes.take(1);
        inodes.virtuals.insert(ino, Node::Point(p.clone()));
        inodes.by_name.insert(key, ino);
        ino
    }

    fn tree(&self, id: &TreeId) -> ViewResult<Tree> {
        if let Some(t) = self.trees.lock().expect("trees lock").get(id) {
            return Ok(t);
        }
        let t: Tree = Arc::new(self.vault.tree(id).map_err(damaged)?);
        self.trees.lock().expect("trees lock").put(*id, t.clone());
        Ok(t)
    }

    /// The entries of directory `ino` (a point directory or a directory inside a point) and
    /// the base of its inode block, numbering it on first use.
    fn dir(&self, ino: u64) -> ViewResult<(Tree, u64, Arc<PointInfo>)> {
        if let Some(d) = self.inodes.read().expect("inodes lock").dirs.get(&ino) {
            let tree = match d.tree {
                Some(id) => self.tree(&id)?,
                None => Arc::new(Vec::new()),
            };
            return Ok((tree, d.base, d.point.clone()));
        }
        let (subtree, point) = match self.node(ino)? {
            Node::Point(p) => (p.root.subtree, p),
            Node::Entry { dir, idx } => {
                let (entries, _, point) = self.dir(dir)?;
                let e = entries.get(idx as usize).ok_or(ViewError::NotFound)?;
                if e.kind() != Kind::Dir {
                    return Err(ViewError::NotDir);
                }
                (e.subtree, point)
            }
            _ => return Err(ViewError::NotDir),
        };
        let tree = match subtree {
            Some(id) => self.tree(&id)?,
            None => Arc::new(Vec::new()),
        };
        let mut inodes = self.inodes.write().expect("inodes lock");
        if let Some(d) = inodes.dirs.get(&ino) {
            return Ok((tree, d.base, d.point.clone())); // numbered by another thread meanwhile
        }
        let base = inodes.take(tree.len() as u64);
        inodes.blocks.push((base, ino));
        inodes.dirs.insert(
            ino,
            DirInfo {
                base,
                len: tree.len() as u32,
                tree: subtree,
                point: point.clone(),
            },
        );
        Ok((tree, base, point))
    }

    /// The inode of entry `idx` of a directory: `base + idx`, or the hard-link group's inode.
    fn entry_ino(&self, point: &PointInfo, base: u64, idx: usize, e: &Entry) -> u64 {
        let own = base + idx as u64;
        let Some((dev, src)) = e.link_key() else {
            return own;
        };
        let key = (point.rowid, dev, src);
        if let Some(&i) = self.inodes.read().expect("inodes lock").links.get(&key) {
            return i;
        }
        *self
            .inodes
            .write()
            .expect("inodes lock")
            .links
            .entry(key)
            .or_insert(own)
    }

    /// Children of any directory, in order (without `.` and `..`).
    pub fn listing(&self, ino: u64) -> ViewResult<Listing> {
        match self.node(ino)? {
            Node::Root => Ok(Arc::new(vec![
                (Box::from(&b"items"[..]), ITEMS),
                (Box::from(&b"ids"[..]), IDS),
                (Box::from(&b"deleted"[..]), DELETED),
            ])),
            Node::Deleted => {
                let pts = self.points();
                Ok(Arc::new(
                    pts.deleted
                        .keys()
                        .map(|name| {
                            let n = name.clone();
                            let ino = self
                                .virtual_child(DELETED, name.as_bytes(), || Node::DeletedItem(n));
                            (Box::from(name.as_bytes()), ino)
                        })
                        .collect(),
                ))
            }
            Node::DeletedItem(item) => {
                let pts = self.points();
                let list = pts.deleted.get(&item).ok_or(ViewError::NotFound)?;
                Ok(Arc::new(
                    list.iter()
                        .map(|p| {
                            let c = self.point_child(ino, p);
                            (Box::from(p.dir_name.as_bytes()), c)
                        })
                        .collect(),
                ))
            }
            Node::Items => {
                let pts = self.points();
                Ok(Arc::new(
                    pts.by_item
                        .keys()
                        .map(|name| {
                            let n = name.clone();
                            let ino = self.virtual_child(ITEMS, name.as_bytes(), || Node::Item(n));
                            (Box::from(name.as_bytes()), ino)
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
                            let ino = self.virtual_child(IDS, id.as_bytes(), || Node::IdLink(i));
                            (Box::from(id.as_bytes()), ino)
                        })
                        .collect(),
                ))
            }
            Node::Item(item) => {
                let pts = self.points();
                let list = pts.by_item.get(&item).ok_or(ViewError::NotFound)?;
                let mut out = Vec::with_capacity(list.len() + 1);
                if !list.is_empty() {
                    let it = item.clone();
                    let l = self.virtual_child(ino, b"latest", || Node::Latest(it));
                    out.push((Box::from(&b"latest"[..]), l));
                }
                for p in list {
                    let c = self.point_child(ino, p);
                    out.push((Box::from(p.dir_name.as_bytes()), c));
                }
                Ok(Arc::new(out))
            }
            Node::Point(_) | Node::Entry { .. } => self.tree_listing(ino),
            Node::Latest(_) | Node::IdLink(_) => Err(ViewError::NotDir),
        }
    }

    fn tree_listing(&self, ino: u64) -> ViewResult<Listing> {
        if let Some(l) = self.listings.lock().expect("listings lock").get(&ino) {
            return Ok(l);
        }
        let (entries, base, point) = self.dir(ino)?;
        let l: Listing = Arc::new(
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let child = self.entry_ino(&point, base, i, e);
                    (e.name.clone().into_boxed_slice(), child)
                })
                .collect(),
        );
        self.listings
            .lock()
            .expect("listings lock")
            .put(ino, l.clone());
        Ok(l)
    }

    /// The inode of `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> ViewResult<u64> {
        match self.node(parent)? {
            Node::Root => match name {
                b"items" => Ok(ITEMS),
                b"ids" => Ok(IDS),
                b"deleted" => Ok(DELETED),
                _ => Err(ViewError::NotFound),
            },
            Node::Deleted => {
                let pts = self.points();
                let item = std::str::from_utf8(name).map_err(|_| ViewError::NotFound)?;
                if !pts.deleted.contains_key(item) {
                    return Err(ViewError::NotFound);
                }
                Ok(self.virtual_child(DELETED, name, || Node::DeletedItem(item.to_string())))
            }
            Node::DeletedItem(item) => {
                let p = self
                    .points()
                    .deleted_point(&item, name)
                    .ok_or(ViewError::NotFound)?;
                Ok(self.point_child(parent, &p))
            }
            Node::Items => {
                let pts = self.points();
                let item = std::str::from_utf8(name).map_err(|_| ViewError::NotFound)?;
                if !pts.by_item.contains_key(item) {
                    return Err(ViewError::NotFound);
                }
                Ok(self.virtual_child(ITEMS, name, || Node::Item(item.to_string())))
            }
            Node::Ids => {
                let pts = self.points();
                let id = std::str::from_utf8(name).map_err(|_| ViewError::NotFound)?;
                if !pts.by_id.contains_key(id) {
                    return Err(ViewError::NotFound);
                }
                Ok(self.virtual_child(IDS, name, || Node::IdLink(id.to_string())))
            }
            Node::Item(item) => {
                let pts = self.points();
                if name == b"latest" {
                    if pts.by_item.get(&item).is_none_or(|l| l.is_empty()) {
                        return Err(ViewError::NotFound);
                    }
                    return Ok(self.virtual_child(parent, name, || Node::Latest(item)));
                }
                let p = pts.point(&item, name).ok_or(ViewError::NotFound)?;
                Ok(self.point_child(parent, &p))
            }
            Node::Point(_) | Node::Entry { .. } => {
                let (entries, base, point) = self.dir(parent)?;
                let i = entries
                    .binary_search_by(|e| e.name.as_slice().cmp(name))
                    .map_err(|_| ViewError::NotFound)?;
                Ok(self.entry_ino(&point, base, i, &entries[i]))
            }
            Node::Latest(_) | Node::IdLink(_) => Err(ViewError::NotDir),
        }
    }

    /// The TTL the kernel may cache this inode's attributes and entry for.
    pub fn ttl(&self, ino: u64) -> Duration {
        match self.node(ino) {
            Ok(Node::Point(_) | Node::Entry { .. }) => TTL_POINT,
            _ => TTL_VIRTUAL,
        }
    }

    fn virtual_dir(&self, ino: u64, mtime: SystemTime) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            blocks: 0,
            mtime,
            ctime: mtime,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
        }
    }

    fn symlink_attr(&self, ino: u64, target_len: usize, mtime: SystemTime) -> Attr {
        Attr {
            kind: Kind::Symlink,
            perm: 0o777,
            size: target_len as u64,
            nlink: 1,
            ..self.virtual_dir(ino, mtime)
        }
    }

    /// The entry an inode inside a point stands for.
    fn entry(&self, ino: u64) -> ViewResult<Entry> {
        match self.node(ino)? {
            Node::Entry { dir, idx } => {
                let (entries, _, _) = self.dir(dir)?;
                entries
                    .get(idx as usize)
                    .cloned()
                    .ok_or(ViewError::NotFound)
            }
            Node::Point(p) => Ok(p.root.clone()),
            _ => Err(ViewError::NoData),
        }
    }

    /// Attributes of an inode.
    pub fn attr(&self, ino: u64) -> ViewResult<Attr> {
        let pts = self.points();
        let newest = |item: &str| {
            pts.by_item
                .get(item)
                .and_then(|l| l.last())
                .map(|p| ns_time(p.time_ns))
                .unwrap_or(self.started)
        };
        Ok(match self.node(ino)? {
            Node::Root | Node::Items | Node::Ids | Node::Deleted => {
                self.virtual_dir(ino, self.started)
            }
            Node::DeletedItem(_) => self.virtual_dir(ino, self.started),
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
            Node::Point(p) => Attr {
                perm: (p.root.mode & 0o7777) as u16,
                uid: p.root.uid,
                gid: p.root.gid,
                ..self.virtual_dir(ino, ns_time(p.time_ns))
            },
            Node::Entry { .. } => self.entry_attr(ino, &self.entry(ino)?)?,
        })
    }

    fn entry_attr(&self, ino: u64, e: &Entry) -> ViewResult<Attr> {
        let kind = e.kind();
        let blocks = match (kind, e.content) {
            (Kind::File, Content::List(_)) => self.layout(ino)?.allocated_bytes() / 512,
            (Kind::File, _) => e.size.div_ceil(4096) * 8,
            _ => 0,
        };
        Ok(Attr {
            ino,
            kind,
            size: e.size,
            blocks,
            mtime: systime(e.mtime),
            ctime: systime(e.ctime),
            perm: (e.mode & 0o7777) as u16,
            nlink: if matches!(kind, Kind::File | Kind::Dir) {
                e.nlink.max(1) as u32
            } else {
                1
            },
            uid: e.uid,
            gid: e.gid,
            rdev: kernel_rdev(e.rdev),
        })
    }

    pub fn readlink(&self, ino: u64) -> ViewResult<Vec<u8>> {
        let pts = self.points();
        match self.node(ino)? {
            Node::Entry { .. } => {
                let e = self.entry(ino)?;
                if e.kind() == Kind::Symlink {
                    Ok(e.target)
                } else {
                    Err(ViewError::Invalid)
                }
            }
            Node::Latest(item) => pts
                .by_item
                .get(&item)
                .and_then(|l| l.last())
                .map(|p| p.dir_name.clone().into_bytes())
                .ok_or(ViewError::NotFound),
            Node::IdLink(id) => pts
                .by_id
                .get(&id)
                .map(|p| format!("../items/{}/{}", p.item, p.dir_name).into_bytes())
                .ok_or(ViewError::NotFound),
            _ => Err(ViewError::Invalid),
        }
    }

    /// The value of xattr `name`, if the inode has it (virtual inodes have none).
    pub fn xattr(&self, ino: u64, name: &[u8]) -> ViewResult<Vec<u8>> {
        let e = self.entry(ino)?;
        e.xattrs
            .iter()
            .find(|(k, _)| k.as_slice() == name)
            .map(|(_, v)| v.clone())
            .ok_or(ViewError::NoData)
    }

    /// The xattr names of an inode as `listxattr` returns them (NUL-terminated, concatenated).
    /// `trusted.*` names are listed only to a `privileged` caller (CAP_SYS_ADMIN), as local file
    /// systems do; `privileged` is asked only when the entry has such a name.
    pub fn xattr_names(&self, ino: u64, privileged: impl FnOnce() -> bool) -> Vec<u8> {
        let mut names = Vec::new();
        let Ok(e) = self.entry(ino) else {
            return names;
        };
        let trusted = |k: &[u8]| k.starts_with(b"trusted.");
        let show_trusted = e.xattrs.iter().any(|(k, _)| trusted(k)) && privileged();
        for (k, _) in &e.xattrs {
            if !trusted(k) || show_trusted {
                names.extend_from_slice(k);
                names.push(0);
            }
        }
        names
    }

    fn layout(&self, ino: u64) -> ViewResult<Arc<ContentReader>> {
        if let Some(l) = self.layouts.lock().expect("layouts lock").get(&ino) {
            return Ok(l);
        }
        let e = self.entry(ino)?;
        if e.kind() != Kind::File {
            return Err(ViewError::IsDir);
        }
        let l = Arc::new(self.vault.content(&e).map_err(damaged)?);
        self.layouts
            .lock()
            .expect("layouts lock")
            .put(ino, l.clone());
        Ok(l)
    }

    /// Reads up to `size` bytes at `offset`. A damaged chunk is `Damaged`, never wrong bytes.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> ViewResult<Vec<u8>> {
        self.layout(ino)?
            .read_at(offset, size as usize)
            .map_err(damaged)
    }

    /// `SEEK_DATA` (`data`) or `SEEK_HOLE` from `offset`.
    pub fn seek(&self, ino: u64, offset: i64, data: bool) -> ViewResult<i64> {
        let l = self.layout(ino)?;
        let offset = u64::try_from(offset).map_err(|_| ViewError::Invalid)?;
        match l.seek(offset, data).map_err(damaged)? {
            Some(o) => Ok(o as i64),
            None => Err(ViewError::NoSuchOffset),
        }
    }

    /// The files that follow `ino` in its directory and were not read or prefetched yet, up to
    /// `max_files` files or `max_bytes` bytes: what a copy in directory order (cp -a, rsync, tar)
    /// reads next. Each is marked as prefetched.
    pub fn next_in_dir(&self, ino: u64, max_files: usize, max_bytes: u64) -> Vec<(u64, u64)> {
        let Ok(Node::Entry { dir, idx }) = self.node(ino) else {
            return Vec::new();
        };
        let Ok((entries, base, point)) = self.dir(dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for (i, e) in entries.iter().enumerate().skip(idx as usize + 1) {
            if out.len() >= max_files || bytes >= max_bytes {
                break;
            }
            if e.kind() != Kind::File || e.size == 0 || e.size > max_bytes {
                continue;
            }
            let child = self.entry_ino(&point, base, i, e);
            if self.mark_read(child) {
                bytes += e.size;
                out.push((child, e.size));
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

    /// What `statfs` answers (see `FsStats`), as of the last change of the points.
    pub fn fs_stats(&self) -> FsStats {
        *self.fs_stats.read().expect("fs_stats lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{RunOptions, backup_item};
    use crate::vault::{FilesSource, InitOptions, ItemSource, Vault};

    /// A vault with two points of one tree: `a` (text), `d/b` + `d/c` hard-linked, `d/s` a
    /// symlink, `e/` unchanged between the points (its tree is shared), `t` with a trusted.*
    /// xattr.
    fn vault() -> (tempfile::TempDir, Vault) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::create_dir_all(src.join("e")).unwrap();
        std::fs::write(src.join("a"), b"hello view").unwrap();
        std::fs::write(src.join("d/b"), vec![7u8; 300_000]).unwrap();
        std::fs::hard_link(src.join("d/b"), src.join("d/c")).unwrap();
        std::os::unix::fs::symlink("../a", src.join("d/s")).unwrap();
        std::fs::write(src.join("e/x"), b"same in both points").unwrap();
        std::fs::write(src.join("t"), b"t").unwrap();
        let t = std::ffi::CString::new(src.join("t").to_str().unwrap()).unwrap();
        // SAFETY: valid C strings and buffer.
        let r = unsafe {
            libc::setxattr(
                t.as_ptr(),
                c"trusted.k".as_ptr(),
                b"v".as_ptr().cast(),
                1,
                0,
            )
        };
        let has_trusted = r == 0; // needs CAP_SYS_ADMIN and a file system that keeps them
        let v = Vault::init(&dir.path().join("v"), &InitOptions::default()).unwrap();
        let lock = v.lock(false).unwrap();
        let def = ItemSource::Files(FilesSource {
            path: src.clone(),
            excludes: vec![],
            ..Default::default()
        });
        let opts = RunOptions::default();
        backup_item(
            &v,
            &lock,
            "home",
            &def,
            &RunOptions {
                time: Some(1_000_000_000_000_000_000),
                ..opts.clone()
            },
        )
        .unwrap();
        std::fs::write(src.join("a"), b"hello again").unwrap();
        backup_item(
            &v,
            &lock,
            "home",
            &def,
            &RunOptions {
                time: Some(1_000_000_100_000_000_000),
                ..opts
            },
        )
        .unwrap();
        drop(lock);
        if !has_trusted {
            eprintln!(
                "note: trusted.* xattrs unavailable here; that part is checked by the mount tests"
            );
        }
        (dir, v)
    }

    fn path(view: &View, p: &str) -> ViewResult<u64> {
        let mut ino = ROOT;
        for c in p.split('/').filter(|c| !c.is_empty()) {
            ino = view.lookup(ino, c.as_bytes())?;
        }
        Ok(ino)
    }

    #[test]
    fn the_layout_reads_back_without_a_mount() {
        let (_d, v) = vault();
        let view = View::new(v.reader()).unwrap();
        let names = |ino| -> Vec<String> {
            view.listing(ino)
                .unwrap()
                .iter()
                .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
                .collect()
        };
        assert_eq!(names(ROOT), ["items", "ids", "deleted"]);
        assert_eq!(names(path(&view, "items").unwrap()), ["home"]);
        let item = names(path(&view, "items/home").unwrap());
        assert_eq!(item.len(), 3);
        assert_eq!(item[0], "latest");
        let latest = view
            .readlink(path(&view, "items/home/latest").unwrap())
            .unwrap();
        assert_eq!(latest, item[2].as_bytes());
        let newest = format!("items/home/{}", item[2]);
        assert_eq!(names(path(&view, &newest).unwrap()), ["a", "d", "e", "t"]);
        let a = path(&view, &format!("{newest}/a")).unwrap();
        assert_eq!(view.read(a, 0, 100).unwrap(), b"hello again");
        assert_eq!(view.read(a, 6, 3).unwrap(), b"aga");
        let attr = view.attr(a).unwrap();
        assert_eq!((attr.kind, attr.size, attr.nlink), (Kind::File, 11, 1));
        assert_eq!(
            view.readlink(path(&view, &format!("{newest}/d/s")).unwrap())
                .unwrap(),
            b"../a"
        );
        assert_eq!(view.lookup(a, b"x"), Err(ViewError::NotDir));
        assert_eq!(view.lookup(ROOT, b"nope"), Err(ViewError::NotFound));
        assert_eq!(view.seek(a, 0, false), Ok(11));
        assert_eq!(view.seek(a, 11, true), Err(ViewError::NoSuchOffset));
    }

    #[test]
    fn fs_stats_show_logical_as_size_and_stored_as_used() {
        let s = FsStats::of(10 * 4096, 3 * 4096 + 1, 2);
        assert_eq!((s.blocks, s.bfree, s.bavail, s.files), (10, 6, 0, 2));
        // More stored than logical: the size grows to the stored bytes, nothing is free.
        let s = FsStats::of(100, 5000, 1);
        assert_eq!((s.blocks, s.bfree), (2, 0));
        assert_eq!(FsStats::of(0, 0, 0), FsStats::default());
    }

    #[test]
    fn inode_numbers_are_stable_per_path_and_shared_by_hard_links() {
        let (_d, v) = vault();
        let view = View::new(v.reader()).unwrap();
        let pts: Vec<String> = view
            .listing(path(&view, "items/home").unwrap())
            .unwrap()
            .iter()
            .skip(1)
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect();
        let (p1, p2) = (
            format!("items/home/{}", pts[0]),
            format!("items/home/{}", pts[1]),
        );
        let b = path(&view, &format!("{p2}/d/b")).unwrap();
        let c = path(&view, &format!("{p2}/d/c")).unwrap();
        assert_eq!(b, c, "hard links of one point share an inode");
        assert_eq!(view.attr(b).unwrap().nlink, 2);
        let b1 = path(&view, &format!("{p1}/d/b")).unwrap();
        assert_ne!(b, b1, "each point has its own inodes");
        // e/ has one tree in both points, but one inode per place it appears.
        let e1 = path(&view, &format!("{p1}/e")).unwrap();
        let e2 = path(&view, &format!("{p2}/e")).unwrap();
        assert_ne!(e1, e2);
        let x1 = path(&view, &format!("{p1}/e/x")).unwrap();
        let x2 = path(&view, &format!("{p2}/e/x")).unwrap();
        assert_ne!(x1, x2);
        // The same path gives the same inode again, listing or lookup, in any order.
        assert_eq!(path(&view, &format!("{p2}/d/c")).unwrap(), b);
        let listed = view
            .listing(path(&view, &format!("{p2}/d")).unwrap())
            .unwrap();
        assert!(listed.iter().filter(|(_, i)| *i == b).count() == 2);
        assert_eq!(view.attr(x2).unwrap().size, 19);
        // Memory is per directory: points, d, e of two points, and nothing per file.
        assert_eq!(view.inodes.read().unwrap().dirs.len(), 6);
    }

    #[test]
    fn trusted_xattr_names_are_listed_only_to_privileged_callers() {
        let (_d, v) = vault();
        let view = View::new(v.reader()).unwrap();
        let pts = view.listing(path(&view, "items/home").unwrap()).unwrap();
        let p = String::from_utf8_lossy(&pts[1].0).into_owned();
        let t = path(&view, &format!("items/home/{p}/t")).unwrap();
        let has = view.xattr(t, b"trusted.k").is_ok();
        if has {
            assert!(
                view.xattr_names(t, || true)
                    .windows(9)
                    .any(|w| w == b"trusted.k")
            );
            assert!(
                !view
                    .xattr_names(t, || false)
                    .windows(9)
                    .any(|w| w == b"trusted.k")
            );
        }
        let a = path(&view, &format!("items/home/{p}/a")).unwrap();
        let mut asked = false;
        view.xattr_names(a, || {
            asked = true;
            true
        });
        assert!(
            !asked,
            "the capability check runs only for entries with trusted.* names"
        );
    }
}
