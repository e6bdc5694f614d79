//! `coffre ls`, `find`, `diff`, `dump`: browsing points without a mount, printed. Tables show
//! local time; `--json` prints typed objects (times RFC 3339, UTC) with one entry per line, so
//! the output is both one JSON document and greppable. `ls`, `find` and `diff` read only the
//! catalog and take no lock; `dump` reads chunk data under a reader's lease, like `restore`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::{Cli, UsageError};
use crate::browse::{Browser, Change, ChangeKind, DiffCounts, Pattern, point_label};
use crate::vault::{
    Entry, Kind, PointRow, Vault, human_time, mount_path, point_dir_name, point_dir_names,
    timestamp,
};

#[derive(clap::Args)]
pub struct LsArgs {
    /// Item and point: NAME (latest point) or NAME@POINT (an id or prefix, latest~N, a time, or
    /// a mount directory name)
    #[arg(value_name = "NAME[@POINT]")]
    spec: String,
    /// Directory (or file) inside the point [default: its root]
    #[arg(value_name = "PATH")]
    path: Option<OsString>,
    /// Long listing: mode, owner, size, mtime, symlink target
    #[arg(short = 'l', long = "long")]
    long: bool,
    /// List everything under PATH, not only its entries
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Print {"point": ..., "entries": [...]} as JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct FindArgs {
    /// A glob on entry names (`*.c`, `{a,b}.txt`), or on the path inside the point when it
    /// holds a `/` (`src/**/*.rs`)
    #[arg(value_name = "PATTERN")]
    pattern: String,
    /// Items to search [default: every item]
    #[arg(value_name = "ITEM")]
    items: Vec<String>,
    /// Print a JSON array of matches
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DiffArgs {
    /// The older point: NAME[@POINT]
    #[arg(value_name = "A")]
    a: String,
    /// The newer point: NAME[@POINT], or @POINT for another point of A's item
    #[arg(value_name = "B")]
    b: String,
    /// Compare only this path inside both points
    #[arg(value_name = "PATH")]
    path: Option<OsString>,
    /// Print {"before", "after", "changes": [...], "counts"} as JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DumpArgs {
    /// Item and point: NAME[@POINT]
    #[arg(value_name = "NAME[@POINT]")]
    spec: String,
    /// A file (its bytes) or a directory (a tar stream) inside the point; `/` for all of it
    #[arg(value_name = "PATH")]
    path: OsString,
}

/// A point as JSON shows it.
#[derive(Serialize)]
struct PointJson {
    item: String,
    id: String,
    time: jiff::Timestamp,
    /// Where the point shows inside a mount: `items/<item>/<dir>`.
    mount_path: String,
}

fn point_json(paths: &MountPaths, p: &PointRow) -> PointJson {
    PointJson {
        item: p.item.clone(),
        id: p.id.clone(),
        time: timestamp(p.time),
        mount_path: paths.of(p),
    }
}

/// Where each point shows inside a mount (a point's directory name depends on the other points
/// of its item and second, so they are named together, as the mount names them).
pub(super) struct MountPaths(HashMap<i64, String>);

impl MountPaths {
    pub(super) fn new(vault: &Vault) -> Result<MountPaths> {
        let mut map = HashMap::new();
        for rows in [vault.points(None)?, vault.deleted_points(None)?] {
            for (p, name) in rows.iter().zip(point_dir_names(&rows)) {
                map.insert(p.rowid, mount_path(p, &name));
            }
        }
        Ok(MountPaths(map))
    }

    pub(super) fn of(&self, p: &PointRow) -> String {
        self.0
            .get(&p.rowid)
            .cloned()
            .unwrap_or_else(|| mount_path(p, &point_dir_name(p.time)))
    }
}

/// An entry as JSON shows it.
#[derive(Serialize)]
struct EntryJson {
    path: String,
    kind: &'static str,
    /// Permission bits in octal, such as `0644`.
    mode: String,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: jiff::Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::CharDev => "chardev",
        Kind::BlockDev => "blockdev",
    }
}

fn mtime_ns(e: &Entry) -> i64 {
    e.mtime
        .sec
        .saturating_mul(1_000_000_000)
        .saturating_add(e.mtime.nsec.into())
}

fn entry_json(path: &[u8], e: &Entry) -> EntryJson {
    EntryJson {
        path: String::from_utf8_lossy(path).into_owned(),
        kind: kind_name(e.kind()),
        mode: format!("{:04o}", e.mode & 0o7777),
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        mtime: timestamp(mtime_ns(e)),
        target: (e.kind() == Kind::Symlink)
            .then(|| String::from_utf8_lossy(&e.target).into_owned()),
    }
}

/// `drwxr-xr-x`, as `ls -l` shows it.
fn mode_string(e: &Entry) -> String {
    let kind = match e.kind() {
        Kind::File => '-',
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::Fifo => 'p',
        Kind::CharDev => 'c',
        Kind::BlockDev => 'b',
    };
    let m = e.mode;
    let bit = |mask: u32, c: char| if m & mask != 0 { c } else { '-' };
    let special = |x: bool, s: bool, lower: char, upper: char| match (s, x) {
        (true, true) => lower,
        (true, false) => upper,
        (false, true) => 'x',
        (false, false) => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(m & 0o100 != 0, m & 0o4000 != 0, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(m & 0o010 != 0, m & 0o2000 != 0, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(m & 0o001 != 0, m & 0o1000 != 0, 't', 'T'));
    s
}

/// One `ls -l` style line: mode, owner, size, local mtime, path (and a symlink's target).
fn long_line(path: &[u8], e: &Entry) -> String {
    let mut line = format!(
        "{} {:>6} {:>6} {:>12}  {}  {}",
        mode_string(e),
        e.uid,
        e.gid,
        e.size,
        human_time(mtime_ns(e)),
        String::from_utf8_lossy(path)
    );
    if e.kind() == Kind::Symlink {
        line.push_str(" -> ");
        line.push_str(&String::from_utf8_lossy(&e.target));
    }
    line
}

fn stdout() -> BufWriter<io::StdoutLock<'static>> {
    BufWriter::with_capacity(1 << 16, io::stdout().lock())
}

/// Writes a JSON array, one element per line, as elements come.
struct JsonLines<W: Write> {
    out: W,
    first: bool,
}

impl<W: Write> JsonLines<W> {
    fn new(mut out: W, head: &str) -> io::Result<Self> {
        out.write_all(head.as_bytes())?;
        out.write_all(b"[")?;
        Ok(JsonLines { out, first: true })
    }

    fn push(&mut self, v: &impl Serialize) -> io::Result<()> {
        self.out
            .write_all(if self.first { b"\n" } else { b",\n" })?;
        self.first = false;
        serde_json::to_writer(&mut self.out, v)?;
        Ok(())
    }

    fn end(mut self, tail: &str) -> io::Result<W> {
        self.out.write_all(b"\n]")?;
        self.out.write_all(tail.as_bytes())?;
        self.out.write_all(b"\n")?;
        Ok(self.out)
    }
}

/// `coffre ls NAME[@POINT] [PATH] [-l] [-R] [--json]`
pub fn ls(cli: &Cli, args: &LsArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    let (_, point) = vault.resolve(&args.spec)?;
    let browser = Browser::new(vault.reader());
    let path = args.path.as_ref().map_or(&b""[..], |p| p.as_bytes());
    let mut out = stdout();
    if args.json {
        let head = format!(
            "{{\"point\":{},\"entries\":",
            serde_json::to_string(&point_json(&MountPaths::new(&vault)?, &point))?
        );
        let mut lines = JsonLines::new(&mut out, &head)?;
        browser.list(&point, path, args.recursive, &mut |p, e| {
            lines.push(&entry_json(p, e))
        })?;
        lines.end("}")?;
    } else {
        browser.list(&point, path, args.recursive, &mut |p, e| {
            if args.long {
                writeln!(out, "{}", long_line(p, e))
            } else {
                out.write_all(p)?;
                out.write_all(if e.kind() == Kind::Dir { b"/\n" } else { b"\n" })
            }
        })?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// A match of `find` as JSON shows it.
#[derive(Serialize)]
struct FoundJson<'a> {
    point: &'a PointJson,
    #[serde(flatten)]
    entry: EntryJson,
}

/// The live points of `items` (every item when empty), newest first.
fn points_of(vault: &Vault, items: &[String]) -> Result<Vec<PointRow>> {
    let mut points = Vec::new();
    if items.is_empty() {
        points = vault.points(None)?;
    }
    for name in items {
        points.extend(vault.points(Some(&vault.item(name)?))?);
    }
    points.sort_by_key(|p| std::cmp::Reverse((p.time, p.rowid)));
    Ok(points)
}

/// `coffre find PATTERN [ITEM...] [--json]`
pub fn find(cli: &Cli, args: &FindArgs) -> Result<ExitCode> {
    let pattern = Pattern::new(&args.pattern).map_err(|e| UsageError(e.to_string()))?;
    let vault = cli.open_vault()?;
    let points = points_of(&vault, &args.items)?;
    let browser = Browser::new(vault.reader());
    let paths = MountPaths::new(&vault)?;
    let mut out = stdout();
    let mut current = None;
    if args.json {
        let mut lines = JsonLines::new(&mut out, "")?;
        browser.find(&points, &pattern, &mut |p, path, e| {
            let (point, _) = switch_point(&mut current, &paths, p);
            let entry = entry_json(path, e);
            lines.push(&FoundJson { point, entry })
        })?;
        lines.end("")?;
    } else {
        let (mut found, mut in_points) = (0u64, 0u64);
        browser.find(&points, &pattern, &mut |p, path, e| {
            let (pj, fresh) = switch_point(&mut current, &paths, p);
            if fresh {
                let (label, time) = (point_label(p), human_time(p.time));
                writeln!(out, "{label} ({time}, {}):", pj.mount_path)?;
                in_points += 1;
            }
            found += 1;
            writeln!(out, "  {}", long_line(path, e))
        })?;
        let noun = if found == 1 { "entry" } else { "entries" };
        let of = points.len();
        writeln!(out, "found {found} {noun} in {in_points} of {of} points")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The point of the match at hand, as JSON shows it: made once per point (matches come point by
/// point), and whether it was just made.
fn switch_point<'a>(
    current: &'a mut Option<PointJson>,
    paths: &MountPaths,
    p: &PointRow,
) -> (&'a PointJson, bool) {
    if current
        .as_ref()
        .is_some_and(|c| c.id != p.id || c.item != p.item)
    {
        *current = None;
    }
    let fresh = current.is_none();
    (current.get_or_insert_with(|| point_json(paths, p)), fresh)
}

/// A change of `diff` as JSON shows it.
#[derive(Serialize)]
struct ChangeJson {
    change: ChangeKind,
    path: String,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<EntryJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<EntryJson>,
}

fn change_json(c: &Change) -> ChangeJson {
    ChangeJson {
        change: c.kind,
        path: String::from_utf8_lossy(c.path).into_owned(),
        kind: kind_name(c.after.or(c.before).map_or(Kind::File, |e| e.kind())),
        before: c.before.map(|e| entry_json(c.path, e)),
        after: c.after.map(|e| entry_json(c.path, e)),
    }
}

fn counts_line(c: &DiffCounts) -> String {
    format!(
        "{} added, {} removed, {} modified, {} metadata only, {} type changed",
        c.added, c.removed, c.modified, c.metadata, c.type_changed
    )
}

/// `coffre diff A B [PATH] [--json]`
pub fn diff(cli: &Cli, args: &DiffArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    let (item_a, a) = vault.resolve(&args.a)?;
    let b_spec = match args.b.strip_prefix('@') {
        Some(point) => format!("{}@{point}", item_a.name),
        None => args.b.clone(),
    };
    let (_, b) = vault.resolve(&b_spec)?;
    let browser = Browser::new(vault.reader());
    let path = args.path.as_ref().map_or(&b""[..], |p| p.as_bytes());
    let mut out = stdout();
    if args.json {
        let paths = MountPaths::new(&vault)?;
        let head = format!(
            "{{\"before\":{},\"after\":{},\"changes\":",
            serde_json::to_string(&point_json(&paths, &a))?,
            serde_json::to_string(&point_json(&paths, &b))?
        );
        let mut lines = JsonLines::new(&mut out, &head)?;
        let counts = browser.diff(&a, &b, path, &mut |c| lines.push(&change_json(c)))?;
        let tail = format!(",\"counts\":{}}}", serde_json::to_string(&counts)?);
        lines.end(&tail)?;
    } else {
        let counts = browser.diff(&a, &b, path, &mut |c| {
            let dir = c.after.or(c.before).is_some_and(|e| e.kind() == Kind::Dir);
            write!(out, "{}    ", c.kind.letter())?;
            out.write_all(c.path)?;
            out.write_all(if dir { b"/\n" } else { b"\n" })
        })?;
        writeln!(
            out,
            "{} -> {}: {}",
            point_label(&a),
            point_label(&b),
            counts_line(&counts)
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `coffre dump NAME[@POINT] PATH`
pub fn dump(cli: &Cli, args: &DumpArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    let (_, point) = vault.resolve(&args.spec)?;
    // Chunk data is read: a lease keeps a garbage collection from removing a pack under us.
    let _lease = vault.lease()?;
    let browser = Browser::new(vault.reader());
    let path = args.path.as_bytes();
    let entry = browser.entry_at(&point, &crate::browse::normalize(path))?;
    if entry.kind() != Kind::File && io::stdout().is_terminal() {
        return Err(UsageError(format!(
            "{:?} is not a regular file, so it is dumped as a tar stream; redirect it to a file \
             or a pipe (coffre dump {} {:?} > out.tar)",
            String::from_utf8_lossy(path),
            args.spec,
            String::from_utf8_lossy(path)
        ))
        .into());
    }
    let mut out = stdout();
    browser.dump(&point, path, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
