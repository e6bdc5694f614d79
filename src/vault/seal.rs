//! Sealing: the encryption of replicas that leave the machine (a local vault stays plain,
//! protected by its permissions).
//!
//! Owns the replica key (`ReplicaKey`: a key file of at least 32 bytes, from which BLAKE3's
//! key derivation makes independent keys for packs, blobs and segment nonces, and a check value that tells
//! a wrong key from damage), `SealedStore` (a `PackStore` over any other whose packs are sealed
//! with XChaCha20-Poly1305 in 64 KiB segments), and `seal_blob`/`open_blob` for whole objects (a
//! replica's catalog).
//! Sealed pack layout: the 16-byte magic `PACK_MAGIC`, a random 16-byte salt drawn for each
//! upload, then the plain pack cut in segments of `SEGMENT` bytes (the last one shorter, possibly
//! empty, and always present), each followed by its 16-byte tag. The associated data of segment
//! `i` is the pack's name, the salt, `i` and whether it is the last, so a segment moved to another
//! place or pack, a dropped tail or a pack renamed all fail authentication. Its nonce is the nonce
//! key's keyed BLAKE3 of the salt, the name and `i`: a pack sent again (a retry after a failed
//! upload, whose bytes may differ if the disk read differently) draws a new salt, so no nonce ever
//! seals two plaintexts. Plain offsets stay valid: the catalog's chunk rows (pack, record offset) mean the
//! same on a sealed replica, and a read of a few bytes authenticates and decrypts only the
//! segments under it.
//! Blob layout: `BLOB_MAGIC`, a random 24-byte nonce, the plain length (8 bytes, little-endian),
//! then the zstd-compressed plain bytes sealed with the blob's role ("catalog") and that length
//! as associated data.
//! Crash story: sealing adds no state: a sealed pack is written through the inner store's
//! upload (durable on `finish`, as any pack), a blob by whoever stores it.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::store::{PackInfo, PackStore, PackUpload};

/// Plain bytes per sealed segment.
pub const SEGMENT: u64 = 64 * 1024;
/// Bytes an AEAD tag adds to each segment.
const TAG: u64 = 16;
/// The first bytes of every sealed pack.
pub const PACK_MAGIC: &[u8; 16] = b"coffre-sealpack1";
/// Bytes of a sealed pack before its first segment: the magic and the salt.
pub const HEADER: u64 = 32;
/// The first bytes of every sealed blob.
pub const BLOB_MAGIC: &[u8; 16] = b"coffre-sealblob1";
/// A key file must hold at least this many bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Why a sealed object cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("it is not sealed by coffre")]
    NotSealed,
    #[error("it fails authentication: it is damaged, or sealed with another key")]
    Authentication,
    #[error("its sealed contents do not decompress: {0}")]
    Decompress(String),
}

/// The key of a sealed replica, derived from a key file.
#[derive(Clone)]
pub struct ReplicaKey {
    master: [u8; 32],
    packs: [u8; 32],
    blobs: [u8; 32],
    nonces: [u8; 32],
    check: [u8; 32],
}

impl std::fmt::Debug for ReplicaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplicaKey({})", self.check_value())
    }
}

impl ReplicaKey {
    /// The key made from a key file's bytes (at least `MIN_KEY_BYTES`).
    pub fn from_bytes(material: &[u8]) -> Result<ReplicaKey, String> {
        // A key file as `create_file` writes it (hex), with or without its newline.
        let text = std::str::from_utf8(material).unwrap_or("").trim();
        let decoded: Option<Vec<u8>> = (text.len() == 64)
            .then(|| {
                (0..32)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                    .collect()
            })
            .flatten();
        let material = decoded.as_deref().unwrap_or(material);
        if material.len() < MIN_KEY_BYTES {
            return Err(format!(
                "a key file must hold at least {MIN_KEY_BYTES} bytes (this one has {}); \
                 `coffre vault set replica-key FILE` creates one when FILE does not exist",
                material.len()
            ));
        }
        let master = blake3::derive_key("coffre 2026-12 replica master key", material);
        Ok(ReplicaKey::from_master(master))
    }

    fn from_master(master: [u8; 32]) -> ReplicaKey {
        let sub = |ctx: &str| blake3::derive_key(ctx, &master);
        ReplicaKey {
            master,
            packs: sub("coffre 2026-12 replica pack sealing"),
            blobs: sub("coffre 2026-12 replica blob sealing"),
            nonces: sub("coffre 2026-12 replica segment nonces"),
            check: sub("coffre 2026-12 replica key check"),
        }
    }

    /// Reads a key file.
    pub fn from_file(path: &Path) -> Result<ReplicaKey, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
        ReplicaKey::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes a new key file (32 random bytes as hex, owner-only); fails if `path` exists.
    pub fn create_file(path: &Path) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key = random_bytes::<32>()?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(format!("{hex}\n").as_bytes())?;
        f.sync_all()
    }

    /// A value a replica may show in the clear: it tells whether a key is the replica's, and
    /// nothing about the key or the data.
    pub fn check_value(&self) -> String {
        self.check[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn segment_nonce(&self, salt: &[u8; 16], pack: &str, index: u64) -> XNonce {
        let mut h = blake3::Hasher::new_keyed(&self.nonces);
        h.update(salt);
        h.update(pack.as_bytes());
        h.update(&index.to_le_bytes());
        *XNonce::from_slice(&h.finalize().as_bytes()[..24])
    }
}

/// The meta key under which a vault keeps the key its replicas are sealed with.
const REPLICA_KEY: &str = "replica_key";

impl super::Vault {
    /// Remembers (or, with `None`, forgets) the key replicas are sealed with. The vault keeps
    /// it in its catalog, which only its owner can read (a local vault is not encrypted); the
    /// key file must be kept elsewhere too, or a replica outlives its only key.
    pub fn set_replica_key(
        &self,
        _lock: &super::WriteLock,
        key: Option<&ReplicaKey>,
    ) -> super::VaultResult<()> {
        match key {
            Some(k) => {
                let hex: String = k.master.iter().map(|b| format!("{b:02x}")).collect();
                self.catalog.set_meta(REPLICA_KEY, &hex)
            }
            None => self.catalog.delete_meta(REPLICA_KEY).map(|_| ()),
        }
    }

    /// The key replicas are sealed with, if one was set.
    pub fn replica_key(&self) -> super::VaultResult<Option<ReplicaKey>> {
        let Some(hex) = self.catalog.meta(REPLICA_KEY)? else {
            return Ok(None);
        };
        let bytes =
            super::format::ChunkId::from_hex(&hex).ok_or_else(|| super::VaultError::Damaged {
                path: "vault.db".into(),
                detail: "the stored replica key is not 64 hex digits".into(),
            })?;
        Ok(Some(ReplicaKey::from_master(bytes.0)))
    }
}

/// `N` bytes from the kernel's generator; an error rather than anything weaker.
fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(buf)
}

fn segment_aad(salt: &[u8; 16], pack: &str, index: u64, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(pack.len() + 26);
    aad.extend_from_slice(pack.as_bytes());
    aad.push(0);
    aad.extend_from_slice(salt);
    aad.extend_from_slice(&index.to_le_bytes());
    aad.push(last as u8);
    aad
}

/// What seals the segments of one pack.
struct PackSeal<'a> {
    key: &'a ReplicaKey,
    salt: [u8; 16],
    name: &'a str,
}

fn seal_segment(p: &PackSeal, index: u64, last: bool, plain: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new((&p.key.packs).into());
    let aad = segment_aad(&p.salt, p.name, index, last);
    cipher
        .encrypt(
            &p.key.segment_nonce(&p.salt, p.name, index),
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .expect("sealing a buffer cannot fail")
}

fn open_segment(p: &PackSeal, index: u64, last: bool, sealed: &[u8]) -> io::Result<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new((&p.key.packs).into());
    let aad = segment_aad(&p.salt, p.name, index, last);
    let pack = p.name;
    cipher
        .decrypt(
            &p.key.segment_nonce(&p.salt, p.name, index),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "sealed pack {pack}: segment {index} fails authentication (damaged, or \
                     sealed with another key)"
                ),
            )
        })
}

/// The plain size of a sealed pack of `sealed` bytes: exact for every size the writer makes; for
/// a pack cut short (or grown) elsewhere, a size whose last segment then fails authentication,
/// so the segments before it still read. `None` if not even one tag fits.
pub fn plain_size(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(HEADER)?;
    if body < TAG {
        return None;
    }
    let segments = body.div_ceil(SEGMENT + TAG);
    Some(body - segments * TAG)
}

/// The sealed size of a pack of `plain` bytes.
pub fn sealed_size(plain: u64) -> u64 {
    // Full segments are followed by more data; the last one holds 0..=SEGMENT bytes.
    let segments = if plain == 0 {
        1
    } else {
        plain.div_ceil(SEGMENT)
    };
    HEADER + plain + segments * TAG
}

/// Pack `name`'s plain bytes sealed whole, with a new salt (as `SealedStore::create` writes it).
#[cfg(test)]
pub fn seal_pack(key: &ReplicaKey, name: &str, plain: &[u8]) -> io::Result<Vec<u8>> {
    let seal = PackSeal {
        key,
        salt: random_bytes::<16>()?,
        name,
    };
    let mut out = Vec::with_capacity(sealed_size(plain.len() as u64) as usize);
    out.extend_from_slice(PACK_MAGIC);
    out.extend_from_slice(&seal.salt);
    let segments = plain.len().div_ceil(SEGMENT as usize).max(1);
    for i in 0..segments {
        let from = i * SEGMENT as usize;
        let to = (from + SEGMENT as usize).min(plain.len());
        let last = i + 1 == segments;
        out.extend_from_slice(&seal_segment(&seal, i as u64, last, &plain[from..to]));
    }
    Ok(out)
}

/// A pack store whose packs are sealed in the store below it (see the module header).
pub struct SealedStore {
    inner: Arc<dyn PackStore>,
    key: ReplicaKey,
    /// Sealed sizes of packs seen in the inner store's listing (packs never change once
    /// written; a size listed while one was being written is dropped when a read fails).
    sizes: Mutex<HashMap<String, u64>>,
    /// Salts of packs read (dropped with the size).
    salts: Mutex<HashMap<String, [u8; 16]>>,
}

impl SealedStore {
    pub fn new(inner: Arc<dyn PackStore>, key: ReplicaKey) -> SealedStore {
        SealedStore {
            inner,
            key,
            sizes: Mutex::new(HashMap::new()),
            salts: Mutex::new(HashMap::new()),
        }
    }

    /// Pack `name`'s salt, its magic checked (read once, then kept).
    fn salt(&self, name: &str) -> io::Result<[u8; 16]> {
        if let Some(s) = self.salts.lock().expect("salts lock").get(name) {
            return Ok(*s);
        }
        let mut head = [0u8; HEADER as usize];
        self.inner.read_at(name, 0, &mut head)?;
        if &head[..16] != PACK_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("pack {name} is not a sealed pack (an encrypted replica holds only those)"),
            ));
        }
        let salt: [u8; 16] = head[16..].try_into().expect("16 bytes");
        self.salts
            .lock()
            .expect("salts lock")
            .insert(name.to_string(), salt);
        Ok(salt)
    }

    fn forget(&self, name: &str) {
        self.sizes.lock().expect("sizes lock").remove(name);
        self.salts.lock().expect("salts lock").remove(name);
    }

    /// The sealed size of pack `name` (listing the inner store again on a miss).
    fn sealed_len(&self, name: &str) -> io::Result<u64> {
        if let Some(s) = self.sizes.lock().expect("sizes lock").get(name) {
            return Ok(*s);
        }
        let listed = self.inner.list()?;
        let mut sizes = self.sizes.lock().expect("sizes lock");
        for p in listed {
            sizes.insert(p.name, p.size);
        }
        sizes.get(name).copied().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("pack {name} is missing"))
        })
    }

    /// `read_at` with the sealed size this store knows (listing on a miss).
    fn read_sized(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let sealed = self.sealed_len(name)?;
        let plain = plain_size(sealed).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sealed pack {name} has an impossible size ({sealed} bytes)"),
            )
        })?;
        // An offset near the end of u64 (a damaged or hostile catalog row) is past the end too.
        let end = offset.saturating_add(buf.len() as u64);
        if end > plain {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read past the end of pack {name}"),
            ));
        }
        let segments = plain.div_ceil(SEGMENT).max(1);
        let (first, last) = (offset / SEGMENT, (end - 1) / SEGMENT);
        let from = HEADER + first * (SEGMENT + TAG);
        let to = (HEADER + (last + 1) * (SEGMENT + TAG)).min(sealed);
        let seal = PackSeal {
            key: &self.key,
            salt: self.salt(name)?,
            name,
        };
        let mut raw = vec![0u8; (to - from) as usize];
        self.inner.read_at(name, from, &mut raw)?;
        let mut at = 0usize;
        for (k, chunk) in raw.chunks((SEGMENT + TAG) as usize).enumerate() {
            let i = first + k as u64;
            let is_last = i + 1 == segments;
            let seg = open_segment(&seal, i, is_last, chunk)?;
            let seg_start = i * SEGMENT;
            let lo = offset.max(seg_start) - seg_start;
            let hi = end.min(seg_start + seg.len() as u64) - seg_start;
            let n = (hi - lo) as usize;
            buf[at..at + n].copy_from_slice(&seg[lo as usize..hi as usize]);
            at += n;
        }
        Ok(())
    }
}

impl PackStore for SealedStore {
    fn describe(&self) -> String {
        format!("{} (sealed)", self.inner.describe())
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn PackUpload>> {
        let salt = random_bytes::<16>()?;
        let mut inner = self.inner.create(name)?;
        inner.write_all(PACK_MAGIC)?;
        inner.write_all(&salt)?;
        Ok(Box::new(SealedUpload {
            inner,
            key: self.key.clone(),
            salt,
            name: name.to_string(),
            buf: Vec::with_capacity(SEGMENT as usize + 1),
            index: 0,
        }))
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let cached = self.sizes.lock().expect("sizes lock").contains_key(name);
        match self.read_sized(name, offset, buf) {
            // A size listed while the pack was still being written is stale: list once more.
            Err(_) if cached => {
                self.forget(name);
                self.read_sized(name, offset, buf)
            }
            r => r,
        }
    }

    fn list(&self) -> io::Result<Vec<PackInfo>> {
        let listed = self.inner.list()?;
        let mut sizes = self.sizes.lock().expect("sizes lock");
        Ok(listed
            .into_iter()
            .map(|p| {
                sizes.insert(p.name.clone(), p.size);
                PackInfo {
                    // An impossible size shows as empty: `check` calls the pack short.
                    size: plain_size(p.size).unwrap_or(0),
                    name: p.name,
                }
            })
            .collect())
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        self.forget(name);
        self.inner.delete(name)
    }

    fn quarantine(&self, name: &str) -> io::Result<()> {
        self.forget(name);
        self.inner.quarantine(name)
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
}

/// A sealed pack being written: full segments are sealed as soon as more data follows them.
struct SealedUpload {
    inner: Box<dyn PackUpload>,
    key: ReplicaKey,
    salt: [u8; 16],
    name: String,
    buf: Vec<u8>,
    index: u64,
}

impl SealedUpload {
    fn seal(&self, last: bool, plain: &[u8]) -> Vec<u8> {
        let seal = PackSeal {
            key: &self.key,
            salt: self.salt,
            name: &self.name,
        };
        seal_segment(&seal, self.index, last, plain)
    }
}

impl PackUpload for SealedUpload {
    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = SEGMENT as usize + 1 - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() > SEGMENT as usize {
                let sealed = self.seal(false, &self.buf[..SEGMENT as usize]);
                self.inner.write_all(&sealed)?;
                self.buf.drain(..SEGMENT as usize);
                self.index += 1;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let sealed = self.seal(true, &self.buf);
        self.inner.write_all(&sealed)?;
        self.inner.finish()
    }

    fn abort(self: Box<Self>) {
        self.inner.abort()
    }
}

/// Seals a whole object (compressed first); `role` names what it is ("catalog").
pub fn seal_blob(key: &ReplicaKey, role: &str, plain: &[u8]) -> io::Result<Vec<u8>> {
    let packed = zstd::bulk::compress(plain, 3)?;
    let nonce = random_bytes::<24>()?;
    let cipher = XChaCha20Poly1305::new((&key.blobs).into());
    let len_bytes = (plain.len() as u64).to_le_bytes();
    let mut aad = role.as_bytes().to_vec();
    aad.extend_from_slice(&len_bytes);
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &packed,
                aad: &aad,
            },
        )
        .expect("sealing a buffer cannot fail");
    let mut out = Vec::with_capacity(BLOB_MAGIC.len() + nonce.len() + sealed.len() + 8);
    out.extend_from_slice(BLOB_MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens an object sealed by `seal_blob` with the same role.
pub fn open_blob(key: &ReplicaKey, role: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    let head = BLOB_MAGIC.len() + 24 + 8;
    if sealed.len() < head || !sealed.starts_with(BLOB_MAGIC) {
        return Err(SealError::NotSealed);
    }
    let nonce = XNonce::from_slice(&sealed[BLOB_MAGIC.len()..BLOB_MAGIC.len() + 24]);
    let len_bytes: [u8; 8] = sealed[head - 8..head].try_into().expect("8 bytes");
    let cipher = XChaCha20Poly1305::new((&key.blobs).into());
    let mut aad = role.as_bytes().to_vec();
    aad.extend_from_slice(&len_bytes);
    let packed = cipher
        .decrypt(
            nonce,
            Payload {
                msg: &sealed[head..],
                aad: &aad,
            },
        )
        .map_err(|_| SealError::Authentication)?;
    let len = u64::from_le_bytes(len_bytes) as usize;
    let plain =
        zstd::bulk::decompress(&packed, len).map_err(|e| SealError::Decompress(e.to_string()))?;
    if plain.len() != len {
        return Err(SealError::Decompress("wrong length".into()));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::store::LocalStore;

    fn key(b: u8) -> ReplicaKey {
        ReplicaKey::from_bytes(&[b; 40]).unwrap()
    }

    fn store(dir: &Path, k: ReplicaKey) -> (Arc<dyn PackStore>, SealedStore) {
        let inner: Arc<dyn PackStore> = Arc::new(LocalStore::new(dir.to_path_buf()));
        (inner.clone(), SealedStore::new(inner, k))
    }

    fn write_pack(s: &SealedStore, name: &str, data: &[u8], step: usize) {
        let mut up = s.create(name).unwrap();
        for part in data.chunks(step.max(1)) {
            up.write_all(part).unwrap();
        }
        up.finish().unwrap();
    }

    #[test]
    fn sizes_map_both_ways_at_every_boundary() {
        for plain in [
            0,
            1,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            3 * SEGMENT,
            3 * SEGMENT + 7,
        ] {
            assert_eq!(plain_size(sealed_size(plain)), Some(plain), "{plain}");
        }
        assert_eq!(plain_size(10), None);
        assert_eq!(plain_size(HEADER + 15), None);
    }

    #[test]
    fn every_range_reads_back_and_nothing_is_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, s) = store(dir.path(), key(7));
        let mut data = Vec::new();
        for i in 0..(2 * SEGMENT + 123) {
            data.extend_from_slice(format!("line {i} of plain text\n").as_bytes());
            if data.len() as u64 >= 2 * SEGMENT + 123 {
                break;
            }
        }
        for (name, len, step) in [
            ("aa", data.len(), 1000),
            ("bb", SEGMENT as usize, 7),
            ("cc", 0, 1),
            ("dd", 2 * SEGMENT as usize, SEGMENT as usize),
        ] {
            write_pack(&s, name, &data[..len], step);
            let info = s.list().unwrap();
            let got = info.iter().find(|p| p.name == name).unwrap();
            assert_eq!(got.size, len as u64, "{name}");
            let mut raw = vec![0u8; sealed_size(len as u64) as usize];
            inner.read_at(name, 0, &mut raw).unwrap();
            assert!(
                !raw.windows(13).any(|w| w == b"of plain text"),
                "{name}: plain text visible"
            );
            for (off, n) in [(0, len), (1, len.saturating_sub(2)), (len / 2, len / 3)] {
                if n == 0 {
                    continue;
                }
                let mut buf = vec![0u8; n];
                s.read_at(name, off as u64, &mut buf).unwrap();
                assert_eq!(buf, data[off..off + n], "{name} {off}+{n}");
            }
            let mut one = [0u8; 1];
            let e = s.read_at(name, len as u64, &mut one).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn a_pack_sealed_whole_reads_as_one_sealed_by_the_store_and_no_two_seals_match() {
        let dir = tempfile::tempdir().unwrap();
        let (_, s) = store(dir.path(), key(5));
        for len in [
            0,
            10,
            SEGMENT as usize,
            SEGMENT as usize + 1,
            3 * SEGMENT as usize,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let name = format!("p{len}");
            write_pack(&s, &name, &data, 333);
            let on_disk = std::fs::read(dir.path().join(format!("{name}.pack"))).unwrap();
            let whole = seal_pack(&key(5), &name, &data).unwrap();
            assert_eq!(whole.len(), on_disk.len(), "{len}");
            assert_ne!(whole, on_disk, "a new salt for every seal");
            assert_eq!(on_disk.len() as u64, sealed_size(len as u64));
            let copy = format!("w{len}");
            std::fs::write(dir.path().join(format!("{copy}.pack")), &whole).unwrap();
            // Sealed under another name: it must not open as `copy`.
            if len > 0 {
                let mut buf = vec![0u8; len];
                assert!(s.read_at(&copy, 0, &mut buf).is_err(), "{len}");
                let again = seal_pack(&key(5), &copy, &data).unwrap();
                std::fs::write(dir.path().join(format!("{copy}.pack")), &again).unwrap();
                let fresh = SealedStore::new(Arc::new(LocalStore::new(dir.path().into())), key(5));
                fresh.read_at(&copy, 0, &mut buf).unwrap();
                assert_eq!(buf, data, "{len}");
            }
        }
    }

    #[test]
    fn a_flipped_byte_a_cut_tail_a_renamed_pack_or_another_key_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, s) = store(dir.path(), key(1));
        let data = vec![42u8; 3 * SEGMENT as usize + 5];
        write_pack(&s, "aa", &data, 4096);
        let path = dir.path().join("aa.pack");
        let clean = std::fs::read(&path).unwrap();
        let read_all = |s: &SealedStore, name: &str| {
            let mut b = vec![0u8; data.len()];
            s.read_at(name, 0, &mut b)
        };
        // Another key.
        let (_, other) = store(dir.path(), key(2));
        assert_eq!(
            read_all(&other, "aa").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // One flipped byte in the second segment: that segment fails, the first still reads.
        let mut bad = clean.clone();
        bad[HEADER as usize + SEGMENT as usize + 100] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let fresh = SealedStore::new(inner.clone(), key(1));
        assert!(read_all(&fresh, "aa").is_err());
        let mut first = vec![0u8; 1000];
        fresh.read_at("aa", 10, &mut first).unwrap();
        // The tail cut at a segment boundary: the new last segment was not sealed as last.
        let cut = HEADER as usize + 2 * (SEGMENT + TAG) as usize;
        std::fs::write(&path, &clean[..cut]).unwrap();
        let fresh = SealedStore::new(inner.clone(), key(1));
        let mut tail = vec![0u8; 10];
        assert!(fresh.read_at("aa", SEGMENT + 5, &mut tail).is_err());
        // The same bytes under another name.
        std::fs::write(dir.path().join("bb.pack"), &clean).unwrap();
        let fresh = SealedStore::new(inner, key(1));
        assert!(read_all(&fresh, "bb").is_err());
    }

    #[test]
    fn blobs_round_trip_and_refuse_another_key_role_or_damage() {
        let plain = b"SQLite format 3\0 and a catalog".repeat(100);
        let sealed = seal_blob(&key(3), "catalog", &plain).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"SQLite"));
        assert_eq!(open_blob(&key(3), "catalog", &sealed).unwrap(), plain);
        assert!(matches!(
            open_blob(&key(4), "catalog", &sealed),
            Err(SealError::Authentication)
        ));
        assert!(matches!(
            open_blob(&key(3), "other", &sealed),
            Err(SealError::Authentication)
        ));
        let mut bad = sealed.clone();
        let n = bad.len();
        bad[n - 20] ^= 1;
        assert!(matches!(
            open_blob(&key(3), "catalog", &bad),
            Err(SealError::Authentication)
        ));
        assert!(matches!(
            open_blob(&key(3), "catalog", b"plain"),
            Err(SealError::NotSealed)
        ));
    }

    #[test]
    fn a_vault_remembers_and_forgets_its_replica_key() {
        let dir = tempfile::tempdir().unwrap();
        let v = crate::vault::Vault::init(&dir.path().join("v"), &Default::default()).unwrap();
        assert!(v.replica_key().unwrap().is_none());
        let lock = v.lock(false).unwrap();
        v.set_replica_key(&lock, Some(&key(9))).unwrap();
        let back = v.replica_key().unwrap().unwrap();
        assert_eq!(back.check_value(), key(9).check_value());
        assert_eq!(back.packs, key(9).packs);
        v.set_replica_key(&lock, None).unwrap();
        assert!(v.replica_key().unwrap().is_none());
    }

    #[test]
    fn keys_need_enough_material_and_check_values_differ() {
        assert!(ReplicaKey::from_bytes(&[1; 31]).is_err());
        assert_ne!(key(1).check_value(), key(2).check_value());
        assert_eq!(key(1).check_value(), key(1).check_value());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        ReplicaKey::create_file(&p).unwrap();
        assert!(
            ReplicaKey::create_file(&p).is_err(),
            "never overwrites a key"
        );
        let a = ReplicaKey::from_file(&p).unwrap();
        // The hex copied by hand without its newline (or with spaces around) is the same key.
        let hex = std::fs::read_to_string(&p).unwrap();
        let bare = ReplicaKey::from_bytes(hex.trim().as_bytes()).unwrap();
        assert_eq!(bare.check_value(), a.check_value());
        let padded = ReplicaKey::from_bytes(format!("  {}\n\n", hex.trim()).as_bytes()).unwrap();
        assert_eq!(padded.check_value(), a.check_value());
        assert_eq!(
            a.check_value(),
            ReplicaKey::from_file(&p).unwrap().check_value()
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

/// A hostile reviewer's tests: segments moved, spliced, cut and extended at every boundary,
/// impossible sizes, offsets near the end of u64, every read across a segment boundary.
#[cfg(test)]
mod attack_tests {
    use super::*;
    use crate::vault::store::LocalStore;

    const S: usize = SEGMENT as usize;
    const T: usize = TAG as usize;
    const M: usize = HEADER as usize;

    fn key(b: u8) -> ReplicaKey {
        ReplicaKey::from_bytes(&[b; 40]).unwrap()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    /// A sealed store in a fresh directory holding pack `name` with `plain` written through it.
    fn sealed(name: &str, plain: &[u8]) -> (tempfile::TempDir, SealedStore) {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn PackStore> = Arc::new(LocalStore::new(dir.path().to_path_buf()));
        let s = SealedStore::new(inner, key(9));
        let mut up = s.create(name).unwrap();
        up.write_all(plain).unwrap();
        up.finish().unwrap();
        (dir, s)
    }

    /// A fresh store (no cached sizes) over the same directory.
    fn reopen(dir: &Path) -> SealedStore {
        SealedStore::new(Arc::new(LocalStore::new(dir.to_path_buf())), key(9))
    }

    fn read(s: &SealedStore, name: &str, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        s.read_at(name, off, &mut b).map(|_| b)
    }

    #[test]
    fn every_sealed_size_maps_without_panic_and_exactly_for_the_writers_sizes() {
        for k in 0..4u64 {
            for r in 0..=(2 * TAG + 2) {
                let sealed = M as u64 + k * (SEGMENT + TAG) + r;
                match plain_size(sealed) {
                    None => assert!(k == 0 && r < TAG, "{sealed}"),
                    // Never more plain bytes than the sealed bytes could hold.
                    Some(p) => assert!(sealed_size(p) <= sealed + TAG, "{sealed} -> {p}"),
                }
            }
        }
        for p in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 5 * SEGMENT] {
            assert_eq!(plain_size(sealed_size(p)), Some(p));
        }
        assert_eq!(plain_size(0), None);
        assert_eq!(plain_size(u64::MAX).map(|p| p < u64::MAX), Some(true));
    }

    #[test]
    fn every_read_across_a_segment_boundary_is_exact() {
        let plain = data(3 * S + 100);
        let (_dir, s) = sealed("p", &plain);
        for b in [S, 2 * S, 3 * S] {
            for off in [b - 17, b - 1, b, b + 1] {
                for len in [1, 2, 16, 17, S - 1, S, S + 1, 2 * S + 3] {
                    if off + len > plain.len() {
                        continue;
                    }
                    let got = read(&s, "p", off as u64, len).unwrap();
                    assert!(got == plain[off..off + len], "{off}+{len}");
                }
            }
        }
        assert_eq!(read(&s, "p", 0, plain.len()).unwrap(), plain);
    }

    #[test]
    fn swapped_or_spliced_segments_fail() {
        let plain = data(3 * S + 5);
        let (dir, _s) = sealed("p", &plain);
        let path = dir.path().join("p.pack");
        let clean = std::fs::read(&path).unwrap();
        let seg = |i: usize| M + i * (S + T)..M + (i + 1) * (S + T);
        // Segments 0 and 1 swapped.
        let mut bad = clean.clone();
        bad[seg(0)].copy_from_slice(&clean[seg(1)]);
        bad[seg(1)].copy_from_slice(&clean[seg(0)]);
        std::fs::write(&path, &bad).unwrap();
        let s = reopen(dir.path());
        assert!(read(&s, "p", 0, 10).is_err());
        assert!(read(&s, "p", SEGMENT, 10).is_err());
        assert_eq!(
            read(&s, "p", 2 * SEGMENT, 10).unwrap(),
            plain[2 * S..2 * S + 10]
        );
        // Segment 1 of another pack (same key, same plain bytes) spliced in at the same place.
        let other = seal_pack(&key(9), "q", &plain).unwrap();
        let mut bad = clean.clone();
        bad[seg(1)].copy_from_slice(&other[seg(1)]);
        std::fs::write(&path, &bad).unwrap();
        let s = reopen(dir.path());
        let e = read(&s, "p", SEGMENT + 3, 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(read(&s, "p", 0, 10).is_ok());
        // Same plain bytes under two names share no ciphertext.
        assert_ne!(clean[seg(0)], other[seg(0)]);
    }

    #[test]
    fn a_pack_cut_or_extended_anywhere_never_reads_wrong_bytes() {
        let plain = data(2 * S + 40);
        let (dir, _s) = sealed("p", &plain);
        let path = dir.path().join("p.pack");
        let clean = std::fs::read(&path).unwrap();
        let mut cuts: Vec<usize> = Vec::new();
        for b in [M, M + (S + T), M + 2 * (S + T)] {
            for d in [0, 1, T - 1, T, T + 1, 40, 40 + T - 1] {
                cuts.push(b + d);
            }
        }
        cuts.extend([0, 5, M - 1, clean.len() - 1]);
        for cut in cuts.into_iter().filter(|c| *c < clean.len()) {
            std::fs::write(&path, &clean[..cut]).unwrap();
            let s = reopen(dir.path());
            let listed = s.list().unwrap()[0].size as usize;
            assert!(listed < plain.len(), "cut {cut}: lists {listed}");
            // Whatever the listing says, every read either fails or gives the true bytes.
            for (off, len) in [
                (0, 10),
                (S - 5, 10),
                (S + 7, 10),
                (2 * S, 40),
                (0, plain.len()),
            ] {
                if let Ok(got) = read(&s, "p", off as u64, len) {
                    assert!(got == plain[off..off + len], "cut {cut}: {off}+{len} wrong");
                }
            }
            // The tail is always gone; the head survives a cut after the second segment.
            assert!(read(&s, "p", 2 * SEGMENT, 40).is_err(), "cut {cut}");
            if cut > M + 2 * (S + T) {
                assert_eq!(read(&s, "p", 0, S).unwrap(), plain[..S], "cut {cut}");
            }
        }
        // Bytes appended after the last segment: the last segment no longer authenticates.
        for extra in [1, T, S + T] {
            let mut long = clean.clone();
            long.extend(std::iter::repeat_n(7u8, extra));
            std::fs::write(&path, &long).unwrap();
            let s = reopen(dir.path());
            assert!(read(&s, "p", 2 * SEGMENT, 40).is_err(), "+{extra}");
            assert!(
                read(&s, "p", 0, 10).is_ok(),
                "+{extra}: the head still reads"
            );
        }
    }

    #[test]
    fn hostile_offsets_and_missing_packs_are_errors_of_the_right_kind() {
        let plain = data(S + 9);
        let (_dir, s) = sealed("p", &plain);
        for off in [u64::MAX, u64::MAX - 3, u64::MAX - SEGMENT, 1 << 63] {
            let e = read(&s, "p", off, 4).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{off}: {e}");
        }
        let e = read(&s, "gone", 0, 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let e = read(&s, "p", plain.len() as u64 - 2, 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn segment_nonces_never_repeat_across_names_and_indices() {
        let k = key(1);
        let mut seen = std::collections::HashSet::new();
        for name in ["a", "aa", "ab", "a\u{1}", "000000000000000000000000"] {
            for salt in [[0u8; 16], [1u8; 16]] {
                for i in 0..300u64 {
                    assert!(seen.insert(k.segment_nonce(&salt, name, i)), "{name} {i}");
                }
            }
        }
        // Another key, another nonce for the same place.
        let z = [0u8; 16];
        assert_ne!(
            key(2).segment_nonce(&z, "a", 0),
            k.segment_nonce(&z, "a", 0)
        );
    }

    #[test]
    fn a_blob_with_its_length_nonce_or_tail_changed_fails() {
        let plain = data(100_000);
        let sealed = seal_blob(&key(3), "catalog", &plain).unwrap();
        let head = BLOB_MAGIC.len();
        // The length is bound: a bigger one cannot make the decompressor allocate or read more.
        let mut bad = sealed.clone();
        bad[head + 24..head + 32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            open_blob(&key(3), "catalog", &bad),
            Err(SealError::Authentication)
        ));
        let mut bad = sealed.clone();
        bad[head] ^= 1;
        assert!(open_blob(&key(3), "catalog", &bad).is_err(), "nonce");
        for cut in [sealed.len() - 1, sealed.len() - 16, head + 32, head + 31] {
            assert!(
                open_blob(&key(3), "catalog", &sealed[..cut]).is_err(),
                "{cut}"
            );
        }
        // Two seals of the same object differ (random nonces) and both open.
        let again = seal_blob(&key(3), "catalog", &plain).unwrap();
        assert_ne!(again, sealed);
        assert_eq!(open_blob(&key(3), "catalog", &again).unwrap(), plain);
    }

    #[test]
    fn a_size_listed_while_the_pack_was_being_written_is_not_kept() {
        let plain = data(2 * S + 10);
        let (dir, _s) = sealed("p", &plain);
        let path = dir.path().join("p.pack");
        let whole = std::fs::read(&path).unwrap();
        // A reader lists while the pack holds only its first segment (a writer beside it).
        std::fs::write(&path, &whole[..M + S + T]).unwrap();
        let s = reopen(dir.path());
        assert_eq!(s.list().unwrap()[0].size, SEGMENT);
        std::fs::write(&path, &whole).unwrap();
        assert_eq!(read(&s, "p", 2 * SEGMENT, 10).unwrap(), plain[2 * S..]);
        assert_eq!(read(&s, "p", 0, plain.len()).unwrap(), plain);
    }
}
