//! Cutting data into chunks: content-defined for files, fixed-size for disks.
//!
//! Owns the chunk size parameters and the streaming cutter. It does no I/O of its own beyond the
//! `Read` it is handed and keeps at most `2 × MAX` bytes buffered, so memory stays bounded
//! whatever the file size. Boundaries depend only on content (FastCDC 2020, normalisation level
//! 1, the crate's fixed gear table), so an insert moves only nearby boundaries and the same bytes
//! always cut the same way in every vault.
//!
//! Sizes (64 KiB / 256 KiB / 1 MiB) were chosen by measurement on the Linux tree (BENCHMARKS.md):
//! smaller chunks gave no better dedup on real edits, larger ones cost random-read latency
//! through the mount, where a read of one byte decompresses the chunk's whole record.

use std::io::{self, Read};

/// Smallest content-defined chunk; a file smaller than this is a single chunk.
pub const MIN: usize = 64 * 1024;
/// Target average content-defined chunk.
pub const AVG: usize = 256 * 1024;
/// Largest content-defined chunk.
pub const MAX: usize = 1024 * 1024;

/// A reusable content-defined chunker: owns its read buffer, so a worker that chunks many files
/// allocates (and zeroes) it once rather than once per file.
pub struct Chunker {
    buf: Vec<u8>,
}

impl Default for Chunker {
    fn default() -> Self {
        Chunker {
            buf: vec![0u8; 2 * MAX],
        }
    }
}

impl Chunker {
    /// Streams `source` as content-defined chunks, calling `sink` with each one in order.
    /// Returns the total number of bytes read. `sink` gets slices of the internal buffer.
    pub fn cut_stream<R: Read>(
        &mut self,
        source: R,
        sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<u64> {
        cut_with(&mut self.buf, source, sink)
    }
}

/// Streams `source` as content-defined chunks with a one-off buffer (see `Chunker`).
pub fn cut_stream<R: Read>(
    source: R,
    sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    Chunker::default().cut_stream(source, sink)
}

fn cut_with<R: Read>(
    buf: &mut [u8],
    mut source: R,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let (mask_s, mask_l) = fastcdc::v2020::select_masks(AVG, fastcdc::v2020::Normalization::Level1);
    let mut start = 0; // first byte not yet emitted
    let mut end = 0; // end of valid data
    let mut eof = false;
    let mut total = 0u64;
    loop {
        // Refill so at least MAX bytes are available (or EOF).
        if !eof && end - start < MAX {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            while end < buf.len() {
                let n = match source.read(&mut buf[end..]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    eof = true;
                    break;
                }
                end += n;
                total += n as u64;
            }
        }
        if start == end {
            return Ok(total);
        }
        let avail = &buf[start..end];
        let (_, len) = fastcdc::v2020::cut(
            avail,
            MIN,
            AVG,
            MAX,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        // With fewer than MAX bytes left the cutter may stop at the end of what it was given;
        // that is a real boundary only at EOF (refill above guarantees MAX bytes otherwise).
        let len = if len == 0 { avail.len() } else { len };
        sink(&avail[..len])?;
        start += len;
    }
}

/// Cuts an in-memory buffer into content-defined chunks (same boundaries as `cut_stream`).
pub fn cut_slice(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let (mask_s, mask_l) = fastcdc::v2020::select_masks(AVG, fastcdc::v2020::Normalization::Level1);
    while !rest.is_empty() {
        let (_, len) = fastcdc::v2020::cut(
            rest,
            MIN,
            AVG,
            MAX,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        let len = if len == 0 { rest.len() } else { len };
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn stream_chunks(data: &[u8], read_size: usize) -> Vec<Vec<u8>> {
        // A reader that returns short reads, to exercise refill.
        struct Short<'a>(&'a [u8], usize);
        impl Read for Short<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(b.len()).min(self.1);
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        cut_stream(Short(data, read_size), |c| {
            out.push(c.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn chunks_concatenate_back_to_input_and_respect_bounds() {
        for (n, seed) in [
            (0, 1),
            (10, 2),
            (MIN - 1, 3),
            (5 * MAX + 123, 4),
            (3 * MAX, 5),
        ] {
            let data = pseudo_random(n, seed);
            for rs in [4096, 1 << 20, usize::MAX] {
                let chunks = stream_chunks(&data, rs);
                assert_eq!(chunks.concat(), data);
                for (i, c) in chunks.iter().enumerate() {
                    assert!(c.len() <= MAX);
                    if i + 1 < chunks.len() {
                        assert!(c.len() >= MIN);
                    }
                }
                let slice: Vec<Vec<u8>> = cut_slice(&data).iter().map(|c| c.to_vec()).collect();
                assert_eq!(slice, chunks, "stream and slice cut alike");
            }
        }
    }

    #[test]
    fn small_file_is_one_chunk() {
        let data = pseudo_random(MIN - 1, 9);
        assert_eq!(stream_chunks(&data, usize::MAX).len(), 1);
    }

    #[test]
    fn an_insert_moves_only_nearby_boundaries() {
        let data = pseudo_random(8 * MAX, 11);
        let mut edited = data.clone();
        edited.splice(3 * MAX..3 * MAX, b"inserted bytes".iter().copied());
        let a: std::collections::HashSet<Vec<u8>> =
            cut_slice(&data).iter().map(|c| c.to_vec()).collect();
        let b = cut_slice(&edited);
        let fresh = b.iter().filter(|c| !a.contains(**c)).count();
        assert!(fresh <= 2, "{fresh} chunks changed for one insert");
    }
}
