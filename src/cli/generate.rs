//! `coffre generate man DIR` and `coffre generate completions SHELL` (a hidden command): the man
//! pages of both binaries (one per command: `coffre.1`, `coffre-backup.1`, `coffre-restore.1`,
//! `coffre-restore-disk.1`...) and the shell completions, all from the clap definitions.
//!
//! Each page is clap_mangen's sections plus EXAMPLES and EXIT STATUS from `cli::docs` (and, on
//! the top pages, the sections that are not about one command). Writes only into the directory
//! it is given; a page is written whole or the command fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Command;
use clap_complete::Shell;
use clap_mangen::Man;

use super::docs;

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Write the man pages of coffre and coffre-restore into DIR (e.g. /usr/local/share/man/man1)
    Man {
        /// The directory to write the pages into (created if missing)
        dir: PathBuf,
    },
    /// Print the completion script of a shell to standard output
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: Shell,
        /// The binary to complete
        #[arg(long, default_value = "coffre", value_parser = ["coffre", "coffre-restore"])]
        bin: String,
    },
}

/// The docs of one binary: its command, examples and exit status, and extra top-page sections.
struct Book {
    cmd: Command,
    examples: &'static [(&'static str, &'static [(&'static str, &'static str)])],
    exit_status: &'static str,
    top_sections: &'static str,
}

fn books() -> [Book; 2] {
    [
        Book {
            cmd: super::command(),
            examples: docs::EXAMPLES,
            exit_status: docs::EXIT_STATUS,
            top_sections: docs::TOP_SECTIONS,
        },
        Book {
            cmd: super::sidecar::command(),
            examples: docs::SIDECAR_EXAMPLES,
            exit_status: docs::SIDECAR_EXIT_STATUS,
            top_sections: "",
        },
    ]
}

pub fn run(args: &GenerateArgs) -> Result<ExitCode> {
    match &args.what {
        What::Man { dir } => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut n = 0;
            for book in books() {
                let mut cmd = book.cmd.clone().disable_help_subcommand(true);
                cmd.build();
                n += write_pages(&book, &cmd, "", dir)?;
            }
            eprintln!(
                "wrote {} to {}",
                super::plural(n as u64, "man page"),
                dir.display()
            );
        }
        What::Completions { shell, bin } => {
            let mut cmd = match bin.as_str() {
                "coffre-restore" => super::sidecar::command(),
                _ => super::command(),
            };
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, bin.as_str(), &mut script);
            let mut script = String::from_utf8(script).context("completion script")?;
            if *shell == Shell::Bash && bin == "coffre-restore" {
                // clap_complete 4.6 labels the subcommands of a hyphenated binary
                // `coffre__subcmd__restore__subcmd__disk` but looks them up as
                // `coffre__restore__subcmd__disk`: without this, nothing after the subcommand
                // completes (tests/docs.rs).
                script = script.replace(
                    "coffre__subcmd__restore__subcmd__",
                    "coffre__restore__subcmd__",
                );
            }
            std::io::stdout().write_all(script.as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the page of `cmd` (at `path`, "" for the binary) and of its visible subcommands.
fn write_pages(book: &Book, cmd: &Command, path: &str, dir: &Path) -> Result<usize> {
    let mut n = 0;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_path = match path {
            "" => sub.get_name().to_string(),
            _ => format!("{path} {}", sub.get_name()),
        };
        n += write_pages(book, sub, &sub_path, dir)?;
    }
    let mut page_cmd = cmd.clone();
    if let Some((_, name)) = docs::PAGE_NAMES.iter().find(|(p, _)| *p == path)
        && book.cmd.get_name() == "coffre"
    {
        page_cmd = page_cmd.display_name(*name);
    }
    let man = Man::new(page_cmd).manual("User Commands");
    let file = dir.join(man.get_filename());
    let mut page = Vec::new();
    render(book, cmd, &man, path, &mut page)?;
    std::fs::write(&file, page).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(n + 1)
}

fn render(book: &Book, cmd: &Command, man: &Man, path: &str, w: &mut Vec<u8>) -> Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(w)?;
    }
    if let Some((_, examples)) = book.examples.iter().find(|(p, _)| *p == path) {
        writeln!(w, ".SH EXAMPLES")?;
        for (line, what) in *examples {
            writeln!(w, ".TP\n.B {}\n{}", roff_text(line), roff_text(what))?;
        }
    }
    writeln!(w, ".SH \"EXIT STATUS\"\n{}", roff_text(book.exit_status))?;
    if path.is_empty() {
        w.write_all(book.top_sections.as_bytes())?;
    }
    see_also(book, cmd, path, w)?;
    man.render_version_section(w)?;
    Ok(())
}

/// SEE ALSO: the binary's page from a command's page; the other binary's page from a top page.
fn see_also(book: &Book, cmd: &Command, path: &str, w: &mut Vec<u8>) -> Result<()> {
    let top = book.cmd.get_name();
    let other = if top == "coffre" {
        "coffre-restore"
    } else {
        "coffre"
    };
    let mut refs = vec![if path.is_empty() { other } else { top }.to_string()];
    if path.is_empty() && top == "coffre-restore" {
        refs.push(docs::PAGE_NAMES[0].1.to_string());
    }
    if !path.is_empty() && cmd.get_subcommands().next().is_none() {
        refs.push(other.to_string());
    }
    writeln!(w, ".SH \"SEE ALSO\"")?;
    let list: Vec<String> = refs.iter().map(|r| format!("\\fB{r}\\fR(1)")).collect();
    writeln!(w, "{}", list.join(", "))?;
    Ok(())
}

/// Plain text as roff: backslashes and dashes escaped, no line starting with a control character.
fn roff_text(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}
