//! The generated man pages and completions agree with `--help`: every command found by walking
//! `--help` of both binaries has a page holding each of its long options, and no page or option
//! exists that `--help` does not show. Commands added later are covered without changes here.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{TestVault, stderr};

const COFFRE: &str = env!("CARGO_BIN_EXE_coffre");
const SIDECAR: &str = env!("CARGO_BIN_EXE_coffre-restore");

fn help(bin: &str, path: &[String]) -> String {
    let out = Command::new(bin).args(path).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{bin} {path:?} --help: {}",
        stderr(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The lines of a `--help` section ("Commands:", "Options:", "Arguments:").
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| *l != title);
    lines.next();
    lines
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .filter(|l| !l.is_empty())
        .collect()
}

fn subcommands(text: &str) -> Vec<String> {
    section(text, "Commands:")
        .iter()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|c| c != "help")
        .collect()
}

/// Long options as they start a line of a help text or a page's OPTIONS entries.
fn long_options<'a>(lines: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for l in lines {
        let indent = l.len() - l.trim_start().len();
        if indent >= 8 {
            continue; // a description line, not an option
        }
        let l = l.trim_start();
        let first = l.split([' ', '=']).find(|w| w.starts_with("--"));
        let head = if l.starts_with('-') { first } else { None };
        if let Some(opt) = head {
            set.insert(opt.trim_end_matches([',', '.']).to_string());
        }
    }
    set
}

/// A page as plain text: `\-` is `-`, font changes gone.
fn plain(page: &str) -> String {
    let mut s = page.replace("\\-", "-");
    for f in ["\\fB", "\\fI", "\\fR", "\\fP", "\\&"] {
        s = s.replace(f, "");
    }
    s
}

/// The long options a page lists (the line after a `.TP` that starts with `-`, in OPTIONS or
/// in a section of its own for options under a help heading).
fn page_options(page: &str) -> BTreeSet<String> {
    let text = plain(page);
    let body: Vec<&str> = text.lines().collect();
    let heads = body
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .map(|w| w[1])
        .collect::<Vec<_>>();
    long_options(heads.into_iter())
}

fn page_name(bin: &str, path: &[String]) -> String {
    if bin == "coffre" && path == ["restore"] {
        return "coffre-restore-files.1".into();
    }
    let mut name = bin.to_string();
    for p in path {
        name.push('-');
        name.push_str(p);
    }
    name + ".1"
}

/// Walks `--help` from `path` down; checks each command's page; returns the pages it expects.
fn check_tree(bin_path: &str, bin: &str, path: Vec<String>, dir: &Path, pages: &mut Vec<String>) {
    let text = help(bin_path, &path);
    let name = page_name(bin, &path);
    let page = std::fs::read_to_string(dir.join(&name))
        .unwrap_or_else(|e| panic!("no page {name} for `{bin} {}`: {e}", path.join(" ")));
    // "Options:" and any "<Heading>:" section of options (clap's help_heading).
    let titles: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with(':') && !l.starts_with(' ') && *l != "Commands:")
        .filter(|l| *l != "Arguments:" && !l.starts_with("Usage"))
        .collect();
    let help_opts = long_options(titles.iter().flat_map(|t| section(&text, t)));
    assert!(
        !help_opts.is_empty(),
        "{name}: no options parsed from --help"
    );
    let in_page = page_options(&page);
    assert_eq!(in_page, help_opts, "{name}: OPTIONS and --help disagree");
    for heading in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH \"EXIT STATUS\"",
    ] {
        assert!(page.contains(heading), "{name} has no {heading}");
    }
    let subs = subcommands(&text);
    for sub in &subs {
        assert!(
            plain(&page).contains(sub.as_str()),
            "{name} does not list {sub}"
        );
    }
    pages.push(name);
    for sub in subs {
        let mut p = path.clone();
        p.push(sub);
        check_tree(bin_path, bin, p, dir, pages);
    }
}

#[test]
fn man_pages_agree_with_help() {
    let t = TestVault::new();
    let dir = t.path("man1");
    let out = Command::new(COFFRE)
        .args(["generate", "man"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut expected = Vec::new();
    check_tree(COFFRE, "coffre", vec![], &dir, &mut expected);
    let coffre_pages = expected.len();
    check_tree(SIDECAR, "coffre-restore", vec![], &dir, &mut expected);
    assert!(
        coffre_pages > 20 && expected.len() > coffre_pages + 3,
        "{expected:?}"
    );
    let mut written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    expected.sort();
    assert_eq!(
        written, expected,
        "pages without a command, or commands without a page"
    );
    assert!(
        stderr(&out).contains(&format!("wrote {} man pages", expected.len())),
        "{}",
        stderr(&out)
    );
    // The top pages and the commands users start with have examples and exit codes in words.
    for name in [
        "coffre.1",
        "coffre-restore.1",
        "coffre-backup.1",
        "coffre-restore-files.1",
    ] {
        let page = plain(&std::fs::read_to_string(dir.join(name)).unwrap());
        assert!(page.contains(".SH EXAMPLES"), "{name} has no EXAMPLES");
        assert!(page.contains("2 usage error"), "{name}: exit status");
    }
    let top = plain(&std::fs::read_to_string(dir.join("coffre.1")).unwrap());
    for s in [
        ".SH RETENTION",
        ".SH FILES",
        "COFFRE_VAULT",
        "coffre-restore(1)",
    ] {
        assert!(top.contains(s), "coffre.1 lacks {s}");
    }
    // `man` renders a page (groff is optional on a build machine: check only where present).
    if Command::new("man").arg("--version").output().is_ok() {
        let out = Command::new("man")
            .arg("-l")
            .arg(dir.join("coffre-backup.1"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("EXIT STATUS") && text.contains("--one-file-system"),
            "{text}"
        );
    }
}

#[test]
fn long_help_shows_the_manual_description() {
    // `--help` and the page share the longer descriptions (cli::docs), so neither goes stale.
    // Words, whatever the wrapping.
    let words = |t: String| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = words(help(COFFRE, &["backup".to_string()]));
    assert!(text.contains("the packs it wrote are deleted"), "{text}");
    let text = words(help(SIDECAR, &["disk".to_string()]));
    assert!(text.contains("Every block is checked"), "{text}");
}

fn completions(shell: &str, bin: &str) -> String {
    let out = Command::new(COFFRE)
        .args(["generate", "completions", shell, "--bin", bin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// What bash completes for the words of `line` (the last one being completed).
fn bash_complete(script: &str, func: &str, line: &[&str]) -> Vec<String> {
    let words = line
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let prog = format!(
        "{script}\nCOMP_WORDS=({words}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
         {func} {} '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        line.len() - 1,
        line.join(" "),
        line[0],
        line[line.len() - 1],
        line[line.len() - 2],
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &prog])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_completes_commands_and_options() {
    let script = completions("bash", "coffre");
    let got = bash_complete(&script, "_coffre", &["coffre", "backup-"]);
    assert_eq!(got, ["backup-disk", "backup-vm"]);
    let got = bash_complete(&script, "_coffre", &["coffre", "backup", "--one"]);
    assert_eq!(got, ["--one-file-system"]);
    let script = completions("bash", "coffre-restore");
    let got = bash_complete(
        &script,
        "_coffre__restore",
        &["coffre-restore", "disk", "--in"],
    );
    assert_eq!(got, ["--in-place"]);
}

#[test]
fn zsh_and_fish_completions_name_every_command() {
    let zsh = completions("zsh", "coffre");
    assert!(zsh.starts_with("#compdef coffre"), "{}", &zsh[..80]);
    let fish = completions("fish", "coffre-restore");
    for c in ["reprotect", "in-place", "protect-as"] {
        assert!(fish.contains(c), "fish completion lacks {c}");
    }
    for c in [
        "backup-disk",
        "stop-protection",
        "rebuild-index",
        "one-file-system",
    ] {
        assert!(zsh.contains(c), "zsh completion lacks {c}");
    }
}

#[test]
fn generate_refuses_bad_arguments_as_usage_errors() {
    for args in [
        &["generate", "completions", "tcsh"][..],
        &["generate", "completions", "bash", "--bin", "ls"],
        &["generate", "man"],
        &["generate"],
    ] {
        let out = Command::new(COFFRE).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    // A directory that cannot be made: one error line, exit 1.
    let t = TestVault::new();
    let file = t.path("file");
    std::fs::write(&file, b"").unwrap();
    let out = Command::new(COFFRE)
        .args(["generate", "man"])
        .arg(file.join("man1"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: cannot create") && err.lines().count() == 1,
        "{err}"
    );
}
