//! The `coffre` command: parse, dispatch, exit code. All work happens in the library.

fn main() -> std::process::ExitCode {
    coffre::cli::main()
}
