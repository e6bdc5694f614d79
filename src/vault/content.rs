//! One seekable reader over a file's or an image's content, used by every consumer: the mount
//! (random reads, SEEK_DATA/SEEK_HOLE), the file restore (sparse writes), the image restore
//! (parallel writes, zero-filled holes on devices) and re-protection (`first_difference`).
//!
//! A content is a list of extents (data chunks, holes, and segments: sub-lists of a disk image).
//! Segments are loaded on first use and kept, so opening a 1 TiB image costs one list. Every byte
//! handed out comes from `read_chunk`, so it was checked against its chunk id: damaged data is an
//! error, never wrong bytes. A tampered catalog cannot loop a reader: nesting is limited and a
//! list shorter or longer than it claims is damage.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};

use super::format::{ChunkId, Content, Entry, Extent, Kind};
use super::reader::VaultReader;
use super::{VaultError, VaultResult};

/// Nesting limit for segments.
const MAX_DEPTH: u32 = 4;

/// Why writing or comparing a content failed: the vault could not supply it, or the target
/// could not take it.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{0}")]
    Target(#[source] std::io::Error),
}

/// How `write_to` writes.
#[derive(Default)]
pub struct WriteOptions<'a> {
    /// Write zeros over holes (a block device, or a file that is not new); otherwise holes are
    /// skipped and the file is extended to its size at the end, so they stay holes.
    pub zero_holes: bool,
    /// Threads sharing the top-level extents (segments of an image); 0 or 1 writes in order.
    pub threads: usize,
    /// Called with the number of bytes just written, from any of the threads.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// A leaf of the layout: stored bytes or a hole.
#[derive(Clone, Copy)]
enum Span {
    Data(ChunkId),
    Hole,
}

struct Piece {
    start: u64,
    x: Extent,
    sub: OnceLock<Arc<Layout>>,
}

struct Layout {
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
                    sub: OnceLock::new(),
                };
                pos += x.len();
                p
            })
            .collect();
        Layout { size, pieces }
    }

    fn index_at(&self, offset: u64) -> usize {
        self.pieces
            .partition_point(|p| p.start + p.x.len() <= offset)
    }
}

fn damaged(detail: impl Into<String>) -> VaultError {
    VaultError::Damaged {
        path: "vault.db".into(),
        detail: detail.into(),
    }
}

/// A seekable, verified view of one file's or image's bytes.
pub struct ContentReader {
    vault: Arc<VaultReader>,
    layout: Arc<Layout>,
}

impl ContentReader {
    pub(super) fn new(vault: Arc<VaultReader>, e: &Entry) -> VaultResult<ContentReader> {
        if e.kind() != Kind::File {
            return Err(damaged("content asked of an entry that is not a file"));
        }
        let extents = match e.content {
            Content::None => Vec::new(),
            Content::Chunk(id) => vec![Extent::Data { id, len: e.size }],
            Content::List(id) => vault.list(&id)?,
        };
        Ok(ContentReader {
            vault,
            layout: Arc::new(Layout::new(e.size, extents)),
        })
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.layout.size
    }

    /// Bytes that hold data (not holes).
    pub fn data_bytes(&self) -> u64 {
        self.layout.pieces.iter().map(|p| p.x.data_len()).sum()
    }

    /// Data bytes rounded up to 4 KiB per extent: what `st_blocks` reports.
    pub fn allocated_bytes(&self) -> u64 {
        self.layout
            .pieces
            .iter()
            .map(|p| match p.x {
                Extent::Data { len, .. } => len.div_ceil(4096) * 4096,
                Extent::Hole { .. } => 0,
                Extent::Sub { data, .. } => data,
            })
            .sum()
    }

    fn sub(&self, p: &Piece) -> VaultResult<Arc<Layout>> {
        let Extent::Sub { id, len, .. } = p.x else {
            return Err(damaged("not a segment"));
        };
        if let Some(l) = p.sub.get() {
            return Ok(l.clone());
        }
        let extents = self.vault.list(&id)?;
        if extents.iter().map(|x| x.len()).sum::<u64>() != len {
            return Err(damaged(format!(
                "segment {id} does not have the length its parent says"
            )));
        }
        Ok(p.sub
            .get_or_init(|| Arc::new(Layout::new(len, extents)))
            .clone())
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    pub fn read_at(&self, offset: u64, len: usize) -> VaultResult<Vec<u8>> {
        let l = &self.layout;
        if offset >= l.size {
            return Ok(Vec::new());
        }
        let end = l.size.min(offset + len as u64);
        let mut out = Vec::with_capacity((end - offset) as usize);
        self.read_into(l, offset, end, &mut out, 0)?;
        Ok(out)
    }

    fn read_into(
        &self,
        l: &Layout,
        offset: u64,
        end: u64,
        out: &mut Vec<u8>,
        depth: u32,
    ) -> VaultResult<()> {
        if depth > MAX_DEPTH {
            return Err(damaged("content lists nested too deep"));
        }
        let mut i = l.index_at(offset);
        let mut pos = offset;
        while pos < end {
            let p = l
                .pieces
                .get(i)
                .ok_or_else(|| damaged("a content list is shorter than its file"))?;
            let skip = pos - p.start;
            let take = (p.start + p.x.len()).min(end) - pos;
            match p.x {
                Extent::Hole { .. } => out.resize(out.len() + take as usize, 0),
                Extent::Data { id, .. } => {
                    let data = self.vault.read_chunk(&id)?;
                    let piece = data
                        .get(skip as usize..(skip + take) as usize)
                        .ok_or_else(|| damaged(format!("chunk {id} is shorter than its extent")))?;
                    out.extend_from_slice(piece);
                }
                Extent::Sub { .. } => {
                    let sub = self.sub(p)?;
                    self.read_into(&sub, skip, skip + take, out, depth + 1)?;
                }
            }
            pos += take;
            i += 1;
        }
        Ok(())
    }

    /// `SEEK_DATA` (`data`) or `SEEK_HOLE`: the first such offset at or after `offset`. The end
    /// of the file counts as a hole; `None` means no data follows.
    pub fn seek(&self, offset: u64, data: bool) -> VaultResult<Option<u64>> {
        if offset >= self.layout.size {
            return Ok(None);
        }
        Ok(match self.seek_in(&self.layout, offset, data, 0)? {
            Some(o) => Some(o),
            None if data => None,
            None => Some(self.layout.size),
        })
    }

    fn seek_in(
        &self,
        l: &Layout,
        offset: u64,
        want_data: bool,
        depth: u32,
    ) -> VaultResult<Option<u64>> {
        if depth > MAX_DEPTH {
            return Err(damaged("content lists nested too deep"));
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
                        let sub = self.sub(p)?;
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

    /// Calls `f(offset, len, span)` for every leaf of top-level pieces `range`, in order.
    fn visit<E: From<VaultError>>(
        &self,
        l: &Layout,
        range: std::ops::Range<usize>,
        base: u64,
        depth: u32,
        f: &mut dyn FnMut(u64, u64, Span) -> Result<(), E>,
    ) -> Result<(), E> {
        if depth > MAX_DEPTH {
            return Err(damaged("content lists nested too deep").into());
        }
        for p in &l.pieces[range] {
            let at = base + p.start;
            match p.x {
                Extent::Data { id, len } => f(at, len, Span::Data(id))?,
                Extent::Hole { len } => f(at, len, Span::Hole)?,
                Extent::Sub { data: 0, len, .. } => f(at, len, Span::Hole)?,
                Extent::Sub { .. } => {
                    let sub = self.sub(p)?;
                    self.visit(&sub, 0..sub.pieces.len(), at, depth + 1, f)?;
                }
            }
        }
        Ok(())
    }

    /// Reads and checks every chunk without writing anything: proves the vault can supply the
    /// whole content before a restore touches its target.
    pub fn check(&self) -> VaultResult<()> {
        let l = self.layout.clone();
        self.visit::<VaultError>(&l, 0..l.pieces.len(), 0, 0, &mut |_, len, span| {
            if let Span::Data(id) = span {
                let data = self.vault.read_chunk(&id)?;
                if (data.len() as u64) < len {
                    return Err(damaged(format!("chunk {id} is shorter than its extent")));
                }
            }
            Ok(())
        })
    }

    /// Writes the content into `file` at the same offsets. Returns the bytes written.
    pub fn write_to(&self, file: &File, opts: &WriteOptions) -> Result<u64, ContentError> {
        let l = self.layout.clone();
        let n = l.pieces.len();
        let threads = opts.threads.clamp(1, n.max(1));
        // Each thread takes the next top-level piece not taken yet, so fewer threads (when the
        // system refuses some) still cover every piece.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let end = std::sync::atomic::AtomicU64::new(0);
        let written = if threads == 1 {
            self.write_pieces(&l, file, opts, &next, &end)?
        } else {
            std::thread::scope(|s| {
                let mut handles = Vec::new();
                for _ in 0..threads {
                    let (l, next, end) = (&l, &next, &end);
                    let body = move || self.write_pieces(l, file, opts, next, end);
                    match crate::threads::try_spawn(s, "restore", body) {
                        Ok(h) => handles.push(h),
                        Err(e) if handles.is_empty() => return Err(ContentError::Target(e)),
                        Err(e) => {
                            let n = crate::words::plural(handles.len() as u64, "thread");
                            log::warn!("writing with {n}: {e}");
                            break;
                        }
                    }
                }
                let mut total = 0;
                for h in handles {
                    total += h
                        .join()
                        .map_err(|_| damaged("a restore thread panicked"))??;
                }
                Ok::<u64, ContentError>(total)
            })?
        };
        if !opts.zero_holes && end.into_inner() < l.size {
            // A new file ending in a hole: extending it leaves the tail a hole.
            file.set_len(l.size).map_err(ContentError::Target)?;
        }
        Ok(written)
    }

    /// Writes top-level pieces, each the next one not taken yet (disjoint ranges of the file);
    /// `end` rises to the end of the last byte written.
    fn write_pieces(
        &self,
        l: &Layout,
        file: &File,
        opts: &WriteOptions,
        next: &std::sync::atomic::AtomicUsize,
        end: &std::sync::atomic::AtomicU64,
    ) -> Result<u64, ContentError> {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        let mut written = 0u64;
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= l.pieces.len() {
                break;
            }
            self.visit::<ContentError>(l, i..i + 1, 0, 0, &mut |at, len, span| {
                match span {
                    Span::Data(id) => {
                        let data = self.vault.read_chunk(&id)?;
                        let data = data.get(..len as usize).ok_or_else(|| {
                            damaged(format!("chunk {id} is shorter than its extent"))
                        })?;
                        file.write_all_at(data, at).map_err(ContentError::Target)?;
                    }
                    Span::Hole if opts.zero_holes => {
                        let mut done = 0;
                        while done < len {
                            let k = (len - done).min(ZEROS.len() as u64) as usize;
                            file.write_all_at(&ZEROS[..k], at + done)
                                .map_err(ContentError::Target)?;
                            done += k as u64;
                        }
                    }
                    Span::Hole => return Ok(()),
                }
                written += len;
                end.fetch_max(at + len, std::sync::atomic::Ordering::Relaxed);
                if let Some(p) = opts.progress {
                    p(len);
                }
                Ok(())
            })?;
        }
        Ok(written)
    }

    /// The first offset at which `file` differs from this content, or `None` if it holds
    /// exactly these bytes (and has this size).
    pub fn first_difference(&self, file: &File) -> Result<Option<u64>, ContentError> {
        use std::io::Seek;
        let size = (&mut &*file)
            .seek(std::io::SeekFrom::End(0))
            .map_err(ContentError::Target)?;
        if size != self.layout.size {
            return Ok(Some(size.min(self.layout.size)));
        }
        let l = self.layout.clone();
        let mut found = None;
        let mut buf = Vec::new();
        let r = self.visit::<ContentError>(&l, 0..l.pieces.len(), 0, 0, &mut |at, len, span| {
            // Holes are compared in pieces: one can span terabytes.
            let step = match span {
                Span::Data(_) => len,
                Span::Hole => len.min(1 << 20),
            };
            let mut done = 0;
            while done < len {
                let n = step.min(len - done);
                buf.resize(n as usize, 0);
                file.read_exact_at(&mut buf, at + done)
                    .map_err(ContentError::Target)?;
                let same = match span {
                    Span::Data(id) => ChunkId::of(&buf) == id,
                    Span::Hole => buf.iter().all(|&b| b == 0),
                };
                if !same {
                    let k = buf.iter().position(|&b| b != 0).unwrap_or(0);
                    found = Some(
                        at + done
                            + if matches!(span, Span::Hole) {
                                k as u64
                            } else {
                                0
                            },
                    );
                    // Stop the walk: nothing after the first difference matters.
                    return Err(ContentError::Target(std::io::Error::other("differs")));
                }
                done += n;
            }
            Ok(())
        });
        match (r, found) {
            (_, Some(at)) => Ok(Some(at)),
            (Err(e), None) => Err(e),
            (Ok(()), None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{
        Committed, DiskSource, InitOptions, ItemSource, NewPoint, SessionOptions, SinkMode, Vault,
    };

    fn block(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| seed.wrapping_add((i % 251) as u8))
            .collect()
    }

    /// A vault holding one file: data, a hole, a segment (data, hole, data), a trailing hole.
    fn sample() -> (tempfile::TempDir, Vault, Entry, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::init(&dir.path().join("v"), &InitOptions::default()).unwrap();
        let lock = vault.lock(false).unwrap();
        let (a, b, c) = (block(1, 5000), block(2, 3000), block(3, 7000));
        let s = vault
            .begin_write(&lock, &SessionOptions { threads: 2 })
            .unwrap();
        let item = s
            .define_item("d", &ItemSource::Disk(DiskSource { images: vec![] }))
            .unwrap();
        let mut sink = s.sink(SinkMode::Alone);
        for x in [&a, &b, &c] {
            assert!(sink.put(ChunkId::of(x), x).unwrap());
        }
        assert!(
            !sink.put(ChunkId::of(&a), &a).unwrap(),
            "a chunk is stored once"
        );
        drop(sink);
        let seg = s
            .put_list(&[
                Extent::Data {
                    id: ChunkId::of(&b),
                    len: 3000,
                },
                Extent::Hole { len: 1000 },
                Extent::Data {
                    id: ChunkId::of(&c),
                    len: 7000,
                },
            ])
            .unwrap();
        let top = s
            .put_list(&[
                Extent::Data {
                    id: ChunkId::of(&a),
                    len: 5000,
                },
                Extent::Hole { len: 4096 },
                Extent::Sub {
                    id: seg,
                    len: 11000,
                    data: 10000,
                },
                Extent::Hole { len: 2000 },
            ])
            .unwrap();
        let entry = Entry {
            name: b"f".to_vec(),
            kind: Some(Kind::File),
            size: 5000 + 4096 + 11000 + 2000,
            content: Content::List(top),
            ..Default::default()
        };
        let root = Entry {
            kind: Some(Kind::Dir),
            subtree: Some(s.put_tree(std::slice::from_ref(&entry)).unwrap()),
            ..Default::default()
        };
        let Committed { point, .. } = s
            .commit(NewPoint {
                item,
                time: 1,
                root,
                files: 1,
                dirs: 1,
                logical_bytes: entry.size,
                warnings: 0,
                consistency: None,
                keep_until: None,
                labels: Default::default(),
            })
            .unwrap();
        assert_eq!(point.new_chunks, 3);
        let mut plain = a.clone();
        plain.resize(5000 + 4096, 0);
        plain.extend_from_slice(&b);
        plain.resize(plain.len() + 1000, 0);
        plain.extend_from_slice(&c);
        plain.resize(plain.len() + 2000, 0);
        drop(lock);
        (dir, vault, entry, plain)
    }

    #[test]
    fn reads_at_any_offset_match_the_plain_bytes() {
        let (_d, vault, entry, plain) = sample();
        let r = vault.reader().content(&entry).unwrap();
        assert_eq!(r.size(), plain.len() as u64);
        assert_eq!(r.data_bytes(), 15000);
        for (off, len) in [
            (0, 22096),
            (4990, 20),
            (9000, 200),
            (12000, 5000),
            (22000, 500),
        ] {
            let got = r.read_at(off, len).unwrap();
            let end = (off as usize + len).min(plain.len());
            assert_eq!(got, &plain[off as usize..end], "at {off}+{len}");
        }
        assert!(r.read_at(plain.len() as u64, 10).unwrap().is_empty());
    }

    #[test]
    fn seek_finds_data_and_holes_inside_segments() {
        let (_d, vault, entry, _) = sample();
        let r = vault.reader().content(&entry).unwrap();
        assert_eq!(r.seek(0, false).unwrap(), Some(5000));
        assert_eq!(r.seek(5000, true).unwrap(), Some(9096));
        assert_eq!(r.seek(9096, false).unwrap(), Some(12096));
        assert_eq!(r.seek(12096, true).unwrap(), Some(13096));
        assert_eq!(r.seek(20096, true).unwrap(), None);
        assert_eq!(r.seek(20096, false).unwrap(), Some(20096));
    }

    #[test]
    fn written_files_are_exact_and_sparse_and_differences_are_found() {
        let (d, vault, entry, plain) = sample();
        let r = vault.reader().content(&entry).unwrap();
        let out = d.path().join("out");
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&out)
            .unwrap();
        let n = r.write_to(&f, &WriteOptions::default()).unwrap();
        assert_eq!(n, 15000, "holes are not written");
        assert_eq!(std::fs::read(&out).unwrap(), plain);
        assert_eq!(r.first_difference(&f).unwrap(), None);
        r.check().unwrap();
        f.write_all_at(b"x", 10000).unwrap();
        assert_eq!(r.first_difference(&f).unwrap(), Some(9096));
        f.write_all_at(b"y", 21000).unwrap();
        f.write_all_at(&plain[10000..10001], 10000).unwrap();
        assert_eq!(r.first_difference(&f).unwrap(), Some(21000));
        // Threads and zero-filled holes give the same bytes over old contents.
        let g = File::options().read(true).write(true).open(&out).unwrap();
        g.write_all_at(&vec![0xff; plain.len()], 0).unwrap();
        let opts = WriteOptions {
            zero_holes: true,
            threads: 3,
            progress: None,
        };
        assert_eq!(r.write_to(&g, &opts).unwrap(), plain.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), plain);
    }

    #[test]
    fn a_damaged_record_is_an_error_never_wrong_bytes() {
        let (_d, vault, entry, _) = sample();
        let packs = vault.root().join("packs");
        let pack = std::fs::read_dir(&packs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "pack"))
            .unwrap();
        let mut bytes = std::fs::read(&pack).unwrap();
        let n = bytes.len();
        bytes[n - 100] ^= 0x55;
        std::fs::write(&pack, bytes).unwrap();
        let r = vault.reader().content(&entry).unwrap();
        assert!(r.read_at(0, 30000).is_err());
        assert!(r.check().is_err());
    }
}
