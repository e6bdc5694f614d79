//! How coffre says things to people: counts with their nouns, byte sizes, and system errors and
//! child exit statuses without Rust's `Display` forms ("Permission denied (os error 13)" is
//! "permission denied", "exit status: 1" is "exited with code 1").
//!
//! Pure functions over strings and numbers; `cli/` runs every line it prints through `plain`.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// `1 file`, `2 files`: a count and its noun (`plural(n, "file")`; nouns ending in s, x, ch or
/// sh take "es", a consonant and y "ies").
pub fn plural(n: u64, noun: &str) -> String {
    let ends = |s: &str| noun.ends_with(s);
    let before_y = noun
        .len()
        .checked_sub(2)
        .and_then(|i| noun.as_bytes().get(i));
    match n {
        1 => format!("1 {noun}"),
        _ if ends("s") || ends("x") || ends("ch") || ends("sh") => format!("{n} {noun}es"),
        _ if ends("y") && before_y.is_some_and(|c| !b"aeiou".contains(c)) => {
            format!("{n} {}ies", &noun[..noun.len() - 1])
        }
        _ => format!("{n} {noun}s"),
    }
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// How a child process ended: `exited with code 1`, `was killed by signal 9 (SIGKILL)`.
pub fn exit_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => match signal_name(sig) {
            Some(name) => format!("was killed by signal {sig} ({name})"),
            None => format!("was killed by signal {sig}"),
        },
        (None, None) => "ended in an unknown way".into(),
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// A message as people read it: each system error's `(os error N)` goes and its text starts in
/// lower case ("cannot open x: Permission denied (os error 13)" -> "cannot open x: permission
/// denied"); Rust's number-parsing phrases become plain ones.
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" (os error ") {
        let Some(close) = rest[at..].find(')') else {
            break;
        };
        let before = &rest[..at];
        // The error text starts after the last ": " (or at the start of the message).
        let start = before.rfind(": ").map_or(0, |i| i + 2);
        out.push_str(&before[..start]);
        out.push_str(&lower_first(&before[start..]));
        rest = &rest[at + close + 1..];
    }
    out.push_str(rest);
    for (rust, words) in [
        ("invalid digit found in string", "not a whole number"),
        ("cannot parse integer from empty string", "empty"),
        ("number too large to fit in target type", "too large"),
        ("number too small to fit in target type", "too small"),
        ("invalid float literal", "not a number"),
    ] {
        out = out.replace(rust, words);
    }
    out
}

/// "Permission denied" -> "permission denied"; "EIO" and "I/O error" stay as they are.
fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_ascii_uppercase() && b.is_ascii_lowercase() => {
            format!("{}{}", a.to_ascii_lowercase(), &s[1..])
        }
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "file"), "1 file");
        assert_eq!(plural(0, "file"), "0 files");
        assert_eq!(plural(2, "entry"), "2 entries");
        assert_eq!(plural(2, "day"), "2 days");
        assert_eq!(plural(3, "match"), "3 matches");
        assert_eq!(plural(1, "other entry"), "1 other entry");
    }

    #[test]
    fn system_errors_read_as_words() {
        let e = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(
            plain(&format!("cannot open /x: {e}")),
            "cannot open /x: permission denied"
        );
        let e2 = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(
            plain(&format!("a: {e}; b: {e2}")),
            "a: permission denied; b: no such file or directory"
        );
        let e = std::io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(plain(&format!("read: {e}")), "read: input/output error");
        assert_eq!(plain("no error here (really)"), "no error here (really)");
        assert_eq!(
            plain("bad N: invalid digit found in string"),
            "bad N: not a whole number"
        );
    }

    #[test]
    fn exit_statuses_read_as_words() {
        let st = |sh: &str| {
            std::process::Command::new("sh")
                .args(["-c", sh])
                .status()
                .unwrap()
        };
        assert_eq!(exit_status(st("exit 3")), "exited with code 3");
        assert_eq!(
            exit_status(st("kill -9 $$")),
            "was killed by signal 9 (SIGKILL)"
        );
    }
}
