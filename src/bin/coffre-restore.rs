//! `coffre-restore`, the sidecar for whole-disk and VM restores and re-protection.
//! Its commands arrive with disk and VM items; for now it only answers --help and --version.

use clap::Parser;

/// Restore whole disks and virtual machines from a coffre vault, and re-protect items after an
/// in-place restore. (Disk and VM items are not available yet in this version.)
#[derive(Parser)]
#[command(name = "coffre-restore", version)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _ = Cli::parse();
    eprintln!("coffre-restore: no command given; see --help");
    std::process::ExitCode::from(2)
}
