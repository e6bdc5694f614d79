//! `coffre-restore`, the sidecar: whole-disk and VM restores, and re-protection.

fn main() -> std::process::ExitCode {
    coffre::cli::sidecar::main()
}
