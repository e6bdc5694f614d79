//! The floor for `coffre verify`: read every pack of a vault and decompress every record, on
//! all cores, checking nothing. `verify` does this plus a BLAKE3 check of every chunk and the
//! catalog's bookkeeping; BENCHMARKS.md compares the two.
//!
//! usage: cargo run --release --example verify_floor -- VAULT/packs [THREADS]

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use coffre::vault::packs::{self, Codec};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: verify_floor PACKS_DIR [THREADS]");
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("packs directory")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    let queue = Mutex::new(files.into_iter());
    let (read, plain) = (AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut z = zstd::bulk::Decompressor::new().expect("zstd");
                loop {
                    let Some(path) = queue.lock().unwrap().next() else {
                        return;
                    };
                    let data = std::fs::read(&path).expect("read pack");
                    read.fetch_add(data.len() as u64, Ordering::Relaxed);
                    let (chunks, _) = packs::scan(&data);
                    let mut last = None;
                    for c in chunks {
                        if last == Some(c.record.offset) {
                            continue; // one decompression per record
                        }
                        last = Some(c.record.offset);
                        let start = c.record.offset as usize;
                        let stored = &data[start..start + c.record.stored_len as usize];
                        let n = match c.record.codec {
                            Codec::Raw => stored.len(),
                            Codec::Zstd => z
                                .decompress(stored, c.record.plain_len as usize)
                                .expect("decompress")
                                .len(),
                        };
                        plain.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "read {} MB, decompressed {} MB in {secs:.2} s ({threads} threads)",
        read.load(Ordering::Relaxed) / 1_000_000,
        plain.load(Ordering::Relaxed) / 1_000_000
    );
}
