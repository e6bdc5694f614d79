//! The byte formats the catalog stores: ids, directory trees and file content lists.
//!
//! Owns: `ChunkId`/`TreeId`, `Entry` (one directory entry with all captured metadata), and the
//! encoders/decoders of trees and content lists. Everything here is pure: no I/O, no SQL.
//! Invariants: encoding is canonical (same entries in the same order give the same bytes, hence
//! the same id), so an unchanged directory or content list is shared between points. Decoding
//! never trusts its input: a truncated or tampered blob is a `FormatError`, never a panic, and
//! names with `/`, NUL, `.` or `..` are rejected so nothing downstream can be steered out of a
//! restore target.

use std::fmt;

/// Errors from decoding a stored blob.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("catalog blob is truncated or malformed ({0})")]
    Malformed(&'static str),
    #[error("catalog blob has unknown format version {0}")]
    Version(u8),
    #[error("catalog holds an unsafe entry name {0:?}")]
    UnsafeName(String),
}

type Result<T> = std::result::Result<T, FormatError>;

/// Defines a 32-byte BLAKE3 identity. Each kind of id is its own type, so a tree id can never be
/// passed where a chunk id is expected.
macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id of these bytes (their BLAKE3 hash).
            pub fn of(bytes: &[u8]) -> $name {
                $name(*blake3::hash(bytes).as_bytes())
            }
            pub fn to_hex(&self) -> String {
                hex(&self.0)
            }
            pub fn from_slice(b: &[u8]) -> Option<$name> {
                Some($name(b.try_into().ok()?))
            }
            /// Parses the 64 hex digits `to_hex` writes.
            pub fn from_hex(s: &str) -> Option<$name> {
                from_hex(s).map($name)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", &self.to_hex()[..16])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

/// 32 bytes from 64 hex digits.
fn from_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 * b.len());
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

hash_id!(
    /// Id of a chunk: BLAKE3 of its plain bytes.
    ChunkId
);
hash_id!(
    /// Id of a directory tree blob: BLAKE3 of its encoding.
    TreeId
);
hash_id!(
    /// Id of a content list blob: BLAKE3 of its encoding.
    ListId
);

/// Seconds and nanoseconds since the epoch, as `stat` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// What kind of file system object an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Fifo => 4,
            Kind::CharDev => 5,
            Kind::BlockDev => 6,
        }
    }
    fn from_code(c: u8) -> Result<Kind> {
        Ok(match c {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::CharDev,
            6 => Kind::BlockDev,
            _ => return Err(FormatError::Malformed("entry kind")),
        })
    }
    /// The `S_IFMT` bits for this kind.
    pub fn ifmt(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
        }
    }
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// Where a regular file's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Content {
    /// Empty file, or an entry that has no content (dir, symlink, device).
    #[default]
    None,
    /// The whole file is one chunk (no holes).
    Chunk(ChunkId),
    /// A content list (chunks and holes) stored under this id.
    List(ListId),
}

/// One piece of a file: stored bytes, a hole that reads as zeros, or a whole content list
/// (a segment) stored under its own id, so a big image's list is shared segment by segment
/// between points that changed only a few blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    Data {
        id: ChunkId,
        len: u64,
    },
    Hole {
        len: u64,
    },
    /// `len` bytes described by content list `id`, of which `data` bytes are stored (not holes).
    Sub {
        id: ListId,
        len: u64,
        data: u64,
    },
}

impl Extent {
    pub fn len(&self) -> u64 {
        match *self {
            Extent::Data { len, .. } | Extent::Hole { len } | Extent::Sub { len, .. } => len,
        }
    }
    /// Bytes that hold data (everything but holes).
    pub fn data_len(&self) -> u64 {
        match *self {
            Extent::Data { len, .. } => len,
            Extent::Hole { .. } => 0,
            Extent::Sub { data, .. } => data,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One directory entry with everything captured about it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    /// The name as raw bytes (names need not be UTF-8).
    pub name: Vec<u8>,
    pub kind: Option<Kind>,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Size in bytes (files, symlinks, and what `stat` said of a directory).
    pub size: u64,
    /// Source inode: the files cache compares it, hard links share it.
    pub ino: u64,
    /// Source link count (files and directories); a file with `nlink > 1` is part of a hard-link
    /// group keyed by (dev, ino).
    pub nlink: u64,
    /// Source device, recorded only for hard-linked files (it keys the link group).
    pub dev: u64,
    /// Device number of a character or block device.
    pub rdev: u64,
    /// Target of a symlink.
    pub target: Vec<u8>,
    pub content: Content,
    /// Directory listing of a directory.
    pub subtree: Option<TreeId>,
    /// Extended attributes, sorted by name (POSIX ACLs are `system.posix_acl_*`).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    pub fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::File)
    }
    /// Key that identifies this entry's hard-link group inside one point, if it has one.
    pub fn link_key(&self) -> Option<(u64, u64)> {
        (self.kind() == Kind::File && self.nlink > 1).then_some((self.dev, self.ino))
    }
}

/// Rejects names a tampered catalog could use to escape a restore target or confuse a mount.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(FormatError::UnsafeName(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    Ok(())
}

const TREE_VERSION: u8 = 1;
const LIST_VERSION: u8 = 1;

fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_var(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_time(out: &mut Vec<u8>, t: Timestamp) {
    // zigzag so times before 1970 stay short
    put_var(out, ((t.sec << 1) ^ (t.sec >> 63)) as u64);
    put_var(out, t.nsec as u64);
}

/// A cursor over a blob being decoded; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(FormatError::Malformed("unexpected end"))?;
        self.pos += 1;
        Ok(b)
    }
    fn var(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FormatError::Malformed("varint too long"))
    }
    fn u32(&mut self) -> Result<u32> {
        u32::try_from(self.var()?).map_err(|_| FormatError::Malformed("u32 out of range"))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(FormatError::Malformed("length past end"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.var()?;
        self.take(usize::try_from(n).map_err(|_| FormatError::Malformed("length"))?)
    }
    fn hash(&mut self) -> Result<[u8; 32]> {
        let mut h = [0u8; 32];
        h.copy_from_slice(self.take(32)?);
        Ok(h)
    }
    fn time(&mut self) -> Result<Timestamp> {
        let z = self.var()?;
        let sec = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let nsec = self.u32()?;
        if nsec >= 1_000_000_000 {
            return Err(FormatError::Malformed("nanoseconds"));
        }
        Ok(Timestamp { sec, nsec })
    }
    fn done(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// Encodes one entry (used inside trees and for a point's root entry).
pub fn encode_entry(out: &mut Vec<u8>, e: &Entry) {
    put_bytes(out, &e.name);
    let kind = e.kind();
    out.push(kind.code());
    put_var(out, e.mode as u64);
    put_var(out, e.uid as u64);
    put_var(out, e.gid as u64);
    put_time(out, e.mtime);
    put_time(out, e.ctime);
    match kind {
        Kind::File => {
            put_var(out, e.size);
            put_var(out, e.ino);
            put_var(out, e.nlink);
            if e.nlink > 1 {
                put_var(out, e.dev);
            }
            match e.content {
                Content::None => out.push(0),
                Content::Chunk(id) => {
                    out.push(1);
                    out.extend_from_slice(&id.0);
                }
                Content::List(id) => {
                    out.push(2);
                    out.extend_from_slice(&id.0);
                }
            }
        }
        Kind::Dir => {
            match e.subtree {
                Some(t) => {
                    out.push(1);
                    out.extend_from_slice(&t.0);
                }
                None => out.push(0),
            }
            put_var(out, e.size);
            put_var(out, e.nlink);
        }
        Kind::Symlink => put_bytes(out, &e.target),
        Kind::Fifo => {}
        Kind::CharDev | Kind::BlockDev => put_var(out, e.rdev),
    }
    put_var(out, e.xattrs.len() as u64);
    for (k, v) in &e.xattrs {
        put_bytes(out, k);
        put_bytes(out, v);
    }
}

fn decode_entry(r: &mut Reader) -> Result<Entry> {
    let name = r.bytes()?.to_vec();
    let kind = Kind::from_code(r.u8()?)?;
    let mut e = Entry {
        name,
        kind: Some(kind),
        mode: r.u32()? & 0o7777,
        uid: r.u32()?,
        gid: r.u32()?,
        mtime: r.time()?,
        ctime: r.time()?,
        ..Default::default()
    };
    match kind {
        Kind::File => {
            e.size = r.var()?;
            e.ino = r.var()?;
            e.nlink = r.var()?;
            if e.nlink > 1 {
                e.dev = r.var()?;
            }
            e.content = match r.u8()? {
                0 => Content::None,
                1 => Content::Chunk(ChunkId(r.hash()?)),
                2 => Content::List(ListId(r.hash()?)),
                _ => return Err(FormatError::Malformed("content tag")),
            };
        }
        Kind::Dir => {
            e.subtree = match r.u8()? {
                0 => None,
                1 => Some(TreeId(r.hash()?)),
                _ => return Err(FormatError::Malformed("subtree tag")),
            };
            e.size = r.var()?;
            e.nlink = r.var()?;
        }
        Kind::Symlink => {
            e.target = r.bytes()?.to_vec();
            e.size = e.target.len() as u64;
        }
        Kind::Fifo => {}
        Kind::CharDev | Kind::BlockDev => e.rdev = r.var()?,
    }
    let n = r.var()?;
    for _ in 0..n {
        let k = r.bytes()?.to_vec();
        let v = r.bytes()?.to_vec();
        e.xattrs.push((k, v));
    }
    Ok(e)
}

/// Encodes a single entry on its own (a point's root directory).
pub fn encode_root(e: &Entry) -> Vec<u8> {
    let mut out = vec![TREE_VERSION];
    encode_entry(&mut out, e);
    out
}

/// Decodes what `encode_root` wrote. The root's name is not checked (it is never used as a path).
pub fn decode_root(buf: &[u8]) -> Result<Entry> {
    let mut r = Reader { buf, pos: 0 };
    let v = r.u8()?;
    if v != TREE_VERSION {
        return Err(FormatError::Version(v));
    }
    let e = decode_entry(&mut r)?;
    if !r.done() {
        return Err(FormatError::Malformed("trailing bytes"));
    }
    Ok(e)
}

/// Encodes a directory listing. Entries must be sorted by name and names unique.
pub fn encode_tree(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + entries.len() * 96);
    out.push(TREE_VERSION);
    put_var(&mut out, entries.len() as u64);
    for e in entries {
        encode_entry(&mut out, e);
    }
    out
}

/// Decodes a directory listing, rejecting unsafe, duplicate or unsorted names.
pub fn decode_tree(buf: &[u8]) -> Result<Vec<Entry>> {
    let mut r = Reader { buf, pos: 0 };
    let v = r.u8()?;
    if v != TREE_VERSION {
        return Err(FormatError::Version(v));
    }
    let n = r.var()?;
    let mut out: Vec<Entry> = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let e = decode_entry(&mut r)?;
        check_name(&e.name)?;
        if let Some(prev) = out.last()
            && prev.name >= e.name
        {
            return Err(FormatError::Malformed("names not strictly sorted"));
        }
        out.push(e);
    }
    if !r.done() {
        return Err(FormatError::Malformed("trailing bytes"));
    }
    Ok(out)
}

/// Encodes a file's content list.
pub fn encode_list(extents: &[Extent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + extents.len() * 36);
    out.push(LIST_VERSION);
    put_var(&mut out, extents.len() as u64);
    for x in extents {
        match *x {
            Extent::Data { id, len } => {
                out.push(0);
                out.extend_from_slice(&id.0);
                put_var(&mut out, len);
            }
            Extent::Hole { len } => {
                out.push(1);
                put_var(&mut out, len);
            }
            Extent::Sub { id, len, data } => {
                out.push(2);
                out.extend_from_slice(&id.0);
                put_var(&mut out, len);
                put_var(&mut out, data);
            }
        }
    }
    out
}

/// Decodes a content list.
pub fn decode_list(buf: &[u8]) -> Result<Vec<Extent>> {
    let mut r = Reader { buf, pos: 0 };
    let v = r.u8()?;
    if v != LIST_VERSION {
        return Err(FormatError::Version(v));
    }
    let n = r.var()?;
    let mut out = Vec::with_capacity(n.min(1 << 20) as usize);
    for _ in 0..n {
        out.push(match r.u8()? {
            0 => {
                let id = ChunkId(r.hash()?);
                Extent::Data { id, len: r.var()? }
            }
            1 => Extent::Hole { len: r.var()? },
            2 => {
                let id = ListId(r.hash()?);
                let len = r.var()?;
                let data = r.var()?;
                if data > len {
                    return Err(FormatError::Malformed("segment data larger than segment"));
                }
                Extent::Sub { id, len, data }
            }
            _ => return Err(FormatError::Malformed("extent tag")),
        });
    }
    if !r.done() {
        return Err(FormatError::Malformed("trailing bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry {
                name: b"a".to_vec(),
                kind: Some(Kind::File),
                mode: 0o4755,
                uid: 1000,
                gid: 100,
                mtime: Timestamp { sec: -5, nsec: 7 },
                ctime: Timestamp {
                    sec: 1_700_000_000,
                    nsec: 999_999_999,
                },
                size: 12,
                ino: 77,
                nlink: 2,
                dev: 0x803,
                content: Content::Chunk(ChunkId::of(b"x")),
                xattrs: vec![(b"user.k".to_vec(), vec![0, 1, 2])],
                ..Default::default()
            },
            Entry {
                name: vec![0xff, 0xfe],
                kind: Some(Kind::Symlink),
                target: b"../x".to_vec(),
                size: 4,
                ..Default::default()
            },
            Entry {
                name: vec![0xff, 0xff],
                kind: Some(Kind::Dir),
                subtree: Some(TreeId::of(b"t")),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn tree_round_trips() {
        let t = sample();
        let b = encode_tree(&t);
        assert_eq!(decode_tree(&b).unwrap(), t);
    }

    #[test]
    fn truncated_tree_is_an_error_not_a_panic() {
        let b = encode_tree(&sample());
        for cut in 0..b.len() {
            assert!(decode_tree(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [&b".."[..], b".", b"a/b", b"", b"a\0"] {
            let mut t = sample();
            t[0].name = bad.to_vec();
            t.sort_by(|a, b| a.name.cmp(&b.name));
            assert!(decode_tree(&encode_tree(&t)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_round_trips() {
        let l = vec![
            Extent::Data {
                id: ChunkId::of(b"1"),
                len: 65536,
            },
            Extent::Hole { len: 1 << 40 },
            Extent::Sub {
                id: ListId::of(b"2"),
                len: 64 << 20,
                data: 4096,
            },
        ];
        assert_eq!(decode_list(&encode_list(&l)).unwrap(), l);
    }
}
