//! Scrubbing a pack: read it back once, sequentially, and check every chunk the catalog places
//! in it against its id.
//!
//! Owns the one code path that reads a whole pack: `verify` checks with it and garbage
//! collection reads the live chunks it moves with it, so a collection never copies a damaged
//! chunk into a new pack. Reads only: no crash story.

use std::io;

use super::catalog::ChunkRow;
use super::format::ChunkId;
use super::packs::{self, Codec};
use super::store::PackStore;

thread_local! {
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// What scrubbing one pack read.
#[derive(Debug, Default)]
pub struct Scrubbed {
    /// Bytes read from the store.
    pub read: u64,
}

/// Reads pack `name` and calls `f` for every row of `rows` (sorted here by record), with the
/// chunk's bytes when they decompress and hash to its id, or why not. A pack shorter than the
/// rows say is read record by record, so the records before the cut still check out. A missing
/// pack, a short one and a read error of the medium (EIO) are damage; any other error (no
/// permission, too many open files) says nothing about the data and is returned.
pub fn scrub_pack(
    store: &dyn PackStore,
    name: &str,
    rows: &mut [ChunkRow],
    mut f: impl FnMut(&ChunkRow, Result<&[u8], String>),
) -> io::Result<Scrubbed> {
    rows.sort_by_key(|r| (r.loc.record.offset, r.loc.offset));
    let end = rows
        .iter()
        .map(|r| r.loc.record.offset + r.loc.record.stored_len as u64)
        .max()
        .unwrap_or(packs::PACK_HEADER_LEN)
        .max(packs::PACK_HEADER_LEN);
    let mut data = vec![0u8; end as usize];
    let mut out = Scrubbed::default();
    match store.read_at(name, 0, &mut data) {
        Ok(()) => {
            out.read = end;
            if let Err(e) = packs::check_header(&data) {
                let why = format!("pack {name} has a damaged header: {e}");
                return Ok(fail_all(rows, &why, f));
            }
            for group in records(rows) {
                let start = group[0].loc.record.offset as usize;
                let stored = &data[start..start + group[0].loc.record.stored_len as usize];
                check_record(group, stored, &mut f);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            for group in records(rows) {
                let pos = group[0].loc.record;
                let mut stored = vec![0u8; pos.stored_len as usize];
                match store.read_at(name, pos.offset, &mut stored) {
                    Ok(()) => {
                        out.read += stored.len() as u64;
                        check_record(group, &stored, &mut f);
                    }
                    Err(e) if is_damage(&e) => {
                        let why = read_error(name, &e);
                        group.iter().for_each(|r| f(r, Err(why.clone())));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(e) if is_damage(&e) => return Ok(fail_all(rows, &read_error(name, &e), f)),
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// True for read errors that mean the stored bytes are gone or unreadable.
fn is_damage(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
    ) || e.raw_os_error() == Some(libc::EIO)
}

fn fail_all(
    rows: &[ChunkRow],
    why: &str,
    mut f: impl FnMut(&ChunkRow, Result<&[u8], String>),
) -> Scrubbed {
    rows.iter().for_each(|r| f(r, Err(why.to_string())));
    Scrubbed::default()
}

fn read_error(name: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => format!("pack {name} is missing"),
        io::ErrorKind::UnexpectedEof => format!("its record lies past the end of pack {name}"),
        _ => format!("cannot read pack {name}: {e}"),
    }
}

/// The rows of one record each, in pack order (rows sorted by record offset).
fn records(rows: &[ChunkRow]) -> impl Iterator<Item = &[ChunkRow]> {
    rows.chunk_by(|a, b| a.loc.record.offset == b.loc.record.offset)
}

/// Checks every chunk of one record; `stored` is the record's payload as read.
fn check_record(
    group: &[ChunkRow],
    stored: &[u8],
    f: &mut impl FnMut(&ChunkRow, Result<&[u8], String>),
) {
    let pos = group[0].loc.record;
    let plain: std::borrow::Cow<[u8]> = match pos.codec {
        Codec::Raw => stored.into(),
        Codec::Zstd => {
            let mut out = Vec::with_capacity(pos.plain_len as usize);
            // One decompression context per thread: making one per record costs more than a
            // small record's decompression.
            let r = DCTX.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::new()?);
                }
                d.as_mut()
                    .expect("made above")
                    .decompress_to_buffer(stored, &mut out)
            });
            if let Err(e) = r {
                let why = format!("its record does not decompress: {e}");
                group.iter().for_each(|r| f(r, Err(why.clone())));
                return;
            }
            out.into()
        }
    };
    for row in group {
        let range = row.loc.offset as usize..(row.loc.offset + row.loc.len) as usize;
        match plain.get(range) {
            _ if plain.len() != pos.plain_len as usize => {
                f(row, Err("its record has the wrong length".into()))
            }
            Some(b) if ChunkId::of(b) == row.id => f(row, Ok(b)),
            Some(_) => f(row, Err("its bytes do not match its id".into())),
            None => f(row, Err("it lies outside its record".into())),
        }
    }
}
