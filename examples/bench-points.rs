//! Builds a vault of many small back-dated points for `scripts/bench-prune`, through the
//! library's write session (one commit per point, as a backup makes them), much faster than as
//! many `coffre backup` runs.
//!
//!   cargo run --release --example bench-points -- VAULT ITEMS POINTS_PER_ITEM
//!
//! Creates VAULT and a policy `bench` (daily 02:00 UTC, `--keep-daily 7 --keep-weekly 4
//! --keep-monthly 12`), followed by ITEMS items `item-N`, each with one point a day at 02:00 UTC
//! for POINTS_PER_ITEM days up to yesterday: a prune then expires most of them.

use std::process::ExitCode;

use coffre::maintenance::PolicyEdit;
use coffre::maintenance::policies::create_policy;
use coffre::policy::Zone;
use coffre::vault::{
    Entry, FilesSource, InitOptions, ItemSource, Kind, NewPoint, SessionOptions, Vault, now_ns,
};

const DAY_NS: i64 = 86_400_000_000_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [vault, items, per] = args.as_slice() else {
        eprintln!("usage: bench-points VAULT ITEMS POINTS_PER_ITEM");
        return ExitCode::from(2);
    };
    let (Ok(items), Ok(per)) = (items.parse::<usize>(), per.parse::<i64>()) else {
        eprintln!("ITEMS and POINTS_PER_ITEM are numbers");
        return ExitCode::from(2);
    };
    match build(std::path::Path::new(vault), items, per) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build(path: &std::path::Path, items: usize, per: i64) -> Result<(), Box<dyn std::error::Error>> {
    let vault = Vault::init(path, &InitOptions::default())?;
    let lock = vault.lock(false)?;
    let edit = PolicyEdit {
        schedule: Some("daily 02:00".parse()?),
        daily: Some(7),
        weekly: Some("4".parse()?),
        monthly: Some("12".parse()?),
        yearly: None,
        zone: Some(Zone::utc()),
    };
    create_policy(&vault, &lock, "bench", &edit)?;
    let today = now_ns().div_euclid(DAY_NS) * DAY_NS;
    let source = ItemSource::Files(FilesSource {
        path: "/nonexistent".into(),
        excludes: Vec::new(),
        ..Default::default()
    });
    for i in 0..items {
        let name = format!("item-{i}");
        for d in (1..=per).rev() {
            let session = vault.begin_write(&lock, &SessionOptions { threads: 1 })?;
            let item = session.define_item_following(&name, &source, Some("bench"))?;
            let root = Entry {
                kind: Some(Kind::Dir),
                ..Default::default()
            };
            session.commit(NewPoint {
                item,
                time: today - d * DAY_NS + 2 * 3_600_000_000_000,
                root,
                files: 0,
                dirs: 1,
                logical_bytes: 0,
                warnings: 0,
                consistency: None,
                keep_until: None,
                labels: Default::default(),
            })?;
        }
    }
    println!(
        "{} points of {items} items in {}",
        items as i64 * per,
        path.display()
    );
    Ok(())
}
