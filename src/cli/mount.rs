//! `coffre mount MOUNTPOINT [--allow-other] [--daemon]`.

use std::io::{BufRead, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::Cli;
use crate::mount::{MountOptions, check_mount_point, mount};

#[derive(clap::Args)]
pub struct MountArgs {
    /// An empty directory to mount on
    mountpoint: PathBuf,
    /// Let other users in; the kernel still enforces each file's captured owner and mode
    #[arg(long)]
    allow_other: bool,
    /// Detach once the mount is ready (the mount stays until `coffre umount`)
    #[arg(long)]
    daemon: bool,
    /// Request threads (0 = two per core, at most 256)
    #[arg(long, default_value_t = 0, value_parser = super::threads_arg)]
    threads: usize,
}

pub fn run(cli: &Cli, args: &MountArgs) -> Result<ExitCode> {
    // Fail early and clearly, before any fork.
    check_mount_point(&args.mountpoint)?;
    let opts = MountOptions {
        allow_other: args.allow_other,
        threads: args.threads,
    };
    if !args.daemon {
        let vault = cli.open_vault()?;
        let at = std::fs::canonicalize(&args.mountpoint).unwrap_or(args.mountpoint.clone());
        let shown = at.display();
        mount(&vault, &args.mountpoint, &opts, || {
            if !cli.quiet {
                eprintln!(
                    "serving vault {} on {shown} (read-only); stop with Ctrl-C or `coffre umount {shown}`",
                    vault.root().display()
                );
            }
        })
        .with_context(|| format!("mount on {} failed", args.mountpoint.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    // --daemon: the child mounts and reports through a pipe; the parent exits once it is ready.
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("cannot create a pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread runs yet (nothing has been spawned), so fork is sound.
    match unsafe { libc::fork() } {
        -1 => bail!("cannot fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(rd);
            let mut wr = std::fs::File::from(wr);
            // SAFETY: setsid in the child detaches it from the terminal's session.
            unsafe { libc::setsid() };
            let result = cli.open_vault().and_then(|vault| {
                mount(&vault, &args.mountpoint, &opts, || {
                    let _ = wr.write_all(b"ok\n");
                    detach_stdio();
                })
                .map_err(anyhow::Error::from)
            });
            match result {
                Ok(()) => std::process::exit(0),
                Err(e) => {
                    let _ = writeln!(wr, "{}", super::error_line(&e));
                    std::process::exit(1)
                }
            }
        }
        _ => {
            drop(wr);
            // One line: "ok" once the mount answers, or the error. (The child keeps the pipe
            // open while it serves, so reading to the end would wait for the unmount.)
            let mut msg = String::new();
            std::io::BufReader::new(std::fs::File::from(rd)).read_line(&mut msg)?;
            if msg.starts_with("ok\n") {
                if !cli.quiet {
                    let at =
                        std::fs::canonicalize(&args.mountpoint).unwrap_or(args.mountpoint.clone());
                    println!(
                        "mounted on {} (read-only); `coffre umount {0}` ends it",
                        at.display()
                    );
                }
                Ok(ExitCode::SUCCESS)
            } else if msg.is_empty() {
                bail!("the mount process died before the mount was ready")
            } else {
                bail!("{}", msg.trim_end())
            }
        }
    }
}

fn detach_stdio() {
    // SAFETY: reopening the standard fds on /dev/null; errors leave them as they were.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
}
