//! Command-line definition (clap). `--help` of every command is the manual.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Sync files between your devices through a relay that sees only ciphertext.
#[derive(Debug, Parser)]
#[command(name = "sync-cli", version, about, propagate_version = true)]
pub struct Args {
    /// Device home: keys, group and sync state [default: <config dir>/0k-sync]
    #[arg(long, global = true, env = "SYNC_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print machine-readable JSON on stdout (one object per line for streams)
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors (and the invite, for init/invite)
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More log output on stderr (-v, -vv)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new group on a relay and print an invite for other devices
    ///
    /// Give --relay once per relay of the group, first preferred: the
    /// relays must be instances of one relay cluster (sharing one
    /// database). Devices use one at a time and fail over to the next
    /// when it is unreachable; invites carry them all.
    Init {
        /// A relay, as NODE_ID@HOST:PORT (printed by the relay at start);
        /// repeat for each instance of the relay cluster (at most 8), first preferred
        #[arg(long, required = true, value_name = "NODE_ID@HOST:PORT")]
        relay: Vec<String>,
        /// A name for the group, shown to devices that join
        #[arg(long)]
        name: Option<String>,
        /// How long the printed invite can be used to join (e.g. 30m, 24h, 7d)
        #[arg(long, default_value = "24h", value_name = "DURATION")]
        expires: String,
        /// Also print the invite as a QR code (default: when on a terminal)
        #[arg(long)]
        qr: bool,
        /// Access token from the relay's operator (0ksync-token-…): the group
        /// is created on the relay right away, and the token is not stored.
        /// Needed on relays that create groups only with a token; devices
        /// that join need none
        #[arg(long, env = "SYNC_TOKEN", hide_env_values = true, value_name = "TOKEN")]
        token: Option<String>,
        /// This device's name in the group's roster (1-32 bytes) [default: the host name]
        #[arg(long, value_name = "NAME")]
        device_name: Option<String>,
    },
    /// Print a new one-time invite for this device's group, or manage them
    ///
    /// An invite admits one device: it holds no key of the group, only a
    /// one-time enrolment secret. The new device runs `join` and waits;
    /// this device adds it at its next `pull` (or `pull --follow` round, or
    /// `invite --answer`), then the invite is used up. `--list` shows the
    /// invites made here, `--cancel ID` cancels one.
    Invite {
        /// How long the invite can be used to join (e.g. 30m, 24h, 7d)
        #[arg(
            long,
            visible_alias = "ttl",
            default_value = "24h",
            value_name = "DURATION"
        )]
        expires: String,
        /// Also print the invite as a QR code (default: when on a terminal)
        #[arg(long)]
        qr: bool,
        /// Access token from the relay's operator: each invite's mailbox is
        /// a group at the relay, which a relay in token mode creates only
        /// with a token. Not stored.
        #[arg(long, env = "SYNC_TOKEN", hide_env_values = true, value_name = "TOKEN")]
        token: Option<String>,
        /// List the invites made on this device (id, created, expires, state)
        #[arg(long, conflicts_with_all = ["cancel", "qr", "token"])]
        list: bool,
        /// Cancel the pending invite ID (or a prefix of at least 4 characters)
        #[arg(long, value_name = "ID", conflicts_with_all = ["qr", "token"])]
        cancel: Option<String>,
        /// Answer the devices waiting to join with invites made here (what
        /// every `pull` also does), without pulling files
        #[arg(long, conflicts_with_all = ["list", "cancel", "qr", "token"])]
        answer: bool,
    },
    /// Join a group with a one-time invite from one of its devices
    ///
    /// The device asks to be added and waits (up to --timeout) until the
    /// device that made the invite runs `sync-cli pull`. Prefer `-` (read the
    /// invite from standard input) or --file over pasting it on the command
    /// line, where other users can see it (`ps`) and the shell keeps it.
    Join {
        /// The invite (starts with 0ksync2-), or `-` to read it from standard input
        #[arg(required_unless_present = "file", value_name = "INVITE")]
        invite: Option<String>,
        /// Read the invite from this file
        #[arg(long, value_name = "PATH", conflicts_with = "invite")]
        file: Option<PathBuf>,
        /// This device's name in the group's roster (1-32 bytes) [default: the host name]
        #[arg(long, value_name = "NAME")]
        device_name: Option<String>,
        /// How long to wait for a member's answer (e.g. 90s, 10m)
        #[arg(long, default_value = "10m", value_name = "DURATION")]
        timeout: String,
    },
    /// Encrypt and push files, directory trees (or stdin with `-`) to the group
    ///
    /// A directory is pushed with every regular file under it, each as
    /// DIRNAME/relative/path, which `pull` recreates under --out; symbolic
    /// links and special files inside it are skipped (and listed), empty
    /// directories are not sent. An interrupted push of a file resumes
    /// where it stopped when run again; a file unchanged since its last
    /// push is skipped.
    Push {
        /// Files or directories to push; `-` reads standard input (needs --name)
        #[arg(required = true, value_name = "FILE|DIR")]
        files: Vec<PathBuf>,
        /// Name under which stdin, the one file or the one directory is
        /// pushed (a relative path: `/`-separated, no `..`)
        #[arg(long)]
        name: Option<String>,
        /// How long the relay keeps the data (e.g. 12h, 7d) [default: the relay's]
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Push files again even if unchanged since their last push
        #[arg(long)]
        force: bool,
        /// Give up when the relay stays unreachable this long (e.g. 30s, 5m)
        #[arg(long, default_value = "30s", value_name = "DURATION")]
        retry_for: String,
        /// Abandon and retry a transfer that makes no progress for this long
        #[arg(long, default_value = "15s", value_name = "DURATION")]
        stall_timeout: String,
    },
    /// Pull and decrypt what other devices pushed, writing files into --out
    Pull {
        /// Directory for received files (created if missing)
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
        /// Stay connected and pull whenever the relay announces new data
        /// (rides through relay restarts and network drops; Ctrl-C stops)
        #[arg(long)]
        follow: bool,
        /// Give up when the relay stays unreachable this long [default: 30s, or never with --follow]
        #[arg(long, value_name = "DURATION")]
        retry_for: Option<String>,
        /// Abandon and retry a transfer that makes no progress for this long
        #[arg(long, default_value = "15s", value_name = "DURATION")]
        stall_timeout: String,
    },
    /// Show this device, its group, the sync state and the relay's reachability
    Status {
        /// Report the relay unreachable after trying this long (e.g. 5s)
        #[arg(long, default_value = "30s", value_name = "DURATION")]
        retry_for: String,
        /// Show the folder synced there by `sync DIR` instead: changes not pushed, not applied, conflict copies (no relay contact)
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Keep a directory the same on every device of the group (one run, or --watch)
    ///
    /// Pulls the group's changes and applies them to DIR, then pushes the
    /// changes made in DIR since the last run: new and changed files
    /// (unchanged files send nothing), deletions, renames
    /// (no content re-sent), directories, the executable bit. Symbolic
    /// links are neither followed nor synced (listed); `.0k-syncignore` at
    /// the root (gitignore syntax) keeps paths on this device. A file
    /// changed on two devices keeps both versions (a conflict copy); a
    /// delete never removes a file whose content the deleting device had
    /// not seen. A home syncs one folder. With --watch, keeps running:
    /// a run within a second of a local change (file-system events,
    /// debounced), at every change another device pushes (the relay's
    /// notifications), and a full rescan every --rescan-every; Ctrl-C or
    /// SIGTERM stops it. See docs/client.md "Folder sync".
    Sync {
        /// The folder (created if missing)
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Keep running: sync again on every local or remote change, until Ctrl-C or SIGTERM
        #[arg(long)]
        watch: bool,
        /// With --watch: rescan the whole folder this often even with no change seen (e.g. 60s, 10m)
        #[arg(
            long,
            default_value = "60s",
            value_name = "DURATION",
            requires = "watch"
        )]
        rescan_every: String,
        /// How long the relay keeps the data (e.g. 12h, 7d) [default: the relay's]
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Give up when the relay stays unreachable this long (e.g. 30s, 5m)
        #[arg(long, default_value = "30s", value_name = "DURATION")]
        retry_for: String,
        /// Abandon and retry a transfer that makes no progress for this long
        #[arg(long, default_value = "15s", value_name = "DURATION")]
        stall_timeout: String,
    },
    /// List the group's devices: name, id, who added it and when, last seen, epoch
    ///
    /// From the roster this device holds (signed entries that travel
    /// encrypted in the group); run `pull` first for the newest. Marks this
    /// device, devices removed, devices that must be rotated out, devices
    /// dropped by a concurrent rotation, and roster entries ignored (forged,
    /// by removed devices…) with the reason.
    Devices,
    /// Remove a device from the group: rotate the group's key without it
    ///
    /// DEVICE is a name or a unique prefix of its id (see `devices`). A
    /// fresh key (the next epoch) is wrapped to every remaining device and
    /// published; remaining devices move to it at their next pull, and
    /// nothing pushed from now on is readable by the removed device. What
    /// it already pulled stays with it. Run `pull` first.
    Revoke {
        /// The device: its name or a unique prefix of its id
        device: String,
        /// Give up when the relay stays unreachable this long (e.g. 30s, 5m)
        #[arg(long, default_value = "30s", value_name = "DURATION")]
        retry_for: String,
    },
    /// Print a shell completion script (e.g. `sync-cli completions bash > /etc/bash_completion.d/sync-cli`)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}
