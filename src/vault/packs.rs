//! Pack files: append-only containers of compressed chunk records.
//!
//! Owns the on-disk pack format and its writer and reader. A pack starts with a 16-byte header
//! (`COFFREPK`, format version); then records follow back to back. A record is one zstd frame
//! (or raw bytes) holding one or more whole chunks, preceded by a self-describing header: the
//! payload lengths and every chunk's id and length, closed by an 8-byte BLAKE3 check of the
//! header, so the chunk table can be rebuilt by scanning packs alone (`scan`).
//! Crash story: a pack is written by one writer, fsync'd when sealed, and only then named by the
//! catalog; a crash leaves at worst a pack file the catalog does not know, which the next writer
//! deletes (see `Vault::lock`). Sealed packs never change; readers map them with memmap2.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::format::ChunkId;

pub const PACK_MAGIC: &[u8; 8] = b"COFFREPK";
pub const PACK_VERSION: u32 = 1;
pub const PACK_HEADER_LEN: u64 = 16;
const RECORD_MAGIC: &[u8; 4] = b"CREC";
/// Fixed part of a record header: magic, header_len, stored_len, plain_len, codec, count.
const RECORD_FIXED: usize = 4 + 4 + 4 + 4 + 1 + 4;
/// A pack is sealed once it reaches this size.
pub const PACK_TARGET: u64 = 32 * 1024 * 1024;

/// How a record's payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    pub fn from_code(c: i64) -> Option<Codec> {
        match c {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A record being written: its payload and the chunks it holds, in order.
pub struct Record {
    pub codec: Codec,
    pub plain_len: u32,
    pub payload: Vec<u8>,
    pub chunks: Vec<(ChunkId, u32)>,
}

/// Where a record's payload sits in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPos {
    pub offset: u64,
    pub stored_len: u32,
    pub plain_len: u32,
    pub codec: Codec,
}

fn encode_header(rec: &Record) -> Vec<u8> {
    let header_len = RECORD_FIXED + rec.chunks.len() * 36 + 8;
    let mut h = Vec::with_capacity(header_len);
    h.extend_from_slice(RECORD_MAGIC);
    h.extend_from_slice(&(header_len as u32).to_le_bytes());
    h.extend_from_slice(&(rec.payload.len() as u32).to_le_bytes());
    h.extend_from_slice(&rec.plain_len.to_le_bytes());
    h.push(rec.codec as u8);
    h.extend_from_slice(&(rec.chunks.len() as u32).to_le_bytes());
    for (id, len) in &rec.chunks {
        h.extend_from_slice(&id.0);
        h.extend_from_slice(&len.to_le_bytes());
    }
    let check = blake3::hash(&h);
    h.extend_from_slice(&check.as_bytes()[..8]);
    h
}

/// Writes one new pack. Not thread-safe: one writer thread owns it.
pub struct PackWriter {
    pub name: String,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl PackWriter {
    /// Creates `dir/<name>.pack`; fails if it exists.
    pub fn create(dir: &Path, name: &str) -> io::Result<PackWriter> {
        let path = dir.join(format!("{name}.pack"));
        // Owner only, whatever the umask: a pack holds backed-up data.
        let f = File::options()
            .write(true)
            .create_new(true)
            .mode(super::FILE_MODE)
            .open(&path)?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(PACK_MAGIC)?;
        out.write_all(&PACK_VERSION.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        Ok(PackWriter {
            name: name.to_string(),
            path,
            out,
            len: PACK_HEADER_LEN,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == PACK_HEADER_LEN
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record and returns where its payload landed.
    pub fn append(&mut self, rec: &Record) -> io::Result<RecordPos> {
        let h = encode_header(rec);
        self.out.write_all(&h)?;
        self.out.write_all(&rec.payload)?;
        let pos = RecordPos {
            offset: self.len + h.len() as u64,
            stored_len: rec.payload.len() as u32,
            plain_len: rec.plain_len,
            codec: rec.codec,
        };
        self.len += (h.len() + rec.payload.len()) as u64;
        Ok(pos)
    }

    /// Flushes and fsyncs the pack. After this returns the bytes survive a crash.
    pub fn seal(mut self) -> io::Result<(String, u64)> {
        self.out.flush()?;
        let f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok((self.name, self.len))
    }
}

/// One chunk found by scanning a pack.
#[derive(Clone, Debug)]
pub struct ScannedChunk {
    pub id: ChunkId,
    pub record: RecordPos,
    pub offset: u32,
    pub len: u32,
}

/// Why a pack could not be (fully) scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("not a coffre pack (bad magic)")]
    Magic,
    #[error("pack format version {0} is newer than this coffre supports")]
    Version(u32),
    #[error("damaged record at offset {0}")]
    Record(u64),
}

/// Checks a pack's header.
pub fn check_header(data: &[u8]) -> Result<(), ScanError> {
    if data.len() < PACK_HEADER_LEN as usize || &data[..8] != PACK_MAGIC {
        return Err(ScanError::Magic);
    }
    let v = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    if v != PACK_VERSION {
        return Err(ScanError::Version(v));
    }
    Ok(())
}

/// Parses every record header of a mapped pack, without decompressing payloads. Returns the
/// chunks found before the first damaged record, and the error if there was one.
pub fn scan(data: &[u8]) -> (Vec<ScannedChunk>, Option<ScanError>) {
    let mut out = Vec::new();
    if let Err(e) = check_header(data) {
        return (out, Some(e));
    }
    let mut pos = PACK_HEADER_LEN as usize;
    while pos < data.len() {
        match parse_record(data, pos) {
            Some((rec, chunks, next)) => {
                let mut off = 0u32;
                for (id, len) in chunks {
                    out.push(ScannedChunk {
                        id,
                        record: rec,
                        offset: off,
                        len,
                    });
                    off += len;
                }
                pos = next;
            }
            None => return (out, Some(ScanError::Record(pos as u64))),
        }
    }
    (out, None)
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

type ParsedRecord = (RecordPos, Vec<(ChunkId, u32)>, usize);

fn parse_record(data: &[u8], pos: usize) -> Option<ParsedRecord> {
    let h = data.get(pos..)?;
    if h.get(..4)? != RECORD_MAGIC {
        return None;
    }
    let header_len = le32(h, 4)? as usize;
    let stored_len = le32(h, 8)?;
    let plain_len = le32(h, 12)?;
    let codec = Codec::from_code(*h.get(16)? as i64)?;
    let n = le32(h, 17)? as usize;
    if header_len != RECORD_FIXED + n.checked_mul(36)? + 8 || header_len > h.len() {
        return None;
    }
    let body = &h[..header_len - 8];
    if blake3::hash(body).as_bytes()[..8] != h[header_len - 8..header_len] {
        return None;
    }
    let mut chunks = Vec::with_capacity(n);
    let mut sum = 0u64;
    for i in 0..n {
        let at = RECORD_FIXED + i * 36;
        let id = ChunkId::from_slice(&h[at..at + 32])?;
        let len = le32(h, at + 32)?;
        sum += len as u64;
        chunks.push((id, len));
    }
    if sum != plain_len as u64 {
        return None;
    }
    let next = pos
        .checked_add(header_len)?
        .checked_add(stored_len as usize)?;
    if next > data.len() {
        return None;
    }
    Some((
        RecordPos {
            offset: (pos + header_len) as u64,
            stored_len,
            plain_len,
            codec,
        },
        chunks,
        next,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_scan_and_truncation_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path(), "p").unwrap();
        let a = b"hello".to_vec();
        let b = vec![7u8; 1000];
        let rec1 = Record {
            codec: Codec::Raw,
            plain_len: (a.len() + b.len()) as u32,
            payload: [a.clone(), b.clone()].concat(),
            chunks: vec![(ChunkId::of(&a), 5), (ChunkId::of(&b), 1000)],
        };
        let z = zstd::bulk::compress(&b, 3).unwrap();
        let rec2 = Record {
            codec: Codec::Zstd,
            plain_len: 1000,
            payload: z,
            chunks: vec![(ChunkId::of(&b), 1000)],
        };
        let p1 = w.append(&rec1).unwrap();
        let p2 = w.append(&rec2).unwrap();
        let path = w.path().to_path_buf();
        w.seal().unwrap();
        let data = std::fs::read(&path).unwrap();
        let (chunks, err) = scan(&data);
        assert!(err.is_none());
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].record, p1);
        assert_eq!(chunks[1].offset, 5);
        assert_eq!(chunks[2].record, p2);
        let off = p1.offset as usize;
        assert_eq!(&data[off..off + 5], b"hello");
        // A torn tail loses only the torn record.
        let (chunks, err) = scan(&data[..data.len() - 1]);
        assert_eq!(chunks.len(), 2);
        assert!(matches!(err, Some(ScanError::Record(_))));
        // A flipped header byte is caught by the header check.
        let mut bad = data.clone();
        bad[PACK_HEADER_LEN as usize + 30] ^= 1;
        assert!(scan(&bad).1.is_some());
    }
}
