//! The tar stream of `coffre dump`: GNU headers (long names and link targets as GNU long-name
//! entries, large owners in base-256), preceded by a PAX extended header when an entry has
//! nanoseconds in its mtime or extended attributes (`SCHILY.xattr.*`, as GNU tar `--xattrs` and
//! bsdtar write them, POSIX ACLs included). Hard links of a point become tar hard links to the
//! first name seen. Writes only to its output.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use tar::{Builder, EntryType, Header};

use super::{BrowseResult, ContentRead, unwrap_vault};
use crate::vault::{Entry, Kind, VaultReader};

pub(super) struct TarWriter<'w> {
    reader: Arc<VaultReader>,
    out: Builder<&'w mut dyn Write>,
    /// (dev, ino) of a hard-linked file -> the path it was first written under.
    links: HashMap<(u64, u64), Vec<u8>>,
}

fn path_of(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

/// One PAX record: `<len> <key>=<value>\n`, where len counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + body.to_string().len();
    if len.to_string().len() + body > len {
        len += 1;
    }
    out.extend_from_slice(format!("{len} ").as_bytes());
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

impl<'w> TarWriter<'w> {
    pub(super) fn new(reader: Arc<VaultReader>, out: &'w mut dyn Write) -> TarWriter<'w> {
        TarWriter {
            reader,
            out: Builder::new(out),
            links: HashMap::new(),
        }
    }

    /// Appends one entry under `path` (its content too, for a file).
    pub(super) fn append(&mut self, path: &[u8], e: &Entry) -> BrowseResult<()> {
        self.pax(e)?;
        let mut h = Header::new_gnu();
        h.set_mode(e.mode & 0o7777);
        h.set_uid(e.uid.into());
        h.set_gid(e.gid.into());
        h.set_mtime(e.mtime.sec.max(0) as u64);
        h.set_size(0);
        match e.kind() {
            Kind::File => return self.file(h, path, e),
            Kind::Dir => h.set_entry_type(EntryType::Directory),
            Kind::Symlink => {
                h.set_entry_type(EntryType::Symlink);
                self.out
                    .append_link(&mut h, path_of(path), path_of(&e.target))?;
                return Ok(());
            }
            Kind::Fifo => h.set_entry_type(EntryType::Fifo),
            Kind::CharDev | Kind::BlockDev => {
                let block = e.kind() == Kind::BlockDev;
                h.set_entry_type(if block {
                    EntryType::Block
                } else {
                    EntryType::Char
                });
                h.set_device_major(libc::major(e.rdev))?;
                h.set_device_minor(libc::minor(e.rdev))?;
            }
        }
        self.out.append_data(&mut h, path_of(path), io::empty())?;
        Ok(())
    }

    fn file(&mut self, mut h: Header, path: &[u8], e: &Entry) -> BrowseResult<()> {
        if let Some(key) = e.link_key() {
            if let Some(first) = self.links.get(&key) {
                h.set_entry_type(EntryType::Link);
                self.out
                    .append_link(&mut h, path_of(path), path_of(first))?;
                return Ok(());
            }
            self.links.insert(key, path.to_vec());
        }
        h.set_entry_type(EntryType::Regular);
        h.set_size(e.size);
        let data = ContentRead::new(&self.reader, e)?;
        self.out
            .append_data(&mut h, path_of(path), data)
            .map_err(unwrap_vault)
    }

    /// A PAX extended header for what a GNU header cannot hold: sub-second mtime, xattrs.
    fn pax(&mut self, e: &Entry) -> BrowseResult<()> {
        let mut records = Vec::new();
        if e.mtime.nsec != 0 {
            let mtime = format!("{}.{:09}", e.mtime.sec, e.mtime.nsec);
            pax_record(&mut records, b"mtime", mtime.as_bytes());
        }
        for (name, value) in &e.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name);
            pax_record(&mut records, &key, value);
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_path("PaxHeader")?;
        h.set_mode(0o644);
        h.set_size(records.len() as u64);
        h.set_cksum();
        self.out.append(&h, records.as_slice())?;
        Ok(())
    }

    /// Writes the end-of-archive blocks.
    pub(super) fn finish(mut self) -> BrowseResult<()> {
        self.out.finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pax_records_count_their_own_length() {
        for value in [
            &b"x"[..],
            &[b'v'; 90][..],
            &[b'v'; 993][..],
            &[b'v'; 994][..],
        ] {
            let mut r = Vec::new();
            super::pax_record(&mut r, b"mtime", value);
            let len: usize = std::str::from_utf8(&r[..r.iter().position(|&b| b == b' ').unwrap()])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, r.len());
        }
    }
}
