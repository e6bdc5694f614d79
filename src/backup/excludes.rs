//! What a files backup leaves out: the exclude rules of a `files` item, compiled once per backup.
//!
//! Patterns (`--exclude`, `--iexclude`, the lines of `--exclude-file`) have gitignore semantics
//! through the `ignore` crate: a pattern without `/` matches a name at any depth, one with a `/`
//! is anchored at the backed-up directory, a trailing `/` matches directories only, `**` crosses
//! directories, `{a,b}` alternates and `!pattern` re-includes (later patterns win). A pattern
//! that starts with the backed-up directory's absolute path is anchored there. Tagged directories
//! (`--exclude-caches`, `--exclude-if-present NAME[:HEADER]`) keep only their tag file, as
//! restic does (a tag with a header counts only if the file starts with it);
//! `--exclude-larger-than` leaves out bigger files. Pure matching: no I/O but reading the exclude
//! files (once, at compile time) and a tag file's first bytes.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::BackupError;
use crate::fsmeta;
use crate::vault::FilesSource;

/// The name of a cache directory's tag (<https://bford.info/cachedir/>).
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
/// The first bytes of a valid `CACHEDIR.TAG`.
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// The compiled exclude rules of one backup.
pub(crate) struct Excludes {
    patterns: Gitignore,
    /// Tag file names whose directory keeps only the tag, with the bytes the tag must start
    /// with, if any (`CACHEDIR.TAG`'s signature, or `--exclude-if-present NAME:HEADER`).
    tags: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    larger_than: Option<u64>,
}

fn bad(pattern: &str, detail: impl ToString) -> BackupError {
    BackupError::Exclude {
        pattern: pattern.to_string(),
        detail: detail.to_string(),
    }
}

/// A pattern as the gitignore matcher reads it: `./x` and `<source>/x` are anchored (`/x`).
fn anchored(pattern: &str, source: &Path) -> String {
    let (neg, body) = match pattern.strip_prefix('!') {
        Some(rest) => ("!", rest),
        None => ("", pattern),
    };
    let source = source.to_string_lossy();
    let prefix = format!("{}/", source.trim_end_matches('/'));
    let body = if let Some(rest) = body.strip_prefix("./") {
        format!("/{rest}")
    } else if let Some(rest) = body.strip_prefix(prefix.as_str()) {
        format!("/{rest}")
    } else {
        body.to_string()
    };
    format!("{neg}{body}")
}

/// The patterns of an exclude file: one a line; blank lines and `#` comments are skipped.
pub fn read_exclude_file(path: &Path) -> Result<Vec<String>, BackupError> {
    let text = std::fs::read(path).map_err(|e| BackupError::ExcludeFile {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

impl Excludes {
    /// Compiles the rules of `def` (reading its exclude files now).
    pub(crate) fn new(def: &FilesSource) -> Result<Excludes, BackupError> {
        let mut b = GitignoreBuilder::new(".");
        b.allow_unclosed_class(false);
        let mut exact: Vec<String> = def.excludes.clone();
        for f in &def.exclude_files {
            exact.extend(read_exclude_file(f)?);
        }
        for (patterns, ignore_case) in [(&exact, false), (&def.iexcludes, true)] {
            b.case_insensitive(ignore_case).map_err(|e| bad("", e))?;
            for p in patterns {
                b.add_line(None, &anchored(p, &def.path))
                    .map_err(|e| bad(p, glob_detail(e)))?;
            }
        }
        let patterns = b.build().map_err(|e| bad("", e))?;
        let mut tags: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        if def.exclude_caches {
            tags.push((
                CACHEDIR_TAG.as_bytes().to_vec(),
                Some(CACHEDIR_SIGNATURE.to_vec()),
            ));
        }
        for spec in &def.exclude_if_present {
            let (name, header) = match spec.split_once(':') {
                Some((n, h)) => (n, Some(h.as_bytes().to_vec())),
                None => (spec.as_str(), None),
            };
            if name.is_empty() || name.contains('/') {
                return Err(bad(
                    spec,
                    "--exclude-if-present takes a file name (NAME or NAME:HEADER), without '/'",
                ));
            }
            tags.push((name.as_bytes().to_vec(), header));
        }
        Ok(Excludes {
            patterns,
            tags,
            larger_than: def.exclude_larger_than,
        })
    }

    /// True if the entry at `rel` (relative to the backed-up directory) is left out.
    pub(crate) fn path(&self, rel: &[u8], is_dir: bool) -> bool {
        let rel = Path::new(OsStr::from_bytes(rel));
        self.patterns.matched(rel, is_dir).is_ignore()
    }

    /// True if a file of `size` bytes is left out.
    pub(crate) fn too_large(&self, size: u64) -> bool {
        self.larger_than.is_some_and(|max| size > max)
    }

    /// If the directory (open as `dir`, listing `names`) is tagged, the one name it keeps.
    pub(crate) fn tagged(&self, dir: BorrowedFd, names: &[Vec<u8>]) -> Option<Vec<u8>> {
        self.tags.iter().find_map(|(tag, header)| {
            names.binary_search(tag).ok()?;
            let valid = header.as_ref().is_none_or(|h| starts_with(dir, tag, h));
            valid.then(|| tag.clone())
        })
    }
}

/// The detail of a pattern error, without the pattern (the caller names it).
fn glob_detail(e: ignore::Error) -> String {
    match e {
        ignore::Error::Glob { err, .. } => err,
        other => other.to_string(),
    }
}

/// True if the file `name` in `dir` starts with `header` (a tag whose header does not match
/// does not count: the directory is backed up whole).
fn starts_with(dir: BorrowedFd, name: &[u8], header: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let flags = libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW;
    let Ok(fd) = fsmeta::open_at(dir, name, flags, 0) else {
        return false;
    };
    let file = std::fs::File::from(fd);
    let mut buf = vec![0u8; header.len()];
    file.read_exact_at(&mut buf, 0).is_ok() && buf == header
}

/// Checks an item's exclude rules without backing anything up (so a bad one is refused before
/// the catalog changes).
pub fn check_excludes(def: &FilesSource) -> Result<(), BackupError> {
    Excludes::new(def).map(drop)
}

/// Parses a size as `--exclude-larger-than` takes it: bytes, or a number with `K`, `M`, `G` or
/// `T` (powers of 1024, as restic reads them; a trailing `B`/`iB` is allowed).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let upper = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (num, shift) = match upper.chars().last()? {
        'K' => (&upper[..upper.len() - 1], 10),
        'M' => (&upper[..upper.len() - 1], 20),
        'G' => (&upper[..upper.len() - 1], 30),
        'T' => (&upper[..upper.len() - 1], 40),
        _ => (upper, 0),
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(excludes: &[&str], iexcludes: &[&str]) -> Excludes {
        Excludes::new(&FilesSource {
            path: "/home/me".into(),
            excludes: excludes.iter().map(|s| s.to_string()).collect(),
            iexcludes: iexcludes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn patterns_follow_gitignore() {
        let r = rules(
            &[
                "*.tmp",
                "cache/*",
                "build/",
                "*.{o,a}",
                "/home/me/abs",
                "logs/**",
                "!keep.tmp",
            ],
            &["*.JPG"],
        );
        let t = |p: &str, dir| r.path(p.as_bytes(), dir);
        assert!(
            t("x.tmp", false) && t("a/b/x.tmp", false),
            "a name at any depth"
        );
        assert!(!t("keep.tmp", false), "re-included by a later !pattern");
        assert!(
            t("cache/big", false) && !t("sub/cache/big", false),
            "anchored"
        );
        assert!(
            t("build", true) && t("src/build", true) && !t("build", false),
            "dir/ only"
        );
        assert!(
            t("m.o", false) && t("lib/m.a", false) && !t("m.c", false),
            "braces"
        );
        assert!(
            t("abs", true) && !t("x/abs", true),
            "absolute under the source"
        );
        assert!(
            t("logs/a/b", false) && !t("logs", true),
            "** keeps the directory"
        );
        assert!(
            t("photo.jpg", false) && t("P.Jpg", false),
            "--iexclude ignores case"
        );
        assert!(
            !rules(&["*.JPG"], &[]).path(b"photo.jpg", false),
            "--exclude keeps case"
        );
    }

    #[test]
    fn bad_patterns_and_sizes_are_refused() {
        let def = |p: &str| FilesSource {
            excludes: vec![p.to_string()],
            ..Default::default()
        };
        assert!(matches!(
            Excludes::new(&def("[")),
            Err(BackupError::Exclude { .. })
        ));
        assert!(Excludes::new(&def("{a,b")).is_err());
        assert_eq!(parse_size("10M"), Some(10 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("123"), Some(123));
        for bad in ["", "M", "1X", "-1M", "1.5G", "99999999999T"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
