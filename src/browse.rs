//! Browsing recovery points without a mount: `ls` (the entries under a path), `find` (entries
//! whose name or path matches a glob, across points), `diff` (what changed between two points)
//! and `dump` (a file's bytes, or a tree as a tar stream).
//!
//! Everything reads through `VaultReader`: trees come from the catalog (content-addressed, so a
//! tree shared by two points is decoded once per run and `diff` skips a subtree whose id is
//! the same on both sides without reading it); only `dump` reads chunk data, every byte checked
//! against its id. Nothing here writes to the vault. Paths are slash-separated bytes relative to
//! a point's root (names need not be UTF-8). Callers hold a lease while dumping (see `lib.rs`).

mod archive;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::vault::{Entry, Kind, PointRow, TreeId, VaultError, VaultReader};

/// Why browsing failed.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("point {point} has no {path:?}")]
    NotFound { point: String, path: String },
    #[error("{path:?} in point {point} is not a directory")]
    NotDir { point: String, path: String },
    #[error("bad pattern {pattern:?}: {detail}")]
    Pattern { pattern: String, detail: String },
    #[error("{0}")]
    Output(#[from] io::Error),
}

pub type BrowseResult<T> = Result<T, BrowseError>;

/// `item@id`, for messages.
pub fn point_label(p: &PointRow) -> String {
    format!("{}@{}", p.item, p.id)
}

/// A path as the user gave it (`/docs/a.txt`, `docs/`, `.`), as slash-separated components
/// without empty or `.` parts.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    parts.join(&b'/')
}

/// `parent/name`, or `name` at the root.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// Decoded trees kept for the run; a tree shared by many points is read once. Bounded: when it
/// holds more than `CACHE_ENTRIES` entries it starts over.
const CACHE_ENTRIES: usize = 4_000_000;

/// Decoded trees by id, and how many entries they hold in all.
#[derive(Default)]
struct TreeCache {
    trees: HashMap<TreeId, Arc<Vec<Entry>>>,
    entries: usize,
}

/// What `find` calls for each match: the point, the path inside it, the entry.
pub type FindVisit<'a> = dyn FnMut(&PointRow, &[u8], &Entry) -> io::Result<()> + 'a;

/// The read side of browsing: one per command run.
pub struct Browser {
    reader: Arc<VaultReader>,
    cache: Mutex<TreeCache>,
}

impl Browser {
    pub fn new(reader: Arc<VaultReader>) -> Browser {
        Browser {
            reader,
            cache: Mutex::new(TreeCache::default()),
        }
    }

    /// A directory listing, sorted by name (cached).
    fn tree(&self, id: &TreeId) -> BrowseResult<Arc<Vec<Entry>>> {
        if let Some(t) = self.cache_lock().trees.get(id) {
            return Ok(t.clone());
        }
        let t = Arc::new(self.reader.tree(id)?);
        let mut c = self.cache_lock();
        if c.entries + t.len() > CACHE_ENTRIES {
            *c = TreeCache::default();
        }
        c.entries += t.len();
        c.trees.insert(*id, t.clone());
        Ok(t)
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, TreeCache> {
        // A panic while holding the cache leaves it valid (it is only ever replaced whole).
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entries of a directory, empty for anything else.
    fn children(&self, e: &Entry) -> BrowseResult<Arc<Vec<Entry>>> {
        match (e.kind(), &e.subtree) {
            (Kind::Dir, Some(id)) => self.tree(id),
            _ => Ok(Arc::new(Vec::new())),
        }
    }

    /// The entry at `path` (normalized) of a point; the root for an empty path.
    pub fn entry_at(&self, point: &PointRow, path: &[u8]) -> BrowseResult<Entry> {
        let not_found = || BrowseError::NotFound {
            point: point_label(point),
            path: String::from_utf8_lossy(path).into_owned(),
        };
        let mut cur = self.reader.root_entry(point)?;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if cur.kind() != Kind::Dir {
                return Err(not_found());
            }
            let entries = self.children(&cur)?;
            let i = entries
                .binary_search_by(|e| e.name.as_slice().cmp(comp))
                .map_err(|_| not_found())?;
            cur = entries[i].clone();
        }
        Ok(cur)
    }

    /// `ls`: calls `visit(path, entry)` for the entry at `path` when it is not a directory,
    /// else for each entry under it (all levels with `recursive`), depth first, sorted by name.
    pub fn list(
        &self,
        point: &PointRow,
        path: &[u8],
        recursive: bool,
        visit: &mut dyn FnMut(&[u8], &Entry) -> io::Result<()>,
    ) -> BrowseResult<()> {
        let path = normalize(path);
        let e = self.entry_at(point, &path)?;
        if e.kind() != Kind::Dir {
            return Ok(visit(&path, &e)?);
        }
        let depth = if recursive { usize::MAX } else { 1 };
        self.walk(&e, &path, depth, &mut |p, e| Ok(visit(p, e)?))
    }

    /// Visits every entry under directory `dir` (whose path is `path`) down to `depth` levels,
    /// depth first in name order, without recursion (trees can be 10,000 levels deep).
    fn walk(
        &self,
        dir: &Entry,
        path: &[u8],
        depth: usize,
        visit: &mut dyn FnMut(&[u8], &Entry) -> BrowseResult<()>,
    ) -> BrowseResult<()> {
        // Each frame: a directory's entries, the next index, its path.
        let mut stack = vec![(self.children(dir)?, 0usize, path.to_vec())];
        while let Some((entries, i, dir_path)) = stack.last_mut() {
            let Some(e) = entries.get(*i) else {
                stack.pop();
                continue;
            };
            *i += 1;
            let (e, p) = (e.clone(), join(dir_path, &e.name));
            visit(&p, &e)?;
            if e.kind() == Kind::Dir && stack.len() < depth {
                stack.push((self.children(&e)?, 0, p));
            }
        }
        Ok(())
    }

    /// `find`: calls `visit(point, path, entry)` for every entry of each point (in the order
    /// given) that `pattern` matches, in path order.
    pub fn find(
        &self,
        points: &[PointRow],
        pattern: &Pattern,
        visit: &mut FindVisit,
    ) -> BrowseResult<()> {
        for p in points {
            let root = self.reader.root_entry(p)?;
            self.walk(&root, b"", usize::MAX, &mut |path, e| {
                if pattern.matches(path, &e.name) {
                    visit(p, path, e)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// `dump`: a regular file's bytes, or anything else as a tar stream of it and everything
    /// under it (paths relative to the parent of `path`; the point's root dumps its entries).
    pub fn dump(
        &self,
        point: &PointRow,
        path: &[u8],
        out: &mut dyn Write,
    ) -> BrowseResult<DumpKind> {
        let path = normalize(path);
        let e = self.entry_at(point, &path)?;
        if e.kind() == Kind::File {
            self.write_content(&e, out)?;
            return Ok(DumpKind::File);
        }
        let mut tar = archive::TarWriter::new(self.reader.clone(), out);
        let base = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => &path[i + 1..],
            None => &path[..],
        };
        if !base.is_empty() {
            tar.append(base, &e)?;
        }
        self.walk(&e, base, usize::MAX, &mut |p, e| tar.append(p, e))?;
        tar.finish()?;
        Ok(DumpKind::Tar)
    }

    fn write_content(&self, e: &Entry, out: &mut dyn Write) -> BrowseResult<()> {
        let mut r = ContentRead::new(&self.reader, e)?;
        io::copy(&mut r, out).map_err(unwrap_vault)?;
        Ok(())
    }

    /// `diff`: calls `visit` for every difference between the trees at `path` of points `a`
    /// and `b`, in path order; subtrees with the same id on both sides are skipped unread.
    pub fn diff(
        &self,
        a: &PointRow,
        b: &PointRow,
        path: &[u8],
        visit: &mut dyn FnMut(&Change) -> io::Result<()>,
    ) -> BrowseResult<DiffCounts> {
        let path = normalize(path);
        let ea = self.entry_at(a, &path).ok();
        let eb = self.entry_at(b, &path).ok();
        if ea.is_none() && eb.is_none() {
            return Err(BrowseError::NotFound {
                point: format!("{} or {}", point_label(a), point_label(b)),
                path: String::from_utf8_lossy(&path).into_owned(),
            });
        }
        let mut d = Differ {
            browser: self,
            counts: DiffCounts::default(),
            visit,
        };
        match (ea, eb) {
            (Some(x), Some(y)) if x.kind() == Kind::Dir && y.kind() == Kind::Dir => {
                d.dirs(&x, &y, &path)?
            }
            (x, y) => d.pair(&path, x.as_ref(), y.as_ref())?,
        }
        Ok(d.counts)
    }
}

/// What `dump` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpKind {
    File,
    Tar,
}

/// A vault error that travelled through `io::Read` as an `io::Error`, back as itself.
fn unwrap_vault(err: io::Error) -> BrowseError {
    match err.downcast::<VaultError>() {
        Ok(v) => BrowseError::Vault(v),
        Err(e) => BrowseError::Output(e),
    }
}

/// `io::Read` over a file's verified content.
pub(crate) struct ContentRead {
    content: crate::vault::ContentReader,
    pos: u64,
}

impl ContentRead {
    pub(crate) fn new(reader: &Arc<VaultReader>, e: &Entry) -> BrowseResult<ContentRead> {
        Ok(ContentRead {
            content: reader.content(e)?,
            pos: 0,
        })
    }
}

impl io::Read for ContentRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(4 << 20);
        let data = self
            .content
            .read_at(self.pos, want)
            .map_err(io::Error::other)?;
        buf[..data.len()].copy_from_slice(&data);
        self.pos += data.len() as u64;
        Ok(data.len())
    }
}

/// A name glob (`*.c`), or a path glob when it holds a `/` (`src/**/*.rs`, matched against the
/// whole path inside the point; a leading `/` anchors nothing more). `*` and `?` never match
/// `/`; `**` matches any number of directories; `{a,b}` and `[abc]` work as in a shell.
pub struct Pattern {
    glob: globset::GlobMatcher,
    on_path: bool,
}

impl Pattern {
    pub fn new(pattern: &str) -> BrowseResult<Pattern> {
        let on_path = pattern.contains('/');
        let text = pattern.trim_start_matches('/');
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| BrowseError::Pattern {
                pattern: pattern.to_string(),
                detail: e.kind().to_string(),
            })?;
        Ok(Pattern {
            glob: glob.compile_matcher(),
            on_path,
        })
    }

    pub fn matches(&self, path: &[u8], name: &[u8]) -> bool {
        let s = if self.on_path { path } else { name };
        self.glob.is_match(Path::new(OsStr::from_bytes(s)))
    }
}

/// How an entry differs between two points (`restic diff`'s letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// `+`: only in the second point
    Added,
    /// `-`: only in the first point
    Removed,
    /// `M`: other content (a file's bytes, a symlink's target, a device number)
    Modified,
    /// `U`: the same content, other metadata (mode, owner, mtime, xattrs)
    Metadata,
    /// `T`: another kind of entry (a file became a directory...)
    TypeChanged,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Modified => 'M',
            ChangeKind::Metadata => 'U',
            ChangeKind::TypeChanged => 'T',
        }
    }
}

/// One difference: the path and the entry on each side.
pub struct Change<'a> {
    pub kind: ChangeKind,
    pub path: &'a [u8],
    pub before: Option<&'a Entry>,
    pub after: Option<&'a Entry>,
}

/// How many entries of each kind of change.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DiffCounts {
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub metadata: u64,
    pub type_changed: u64,
}

/// Two directory listings being merged by `Differ::dirs`.
struct Frame {
    a: Arc<Vec<Entry>>,
    b: Arc<Vec<Entry>>,
    i: usize,
    j: usize,
    path: Vec<u8>,
}

struct Differ<'b, 'v> {
    browser: &'b Browser,
    counts: DiffCounts,
    visit: &'v mut dyn FnMut(&Change) -> io::Result<()>,
}

impl Differ<'_, '_> {
    fn emit(
        &mut self,
        kind: ChangeKind,
        path: &[u8],
        before: Option<&Entry>,
        after: Option<&Entry>,
    ) -> BrowseResult<()> {
        let c = &mut self.counts;
        *match kind {
            ChangeKind::Added => &mut c.added,
            ChangeKind::Removed => &mut c.removed,
            ChangeKind::Modified => &mut c.modified,
            ChangeKind::Metadata => &mut c.metadata,
            ChangeKind::TypeChanged => &mut c.type_changed,
        } += 1;
        (self.visit)(&Change {
            kind,
            path,
            before,
            after,
        })?;
        Ok(())
    }

    /// Two directories' listings merged by name, depth first in path order. Iterative (a
    /// stack of frames), so depth costs memory, not the call stack.
    fn dirs(&mut self, a: &Entry, b: &Entry, path: &[u8]) -> BrowseResult<()> {
        let mut stack = Vec::new();
        self.open_frame(&mut stack, a.subtree, b.subtree, path.to_vec())?;
        while let Some(f) = stack.last_mut() {
            let order = match (f.a.get(f.i), f.b.get(f.j)) {
                (None, None) => {
                    stack.pop();
                    continue;
                }
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
            };
            let (x, y) = match order {
                std::cmp::Ordering::Less => (f.a.get(f.i).cloned(), None),
                std::cmp::Ordering::Greater => (None, f.b.get(f.j).cloned()),
                std::cmp::Ordering::Equal => (f.a.get(f.i).cloned(), f.b.get(f.j).cloned()),
            };
            f.i += usize::from(x.is_some());
            f.j += usize::from(y.is_some());
            let name = x
                .as_ref()
                .or(y.as_ref())
                .map(|e| e.name.clone())
                .unwrap_or_default();
            let p = join(&f.path, &name);
            match (&x, &y) {
                (Some(x), Some(y)) if x.kind() == Kind::Dir && y.kind() == Kind::Dir => {
                    if !same_meta(x, y) {
                        self.emit(ChangeKind::Metadata, &p, Some(x), Some(y))?;
                    }
                    self.open_frame(&mut stack, x.subtree, y.subtree, p)?;
                }
                _ => self.pair(&p, x.as_ref(), y.as_ref())?,
            }
        }
        Ok(())
    }

    /// Pushes the listings of two directories to compare, unless their trees are the same.
    fn open_frame(
        &self,
        stack: &mut Vec<Frame>,
        ta: Option<TreeId>,
        tb: Option<TreeId>,
        path: Vec<u8>,
    ) -> BrowseResult<()> {
        if ta != tb {
            stack.push(Frame {
                a: self.listing(ta)?,
                b: self.listing(tb)?,
                i: 0,
                j: 0,
                path,
            });
        }
        Ok(())
    }

    fn listing(&self, t: Option<TreeId>) -> BrowseResult<Arc<Vec<Entry>>> {
        match t {
            Some(id) => self.browser.tree(&id),
            None => Ok(Arc::new(Vec::new())),
        }
    }

    /// An entry on one side or both that are not two directories.
    fn pair(&mut self, p: &[u8], x: Option<&Entry>, y: Option<&Entry>) -> BrowseResult<()> {
        match (x, y) {
            (Some(x), Some(y)) if x.kind() != y.kind() => {
                self.emit(ChangeKind::TypeChanged, p, Some(x), Some(y))
            }
            (Some(x), Some(y)) if x.kind() == Kind::Dir => self.dirs(x, y, p),
            (Some(x), Some(y)) => {
                if !same_content(x, y) {
                    self.emit(ChangeKind::Modified, p, Some(x), Some(y))
                } else if !same_meta(x, y) {
                    self.emit(ChangeKind::Metadata, p, Some(x), Some(y))
                } else {
                    Ok(())
                }
            }
            (Some(x), None) => self.one_side(ChangeKind::Removed, p, x),
            (None, Some(y)) => self.one_side(ChangeKind::Added, p, y),
            (None, None) => Ok(()),
        }
    }

    /// An entry only on one side, and everything under it (as `restic diff` lists them).
    fn one_side(&mut self, kind: ChangeKind, p: &[u8], e: &Entry) -> BrowseResult<()> {
        let side = |e| {
            if kind == ChangeKind::Added {
                (None, Some(e))
            } else {
                (Some(e), None)
            }
        };
        let (b, a) = side(e);
        self.emit(kind, p, b, a)?;
        if e.kind() != Kind::Dir {
            return Ok(());
        }
        let browser = self.browser;
        let mut under = Vec::new();
        browser.walk(e, p, usize::MAX, &mut |q, e| {
            under.push((q.to_vec(), e.clone()));
            Ok(())
        })?;
        for (q, e) in &under {
            let (b, a) = side(e);
            self.emit(kind, q, b, a)?;
        }
        Ok(())
    }
}

/// The same bytes (files: same size and content ids; symlinks: same target; devices: same
/// device number).
fn same_content(x: &Entry, y: &Entry) -> bool {
    x.size == y.size && x.target == y.target && x.rdev == y.rdev && x.content == y.content
}

/// The metadata a restore sets: mode, owner, mtime and xattrs (ctime changes with any of them,
/// and inode numbers with a copy, so neither counts).
fn same_meta(x: &Entry, y: &Entry) -> bool {
    x.mode == y.mode
        && x.uid == y.uid
        && x.gid == y.gid
        && x.mtime == y.mtime
        && x.xattrs == y.xattrs
}
