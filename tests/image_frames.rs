//! End-to-end: disk images stored with large image frames (`init --image-frame`, `vault set
//! image-frame`), through the real binaries: neighbouring blocks compressed together store
//! smaller, and read back exactly through the mount, `coffre restore` and `coffre-restore`
//! (sparse); points written with another frame size read alike; gc keeps them readable; a
//! damaged frame fails the reads of its own blocks with EIO and never returns wrong bytes.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::*;

const BLOCK: usize = 32 * 1024;

/// One 32 KiB block that does not compress on its own: noise, with the block number written
/// into it so every block is a distinct chunk. Neighbouring blocks share everything else, so
/// only a frame holding several of them shrinks.
fn block(n: u64) -> Vec<u8> {
    let mut b = noise(BLOCK, 7);
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[BLOCK / 2..BLOCK / 2 + 8].copy_from_slice(&(n * 31).to_le_bytes());
    b
}

/// A 64 MiB sparse image: 4 MiB of near-identical blocks at 0, a hole, 1 MiB more at 32 MiB,
/// and an unaligned tail of text. Returns its bytes.
fn make_image(p: &Path) -> Vec<u8> {
    let f = std::fs::File::create(p).unwrap();
    f.set_len(64 << 20).unwrap();
    for i in 0..128u64 {
        f.write_all_at(&block(i), i * BLOCK as u64).unwrap();
    }
    for i in 0..32u64 {
        f.write_all_at(&block(1000 + i), (32 << 20) + i * BLOCK as u64)
            .unwrap();
    }
    f.write_all_at(&text(5000, 3), (64 << 20) - 5000).unwrap();
    std::fs::read(p).unwrap()
}

fn backup_disk(t: &TestVault, item: &str, img: &Path) -> serde_json::Value {
    let out = t.ok(&[
        "backup-disk",
        "--json",
        "--item",
        item,
        img.to_str().unwrap(),
    ]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

/// A vault made with `init ARGS` holding item `d`: one backup of `make_image`. Returns the vault,
/// the image's path and its bytes.
fn backed_up(init: &[&str]) -> (TestVault, std::path::PathBuf, Vec<u8>) {
    let t = TestVault::new();
    t.ok(&[&["init"], init].concat());
    let img = t.path("disk.img");
    let want = make_image(&img);
    backup_disk(&t, "d", &img);
    (t, img, want)
}

/// The `disk.img` of every point of `item` in mount `m` (`latest` left out).
fn points_in_mount(m: &MountGuard, item: &str) -> Vec<std::path::PathBuf> {
    let points = m.latest(item).parent().unwrap().to_path_buf();
    std::fs::read_dir(&points)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "latest")
        .map(|p| p.join("disk.img"))
        .collect()
}

fn pack_bytes(t: &TestVault) -> u64 {
    pack_files(t)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Reads the whole image through the mount in 32 KiB pieces: each piece is either exactly the
/// reference's bytes or fails with EIO (never wrong bytes). Returns the block numbers that
/// failed.
fn blocks_failing_with_eio(image: &Path, want: &[u8]) -> Vec<usize> {
    let f = std::fs::File::open(image).unwrap();
    let mut failed = Vec::new();
    for (i, expect) in want.chunks(BLOCK).enumerate() {
        let mut buf = vec![0u8; expect.len()];
        match f.read_exact_at(&mut buf, (i * BLOCK) as u64) {
            Ok(()) => assert!(buf == expect, "block {i} read back wrong bytes"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "block {i}: {e}");
                failed.push(i);
            }
        }
    }
    failed
}

#[test]
fn large_frames_store_an_image_smaller_and_every_reader_gets_it_back_exactly() {
    let small = TestVault::new();
    small.ok(&["init"]);
    let t = TestVault::new();
    t.ok(&["init", "--image-frame", "1M"]);
    let shown = json(&t.ok(&["vault", "show", "--json"]));
    assert_eq!(shown["image_frame"], 1 << 20, "{shown}");
    let img = t.path("disk.img");
    let want = make_image(&img);
    backup_disk(&small, "d", &img);
    let b = backup_disk(&t, "d", &img);
    assert_eq!(
        b["point"]["new_chunks"], 161,
        "one chunk per distinct block: {b}"
    );
    // Alone, each block costs its 32 KiB; in 1 MiB frames the neighbours compress away.
    let (alone, framed) = (pack_bytes(&small), pack_bytes(&t));
    assert!(
        alone > 160 * BLOCK as u64,
        "32 KiB frames stored {alone} bytes"
    );
    assert!(
        framed * 8 < alone,
        "1 MiB frames stored {framed} bytes against {alone} for 32 KiB frames"
    );
    {
        let m = MountGuard::start(&t, &[]);
        let in_mount = m.latest("d").join("disk.img");
        assert!(std::fs::read(&in_mount).unwrap() == want, "mount differs");
        let data: u64 = data_map(&in_mount).iter().map(|x| x.1).sum();
        assert!(data < 6 << 20, "the mount reports {data} bytes of data");
        // Random reads, across frame and block boundaries, in no order.
        let f = std::fs::File::open(&in_mount).unwrap();
        for off in [
            (3 << 20) + 7,
            5,
            (1 << 20) - 100,
            (32 << 20) + 4096,
            (64 << 20) - 4096,
            (2 << 20) - 1,
        ] {
            let mut buf = vec![0u8; 4096];
            let n = f.read_at(&mut buf, off).unwrap();
            assert_eq!(&buf[..n], &want[off as usize..off as usize + n], "at {off}");
        }
    }
    for (how, out) in [("restore", t.path("r1")), ("sidecar", t.path("r2.img"))] {
        let file = if how == "restore" {
            t.restore("d", &out);
            out.join("disk.img")
        } else {
            let r = sidecar(&t, &["disk", "d", "--to", out.to_str().unwrap()]);
            assert!(r.status.success(), "coffre-restore: {}", stderr(&r));
            out
        };
        assert!(std::fs::read(&file).unwrap() == want, "{how} differs");
        let blocks = std::fs::metadata(&file).unwrap().blocks();
        let orig = std::fs::metadata(&img).unwrap().blocks();
        // Holes stay holes; a stored block is written whole (the tail's 32 KiB block too).
        assert!(
            blocks <= orig + 64,
            "{how}: not sparse ({blocks} vs {orig})"
        );
    }
    t.ok(&["verify"]);
}

/// Writes `block(seed + i)` over block `i` of `img` for each `i` in `blocks`; returns the image.
fn change(img: &Path, blocks: impl Iterator<Item = u64>, seed: u64) -> Vec<u8> {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    for i in blocks {
        f.write_all_at(&block(seed + i), i * BLOCK as u64).unwrap();
    }
    std::fs::read(img).unwrap()
}

/// Every point of `item` read through a fresh mount, sorted.
fn images_in_mount(t: &TestVault, item: &str) -> Vec<Vec<u8>> {
    let m = MountGuard::start(t, &[]);
    let mut seen: Vec<Vec<u8>> = points_in_mount(&m, item)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    seen.sort();
    seen
}

/// Chunks of the catalog that share their record with others, in records of more than
/// `plain` bytes.
fn chunks_in_frames(t: &TestVault, plain: u64) -> u64 {
    let db = rusqlite::Connection::open(t.vault().join("vault.db")).unwrap();
    db.query_row(
        "SELECT COALESCE(SUM(n), 0) FROM
           (SELECT COUNT(*) AS n FROM chunks WHERE rec_plain > ?1
            GROUP BY pack, rec_offset HAVING n > 1)",
        [plain],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn points_of_every_frame_size_read_alike_and_gc_keeps_frames_whole() {
    let (t, img, a) = backed_up(&[]);
    assert_eq!(
        chunks_in_frames(&t, 0),
        0,
        "32 KiB frames hold one block each"
    );
    let set = t.ok(&["vault", "set", "image-frame", "1M"]);
    assert!(set.contains("image-frame 1M (was 32K)"), "{set}");
    // Every other block of the first 4 MiB changes: 64 new blocks, in frames of the 1 MiB
    // regions they lie in (16 blocks each).
    let b = change(&img, (0..128).step_by(2), 5000);
    let p = backup_disk(&t, "d", &img);
    assert_eq!(p["point"]["new_chunks"], 64, "{p}");
    assert_eq!(chunks_in_frames(&t, 0), 64);
    // Two of those change again.
    let c = change(&img, [0, 2].into_iter(), 7000);
    backup_disk(&t, "d", &img);
    let mut all = vec![a, b, c.clone()];
    all.sort();
    assert!(
        images_in_mount(&t, "d") == all,
        "the points read back differ"
    );
    // Forget the first two points and collect every pack with anything dead in it: the 62
    // blocks still live in the second point's frames move into 1 MiB frames again (bigger
    // than any record of grouped files: 384 KiB), and the newest point reads exactly.
    for p in &t.points("d")[..2] {
        let spec = format!("d@{}", p["id"].as_str().unwrap());
        t.ok(&["forget", &spec]);
        t.ok(&["purge", &spec]);
    }
    let gc = json(&t.ok(&["gc", "--repack-below", "100", "--json"]));
    assert!(gc["packs_repacked"].as_u64().unwrap() >= 1, "{gc}");
    assert_eq!(chunks_in_frames(&t, 384 << 10), 62, "{gc}");
    assert!(
        images_in_mount(&t, "d") == vec![c],
        "the newest point differs after gc"
    );
    t.ok(&["verify"]);
}

/// Flips a byte in the middle of the record (frame) that holds block `n` of `make_image`.
fn damage_frame_of(t: &TestVault, n: u64) {
    let db = rusqlite::Connection::open(t.vault().join("vault.db")).unwrap();
    let (pack, at, len): (String, u64, u64) = db
        .query_row(
            "SELECT p.name, c.rec_offset, c.rec_stored FROM chunks c JOIN packs p ON p.id = c.pack
             WHERE c.id = ?1",
            [blake3::hash(&block(n)).as_bytes().to_vec()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let file = t.vault().join("packs").join(format!("{pack}.pack"));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[(at + len / 2) as usize] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
}

#[test]
fn a_damaged_frame_fails_the_reads_of_its_own_blocks_only_and_heals_whole() {
    let (t, img, want) = backed_up(&["--image-frame", "256K"]);
    // Every 256 KiB frame holds 8 neighbouring blocks: 40..48 here.
    damage_frame_of(&t, 40);
    {
        let m = MountGuard::start(&t, &[]);
        let failed = blocks_failing_with_eio(&m.latest("d").join("disk.img"), &want);
        assert_eq!(failed, (40..48).collect::<Vec<_>>(), "blocks failing");
    }
    let out = t.run(&["verify"]);
    assert!(!out.status.success(), "verify passed a damaged frame");
    let healed = backup_disk(&t, "d", &img);
    assert_eq!(healed["point"]["new_chunks"], 8, "{healed}");
    // A second damaged frame, met only by a restore that stops at its first bad block: the
    // failure covers the whole frame, so the next backup stores all its 8 blocks again.
    damage_frame_of(&t, 80);
    let r = t.run(&["restore", "d", "--to", t.path("r").to_str().unwrap()]);
    assert!(
        !r.status.success(),
        "a restore of a damaged frame succeeded"
    );
    let b = backup_disk(&t, "d", &img);
    assert_eq!(b["point"]["new_chunks"], 8, "{b}");
    let m = MountGuard::start(&t, &[]);
    for p in points_in_mount(&m, "d") {
        assert_eq!(
            blocks_failing_with_eio(&p, &want),
            Vec::<usize>::new(),
            "{p:?}"
        );
    }
}

#[test]
fn frames_never_cross_a_multiple_of_their_size_in_the_image() {
    let t = TestVault::new();
    t.ok(&["init", "--image-frame", "1M"]);
    // 1 MiB regions: 20 blocks then zeros; a zero block at 1 MiB, then 10 blocks; 3 blocks
    // after a hole at 3 MiB. Frames are one per region, whatever the zeros between them.
    let img = t.path("disk.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(8 << 20).unwrap();
    let blocks = (0..20u64).chain(33..43).chain(96..99);
    for i in blocks {
        f.write_all_at(&block(i), i * BLOCK as u64).unwrap();
    }
    f.write_all_at(&[0u8; BLOCK], 32 * BLOCK as u64).unwrap();
    drop(f);
    backup_disk(&t, "d", &img);
    assert_eq!(records_and_chunks(&t), (3, 33), "records, chunks");
}

#[test]
fn a_bad_image_frame_is_one_line_and_changes_nothing() {
    let t = TestVault::new();
    t.ok(&["init"]);
    for bad in ["3K", "0", "48K", "2M", "lots"] {
        let out = t.run(&["vault", "set", "image-frame", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("image frame must be a multiple of 32K")
                || stderr(&out).contains("is not a size"),
            "{bad}: {}",
            stderr(&out)
        );
    }
    let shown = json(&t.ok(&["vault", "show", "--json"]));
    assert_eq!(shown["image_frame"], 32 * 1024, "{shown}");
    let u = TestVault::new();
    let out = u.run(&["init", "--image-frame", "1056K"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!u.vault().exists(), "a refused init made a vault");
}

/// (records, chunks) in the vault's catalog.
fn records_and_chunks(t: &TestVault) -> (u64, u64) {
    let db = rusqlite::Connection::open(t.vault().join("vault.db")).unwrap();
    db.query_row(
        "SELECT COUNT(DISTINCT pack || ':' || rec_offset), COUNT(*) FROM chunks",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

#[test]
fn the_default_frame_is_the_layout_vaults_had_before_and_a_catalog_without_the_setting_opens() {
    let (t, img, want) = backed_up(&[]);
    // One record (one zstd frame) per block, as every coffre before image frames wrote.
    let (records, chunks) = records_and_chunks(&t);
    assert_eq!((records, chunks), (161, 161), "records, chunks");
    // A catalog made before the setting existed has no image_frame key.
    let db = rusqlite::Connection::open(t.vault().join("vault.db")).unwrap();
    assert_eq!(
        db.execute("DELETE FROM meta WHERE key = 'image_frame'", [])
            .unwrap(),
        1
    );
    drop(db);
    let shown = json(&t.ok(&["vault", "show", "--json"]));
    assert_eq!(shown["image_frame"], 32 * 1024, "{shown}");
    {
        let m = MountGuard::start(&t, &[]);
        assert!(std::fs::read(m.latest("d").join("disk.img")).unwrap() == want);
    }
    t.restore("d", &t.path("r"));
    assert!(std::fs::read(t.path("r").join("disk.img")).unwrap() == want);
    // The same image in 256 KiB frames: 8 blocks per record.
    let u = TestVault::new();
    u.ok(&["init", "--image-frame", "256K"]);
    backup_disk(&u, "d", &img);
    assert_eq!(records_and_chunks(&u), (21, 161), "records, chunks");
}

/// SHA-256 of the two images in tests/fixtures/vault-before-image-frames.tar.gz.
const FIXTURE_FIRST: &str = "318dd119671d0672f7544a34c0c10ce0c232e2811537b9cc5c1bbcb4edcc30ad";
const FIXTURE_SECOND: &str = "a0df98b70ddba5b8d60afa2b40af32c598a1b0d8ae04852080b5fceb765c36d4";

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_vault_written_before_image_frames_mounts_restores_verifies_and_takes_new_points() {
    let t = TestVault::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vault-before-image-frames.tar.gz");
    let out = std::process::Command::new("tar")
        .args(["-xzf", fixture.to_str().unwrap(), "-C"])
        .arg(t.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {}", stderr(&out));
    let shown = json(&t.ok(&["vault", "show", "--json"]));
    assert_eq!(shown["image_frame"], 32 * 1024, "{shown}");
    let mut read: Vec<String> = images_in_mount(&t, "disk")
        .iter()
        .map(|b| sha256(b))
        .collect();
    read.sort();
    let mut want = vec![FIXTURE_FIRST.to_string(), FIXTURE_SECOND.to_string()];
    want.sort();
    assert_eq!(read, want, "the old points read through the mount");
    t.restore("disk", &t.path("r"));
    let restored = t.path("r").join("disk.img");
    let second = std::fs::read(&restored).unwrap();
    assert_eq!(sha256(&second), FIXTURE_SECOND, "restored");
    assert!(
        std::fs::metadata(&restored).unwrap().blocks() < 2048,
        "the restored 16 MiB image is not sparse"
    );
    t.ok(&["verify"]);
    // This coffre writes into it, with 1 MiB frames from now on: a new item whose image shares
    // all but two blocks with the old points.
    t.ok(&["vault", "set", "image-frame", "1M"]);
    let third = change(&restored, [100, 101].into_iter(), 9000);
    let b = backup_disk(&t, "d", &restored);
    assert_eq!(b["point"]["new_chunks"], 2, "{b}");
    assert!(images_in_mount(&t, "d") == vec![third], "the new point");
    let mut read: Vec<String> = images_in_mount(&t, "disk")
        .iter()
        .map(|b| sha256(b))
        .collect();
    read.sort();
    assert_eq!(read, want, "the old points, after a new one");
    t.ok(&["verify"]);
}

/// How many chunks share the record that holds block `n` of `make_image` (itself included).
fn chunks_in_record_of(t: &TestVault, n: u64) -> u64 {
    let db = rusqlite::Connection::open(t.vault().join("vault.db")).unwrap();
    db.query_row(
        "SELECT COUNT(*) FROM chunks c JOIN chunks b ON b.pack = c.pack
           AND b.rec_offset = c.rec_offset WHERE c.id = ?1",
        [blake3::hash(&block(n)).as_bytes().to_vec()],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn repair_from_a_replica_stores_a_damaged_frame_as_a_frame_again() {
    let (t, _, want) = backed_up(&["--image-frame", "1M"]);
    let replica = t.path("replica");
    t.ok(&["replicate", "--to", replica.to_str().unwrap()]);
    damage_frame_of(&t, 40);
    assert!(!t.run(&["verify"]).status.success(), "verify passed");
    let r = json(&t.ok(&["repair", "--from", replica.to_str().unwrap(), "--json"]));
    // Blocks 32..64 share the 1 MiB frame; repaired, they share one again (grouped like files,
    // they would be records of 8).
    assert_eq!(r["chunks_repaired"], 32, "{r}");
    assert_eq!(
        chunks_in_record_of(&t, 40),
        32,
        "the repaired blocks share one frame"
    );
    {
        let m = MountGuard::start(&t, &[]);
        let failed = blocks_failing_with_eio(&m.latest("d").join("disk.img"), &want);
        assert_eq!(failed, Vec::<usize>::new());
    }
    t.ok(&["verify"]);
}
