//! The words of the manual that clap's definitions do not hold: each command's longer
//! description, its examples, and the sections of the two top pages (exit status, retention,
//! safety, files...).
//!
//! `document` adds the descriptions to a `clap::Command`, so `--help` and the generated man
//! pages (`cli::generate`) show the same text; the man pages are never written by hand. A key
//! here names a command by its path (`"policy create"`); `tests/docs.rs` fails when a key names no
//! command.

use clap::Command;

/// Pages not named `coffre-<command path>`: `coffre restore`'s page would have the sidecar's name.
pub const PAGE_NAMES: &[(&str, &str)] = &[("restore", "coffre-restore-files")];

/// Longer descriptions, added after a command's own (first-line) description.
pub const DETAILS: &[(&str, &str)] = &[
    (
        "backup",
        "With --item NAME PATH, PATH is backed up as a new point of item NAME, which is registered \
on first use with PATH and the options; the definition (and a new item) is kept only if the backup \
succeeds. With NAME..., stored items are backed up again with their stored definitions: every \
item is backed up even when another fails, each failure is reported on its own line, and the exit \
status is the worst one (1 if an item failed, else 3, else 0); --exclude and -x are refused there \
(they redefine an item). --json prints one object per item: its point, or an `error` string.\n\n\
On a terminal each item gets its own progress line (files, bytes, rate); -q hides them. Ctrl-C \
stops the running backup before its commit: nothing of it is committed and the packs it wrote \
are deleted, so the vault is as it was; points of items backed up before it are kept (exit \
status 130). A second Ctrl-C ends the process at once.",
    ),
    (
        "backup-disk",
        "Images are cut into fixed 32 KiB blocks; holes and all-zero blocks cost nothing; later \
backups store only changed blocks, compressed in frames of the vault's image frame (32 KiB by \
default; see `coffre vault set image-frame`). Each image appears as <name>.img in the point. On a \
terminal a progress bar shows bytes read, the percentage and the time left.",
    ),
    (
        "backup-vm",
        "The post-script runs even when the pre-script or the capture failed; a failed pre-script \
makes no point. The point records its consistency: application (pre-script succeeded), file (no \
disk changed while read) or crash. The scripts are stored in the vault and run with sh -c as the \
calling user by later `coffre backup NAME`.",
    ),
    (
        "items",
        "Shows kind, protection state, number of points and source, and each VM item's stored pre- \
and post-script.",
    ),
    (
        "points",
        "Shows id, item, UTC time, file count, logical size, new bytes stored, and when each point \
expires under its item's current policy, with the reason (--json: `expires` in nanoseconds or \
null for never, `roles`, `reason`, `keep_until`). With --deleted: when and by what each point was \
deleted, and its purge time.",
    ),
    (
        "restore",
        "Restores the whole point into DIR, or each PATH inside it under its own path, DIR/PATH. \
POINT is a point id or unique prefix, the point's directory name in the mount \
(2026-11-23T140005Z, or 2026-11-23T140005Z-ID for a later point of the same second), the time \
`coffre points` prints, or `latest` (the default); a spec matching several points is refused with \
`ambiguous:` and the candidates. Each entry is made under a temporary name beside its final one \
and renamed over what was there only when complete, so an entry the vault cannot supply leaves \
the existing one as it was (each such path is listed, exit status 1). Restored entries get \
exactly the captured permissions; symlinks inside DIR are never followed. On a terminal a \
progress bar shows the bytes restored out of the total, the percentage and the time left. Ctrl-C \
ends a restore at once: entries it was replacing are as they were, a new file may be partly \
written, and the same command completes it.",
    ),
    (
        "mount",
        "Layout: items/ITEM/POINT/ (UTC time names), items/ITEM/latest and ids/ID symlinks, and \
soft-deleted points under deleted/ITEM/POINT/ until they are purged. Files carry their captured \
owners, modes, times, xattrs, ACLs, hard links and holes; writes fail with EROFS; damaged data \
reads as EIO. In the foreground the mount says on standard error where it serves and how to stop \
it (-q: nothing), and runs until Ctrl-C, SIGTERM or unmount (a busy mount is detached lazily). \
New points appear within about a second. `df` on the mount shows as its size the logical size of \
all live points (what restoring them all would write) and as used the bytes the vault stores for \
them, in 4 KiB blocks; the difference is what deduplication and compression save, shown as free \
by `stat -f` (available is 0: the mount is read-only). `stat -f` counts the live points as files.",
    ),
    (
        "umount",
        "Anything else (a file system of another type, a directory that is not a mount point) is \
refused. coffre mounts have type fuse.coffre in /proc/mounts (`findmnt -t fuse.coffre` lists \
them).",
    ),
    (
        "policy create",
        "A schedule is \"daily HH:MM\" or \"weekly DAY[,DAY...] HH:MM\" (DAY mon...sun). At least \
one --keep-* rule with N of 1 or more. Times are read in the policy's zone; a point expires at the \
latest of its roles' expiries, or one day after it was taken when it holds none; the newest point \
of an item, and the points of a stopped item, never expire.",
    ),
    (
        "policy rm",
        "Refused while an item follows the policy, and for `default`.",
    ),
    (
        "prune",
        "Evaluates every live point with its item's current policy: keep it, or expire it \
(soft-delete); purges the soft-deleted points whose soft-delete period is over. Prints each \
point with its fate and the reason, e.g. `weekly (sun) until 2027-03-07`.",
    ),
    (
        "undelete",
        "The point is kept at least until --keep-until (default: 14 days from now, so the next \
prune does not take it again).",
    ),
    (
        "purge",
        "Their catalog rows go and their data becomes garbage for a later garbage collection.",
    ),
    (
        "vault rebuild-index",
        "Packs moved to packs/orphaned/ by a recovery (after a lost or older vault.db) are moved \
back and their self-describing records registered. Points whose catalog rows were lost are not \
rebuilt (their trees lived in the catalog).",
    ),
];

/// Longer descriptions of the sidecar's commands.
pub const SIDECAR_DETAILS: &[(&str, &str)] = &[
    (
        "disk",
        "Every block is checked against its BLAKE3 id before it is written. Nothing at a target \
changes until the whole image is known to be available: a file is written beside the target and \
renamed over it at the end; a block device is read through (every chunk verified) before it is \
written. An existing target is refused without --force; a target that is mounted, backs a loop \
device, has a mounted partition, is an active swap area or is held by dm/md is always refused, \
by --dry-run too. A symbolic link as target is refused unless it names a block device. --to the \
item's own image is an in-place restore. On a terminal a progress bar shows the bytes written, \
the percentage and the time left (-q hides it). Ctrl-C ends a restore at once: a file target is \
replaced only when complete, a device may be partly written; the same command completes it.",
    ),
    (
        "vm",
        "Writes DIR/<config> and DIR/disks/<disk>.img, or everything back in place, with the same \
checks as `disk`. An in-place restore sets the item to needs-reprotect before it writes: backups \
skip it until `coffre-restore reprotect` checks that its disks match the restored point. \
--protect-as NEW registers the copy restored with --to as a new VM item; NEW must be a valid item \
name not taken yet, which is checked before anything is written.",
    ),
];

/// Examples, one `(command, what it does)` per line of the EXAMPLES section.
pub const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "",
        &[
            (
                "coffre backup --item home /home/me --exclude '*.tmp'",
                "Back up a directory as item home (the first backup creates the vault).",
            ),
            ("coffre points home", "List the points of home."),
            (
                "coffre mount /mnt/coffre",
                "Browse every point; Ctrl-C ends the mount.",
            ),
            (
                "coffre restore home@latest docs --to /tmp/back",
                "Restore one directory of the newest point.",
            ),
        ],
    ),
    (
        "init",
        &[
            (
                "coffre --vault /srv/vault init --zstd-level 6",
                "Create a vault with stronger compression.",
            ),
            (
                "coffre --vault /srv/images init --image-frame 1M",
                "Create a vault that stores disk images 12-20 % smaller (slower first random reads).",
            ),
        ],
    ),
    (
        "backup",
        &[
            (
                "coffre backup --item home /home/me --exclude '.cache' -x",
                "Back up /home/me as item home, without caches and other file systems.",
            ),
            (
                "coffre backup home photos",
                "Back up two stored items again.",
            ),
            ("coffre backup --due", "What the systemd timer runs."),
        ],
    ),
    (
        "backup-disk",
        &[(
            "coffre backup-disk --item db /var/lib/db/disk.raw /dev/vg0/data",
            "Back up an image file and a logical volume as one point.",
        )],
    ),
    (
        "backup-vm",
        &[(
            "coffre backup-vm --item vm1 --config /etc/vms/vm1.conf --disk /var/lib/vm1/root.img --pre-script 'virsh domfsfreeze vm1' --post-script 'virsh domfsthaw vm1'",
            "Back up a VM with its file systems frozen during the capture.",
        )],
    ),
    ("items", &[("coffre items --json", "The items as JSON.")]),
    (
        "points",
        &[
            ("coffre points home", "The points of item home."),
            (
                "coffre points --deleted",
                "Soft-deleted points and their purge time.",
            ),
        ],
    ),
    (
        "stats",
        &[("coffre stats", "Logical and stored sizes of the vault.")],
    ),
    (
        "restore",
        &[
            (
                "coffre restore home --to /tmp/back",
                "The whole newest point.",
            ),
            (
                "coffre restore home@3fa2c1d0 docs/a.txt --to /tmp/back",
                "One file of an older point, as /tmp/back/docs/a.txt.",
            ),
        ],
    ),
    (
        "mount",
        &[
            ("coffre mount /mnt/coffre", "Serve until Ctrl-C."),
            (
                "coffre mount --daemon /mnt/coffre && cp -a /mnt/coffre/items/home/latest/docs ~/",
                "Mount in the background and copy out of it; `coffre umount /mnt/coffre` ends it.",
            ),
        ],
    ),
    (
        "stop-protection",
        &[(
            "coffre stop-protection old-laptop",
            "No more backups; the points are kept.",
        )],
    ),
    (
        "resume-protection",
        &[(
            "coffre resume-protection old-laptop",
            "Back up the item again.",
        )],
    ),
    ("umount", &[("coffre umount /mnt/coffre", "End a mount.")]),
    (
        "policy create",
        &[(
            "coffre policy create home --schedule 'daily 02:00' --keep-daily 7 --keep-weekly 4 --keep-monthly 12",
            "Daily backups; keep 7 dailies, 4 weeklies and 12 monthlies (like restic's --keep-*).",
        )],
    ),
    (
        "policy assign",
        &[(
            "coffre policy assign home docs photos",
            "Two items follow policy home.",
        )],
    ),
    (
        "prune",
        &[("coffre prune --dry-run", "Show what a prune would do.")],
    ),
    (
        "forget",
        &[("coffre forget home@3fa2c1d0", "Soft-delete one point.")],
    ),
    (
        "undelete",
        &[("coffre undelete home@3fa2c1d0", "Bring it back.")],
    ),
    (
        "purge",
        &[(
            "coffre purge home@3fa2c1d0",
            "Purge a soft-deleted point now.",
        )],
    ),
    ("schedule", &[("coffre schedule", "Which items are due.")]),
    (
        "vault set",
        &[
            (
                "coffre vault set soft-delete-days 30",
                "Keep deleted points recoverable for 30 days.",
            ),
            (
                "coffre vault set image-frame 1M",
                "Compress new disk-image blocks in 1 MiB frames from the next backup on.",
            ),
        ],
    ),
    (
        "ls",
        &[(
            "coffre ls -l home@latest docs",
            "List docs/ of the newest point, like ls -l (restic ls).",
        )],
    ),
    (
        "find",
        &[(
            "coffre find '*.pdf' home",
            "Every PDF in every point of home, newest point first.",
        )],
    ),
    (
        "diff",
        &[(
            "coffre diff home@3fa2c1d0 @latest",
            "What changed since an older point (restic diff).",
        )],
    ),
    (
        "dump",
        &[
            (
                "coffre dump home docs/a.txt > a.txt",
                "One file of the newest point.",
            ),
            (
                "coffre dump home@latest / | tar -tv",
                "A whole point as a tar stream.",
            ),
        ],
    ),
    (
        "item rm",
        &[(
            "coffre item rm old-laptop --forget-points",
            "Remove an item and soft-delete its points.",
        )],
    ),
    (
        "verify",
        &[(
            "coffre verify --max-duration 1h",
            "Read back the packs verified longest ago for an hour; the next run continues.",
        )],
    ),
    (
        "check",
        &[(
            "coffre check",
            "Check the catalog in seconds (no data is read).",
        )],
    ),
    (
        "gc",
        &[(
            "coffre gc --dry-run",
            "Show what a garbage collection would reclaim.",
        )],
    ),
    (
        "replicate",
        &[(
            "coffre replicate --to /mnt/backup-disk/coffre",
            "Bring a replica on another disk up to date (created on first use).",
        )],
    ),
    (
        "repair",
        &[(
            "coffre repair --from /mnt/backup-disk/coffre",
            "Fetch the chunks `coffre verify` found damaged back from the replica.",
        )],
    ),
];

/// Examples of the sidecar.
pub const SIDECAR_EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "",
        &[(
            "coffre-restore disk db --to /tmp/disk.raw",
            "Restore the newest image of disk item db to a file.",
        )],
    ),
    (
        "disk",
        &[
            (
                "coffre-restore disk db@3fa2c1d0 --to /dev/vg0/data",
                "Restore an older point to a device.",
            ),
            (
                "coffre-restore disk db --in-place --dry-run",
                "Show what an in-place restore would write.",
            ),
        ],
    ),
    (
        "vm",
        &[(
            "coffre-restore vm vm1 --to /srv/vm1-copy --protect-as vm1-copy",
            "Restore a VM beside the original and protect the copy.",
        )],
    ),
    (
        "reprotect",
        &[(
            "coffre-restore reprotect vm1",
            "Back up vm1 again after an in-place restore.",
        )],
    ),
];

/// EXIT STATUS of every `coffre` page.
pub const EXIT_STATUS: &str = "0 success; 1 error (for `backup --due` and `backup NAME...`: some \
item failed); 2 usage error (a bad option or argument); 3 the backup finished but some entries \
could not be read (they are listed on standard error; the point holds everything else); 130 \
interrupted by Ctrl-C or SIGTERM (nothing of the running backup was committed).";

/// EXIT STATUS of every `coffre-restore` page.
pub const SIDECAR_EXIT_STATUS: &str =
    "0 success; 1 error; 2 usage error (a bad option or argument).";

/// Sections of coffre(1) after its commands, in roff.
pub const TOP_SECTIONS: &str = r#".SH RETENTION
Times are read in the policy's time zone. \fB\-\-keep\-daily\fR \fIN\fR: the newest point of
each calendar day is kept \fIN\fR days from its time. \fB\-\-keep\-weekly\fR \fIN\fB@\fIDAY\fR
(default sun): the newest point of each week ending on \fIDAY\fR is kept \fIN\fR weeks.
\fB\-\-keep\-monthly\fR \fIN\fB@\fIDOM\fR (default 1): the newest point of each month-period
ending on day \fIDOM\fR (or the month's last day) is kept \fIN\fR months.
\fB\-\-keep\-yearly\fR \fIN\fB@\fIMON\-DOM\fR (default jan\-1): the newest point of each
year-period ending on that date is kept \fIN\fR years. A point expires at the latest of its
roles' expiries, or one day after it was taken when it holds none; \fBbackup \-\-keep\-until\fR
extends that. The newest point of an item, and the points of a stopped item, never expire.
Expiries are always computed from the current policy, so changes are retroactive.
.SH IMMUTABILITY
With \fBvault set immutability on\fR, anything that would make an existing point end earlier is
refused: forget of a point its policy still keeps, purge before the soft-delete period is over, a
policy change or assignment that shortens any point's expiry, a lower \fBsoft\-delete\-days\fR,
\fBstop\-protection \-\-delete\-data\fR, a \fBbackup \-\-time\fR before the item's newest
point. \fBlocked\fR is \fBon\fR and can never be turned off.
.SH SAFETY
A vault is trusted code: the pre- and post-scripts of VM items are stored in \fIvault.db\fR, and
\fBcoffre backup\fR \fINAME\fR runs them with \fBsh \-c\fR as the calling user (usually root).
Whoever can write the vault can run commands as that user; whoever can read it can read
everything backed up, which is why a vault is private to its owner (see \fBFILES\fR). Keep vaults
writable by their owner only, do not run \fBbackup\fR \fINAME\fR on a vault from elsewhere, and
check \fBcoffre items\fR, which shows every stored script.
.SH THREADS
\fB\-\-threads\fR \fIN\fR (\fBbackup\fR, \fBbackup\-disk\fR, \fBbackup\-vm\fR,
\fBrestore\fR, \fBmount\fR) takes 0 (the default: one per core, two for the mount) up to 256;
anything else is a usage error. When the system refuses threads (\fBulimit \-u\fR, a cgroup's
\fBpids.max\fR) a backup or restore runs with fewer workers and says so; if a thread it cannot do
without is refused, it fails with one error line.
.SH ITEM NAMES
An item name is 1 to 200 ASCII letters, digits, \fB\-\fR, \fB_\fR and \fB.\fR, and does not
start with \fB.\fR: it becomes a directory of every mount. Commands that create an item refuse
any other name with a usage error (exit status 2).
.SH ENVIRONMENT
.TP
.B COFFRE_VAULT
The vault directory when \fB\-\-vault\fR is not given. Otherwise
\fI$XDG_DATA_HOME/coffre/vault\fR, else \fI~/.local/share/coffre/vault\fR.
.SH FILES
The vault directory and \fIpacks/\fR are mode 0700 and every file in them 0600, whatever the
umask (\fBcoffre\fR runs with umask 077). A vault that other users can read or enter gets a
one-line warning saying how to fix it: \fBchmod \-R go\-rwx\fR \fIVAULT\fR.
.TP
.I VAULT/vault.db
The catalog (SQLite, WAL mode).
.TP
.I VAULT/packs/*.pack
Pack files of compressed chunk records.
.TP
.I VAULT/packs/orphaned/
Packs the catalog did not name when a writer took the lock, kept (see \fBvault rebuild\-index\fR).
.TP
.I VAULT/lock
The writer lock (advisory flock).
.TP
.I VAULT/leases/
One file per reader (mount, restore), so that a garbage collection never removes a pack it may
still read.
.TP
.I VAULT/damaged
Chunks and catalog blobs that readers found damaged; the next backup stores them again.
.TP
.I VAULT/commit\-seq
How many backups committed, to notice a catalog that lost its newest commits.
.TP
.I scripts/systemd/coffre\-backup.service\fR, \fIcoffre\-backup.timer
In the source tree: a systemd timer that runs \fBcoffre backup \-\-due\fR every 15 minutes
(exit status 3 counts as success); install them in \fI/etc/systemd/system/\fR and
\fBsystemctl enable \-\-now coffre\-backup.timer\fR.
"#;

/// Adds `details` (keyed by command path, "" for the top command) to `cmd` and its subcommands.
pub fn document(cmd: Command, details: &[(&str, &str)]) -> Command {
    document_at(cmd, "", details)
}

fn document_at(mut cmd: Command, path: &str, details: &[(&str, &str)]) -> Command {
    if let Some((_, more)) = details.iter().find(|(p, _)| *p == path) {
        let first = cmd
            .get_long_about()
            .or(cmd.get_about())
            .map(|s| s.to_string())
            .unwrap_or_default();
        cmd = cmd.long_about(format!("{first}\n\n{more}"));
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        let sub_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path} {name}")
        };
        cmd = cmd.mut_subcommand(&name, |s| document_at(s, &sub_path, details));
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of the tables names a command (a renamed or removed command fails here).
    #[test]
    fn keys_name_commands() {
        let check = |cmd: &Command, keys: Vec<&str>| {
            for key in keys {
                let mut c = cmd;
                for word in key.split_whitespace() {
                    c = c
                        .find_subcommand(word)
                        .unwrap_or_else(|| panic!("{key:?} names no command"));
                }
            }
        };
        let top = crate::cli::command();
        check(&top, DETAILS.iter().map(|d| d.0).collect());
        check(&top, EXAMPLES.iter().map(|d| d.0).collect());
        check(&top, PAGE_NAMES.iter().map(|d| d.0).collect());
        let side = crate::cli::sidecar::command();
        check(&side, SIDECAR_DETAILS.iter().map(|d| d.0).collect());
        check(&side, SIDECAR_EXAMPLES.iter().map(|d| d.0).collect());
    }

    /// Every example parses: its first command (up to a pipe, `&&` or a redirection), split as
    /// a shell would for these simple lines (single quotes group words).
    #[test]
    fn examples_parse() {
        let words = |line: &str| -> Vec<String> {
            let mut out = Vec::new();
            for (i, part) in line.split('\'').enumerate() {
                match i % 2 {
                    0 => out.extend(part.split_whitespace().map(str::to_string)),
                    _ => out.push(part.to_string()),
                }
            }
            let end = out
                .iter()
                .position(|w| ["|", "&&", ">", "<"].contains(&w.as_str()))
                .unwrap_or(out.len());
            out.truncate(end);
            out
        };
        let books = [
            (crate::cli::command(), EXAMPLES),
            (crate::cli::sidecar::command(), SIDECAR_EXAMPLES),
        ];
        for (cmd, examples) in books {
            for (_, lines) in examples {
                for (line, _) in *lines {
                    let args = words(line);
                    if let Err(e) = cmd.clone().try_get_matches_from(&args) {
                        panic!("example {line:?} does not parse: {e}");
                    }
                }
            }
        }
    }
}
