//! The roster and invite lines of `pull --json` (and `invite --answer
//! --json`): one typed enum, so the `--json` schema is snapshotted
//! (`commands::tests`) like the file events of [`sync_client::PullEvent`].
//! Without `--json` each prints its `message` on stderr (docs/client.md
//! "Devices and invites").

use crate::output::{Out, json_line};

/// One line about the roster, key epochs or a pending invite. Every variant
/// carries `message`, the sentence printed without `--json`.
#[derive(serde::Serialize, schemars::JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Notice {
    /// Moved to a later key epoch (`rekey`: this device re-keyed the group
    /// after concurrent revocations).
    Epoch {
        /// The epoch reached.
        epoch: u64,
        /// True when this device made the epoch by re-keying.
        rekey: bool,
        /// Human sentence.
        message: String,
    },
    /// This device was removed from the group.
    Removed {
        /// Why (who removed it, in which epoch).
        reason: String,
        /// Human sentence.
        message: String,
    },
    /// Roster entries or an enrolment request refused (bad signature,
    /// damaged bytes), or the roster could not be saved.
    RosterRefused {
        /// The invite whose mailbox held the request, if it came through one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The sending device's node id (hex), when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
        /// Why, when the refusal has a reason of its own.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Human sentence.
        message: String,
    },
    /// A roster entry the fold ignored (signed by a non-member, by a removed
    /// device, …).
    RosterIgnored {
        /// The entry's id (hex).
        id: String,
        /// The entry's kind (`add`, `remove`, `rotate`, …).
        kind: String,
        /// Why it was ignored.
        reason: String,
        /// Human sentence.
        message: String,
    },
    /// Roster entries for a closed earlier epoch's group left the outbox
    /// undelivered.
    RosterUndelivered {
        /// That group's key epoch (absent for the founding epoch of an
        /// old home).
        epoch: Option<u64>,
        /// That group's id (hex).
        group: String,
        /// How many entries.
        entries: usize,
        /// Human sentence.
        message: String,
    },
    /// An earlier epoch's group is closed to this device: skipped.
    GroupClosed {
        /// Its key epoch.
        epoch: Option<u64>,
        /// Its group id (hex).
        group: String,
        /// Human sentence.
        message: String,
    },
    /// A device used an invite and was added to the roster.
    InviteUsed {
        /// The invite's id.
        id: String,
        /// The added device's node id (hex).
        device: String,
        /// The name it asked for.
        name: String,
        /// Human sentence.
        message: String,
    },
    /// An invite expired: unused (no `device`), or its request came too late
    /// (that device was not added).
    InviteExpired {
        /// The invite's id.
        id: String,
        /// The late device's node id (hex), if one asked.
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// The name it asked for, if one asked.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Human sentence.
        message: String,
    },
    /// An invite's mailbox was closed by another holder of the invite.
    InviteClosed {
        /// The invite's id.
        id: String,
        /// Human sentence.
        message: String,
    },
    /// An invite could not be answered or closed now (retried later).
    InviteError {
        /// The invite's id.
        id: String,
        /// Human sentence with the cause.
        message: String,
    },
}

impl Notice {
    /// The human sentence.
    pub fn message(&self) -> &str {
        match self {
            Notice::Epoch { message, .. }
            | Notice::Removed { message, .. }
            | Notice::RosterRefused { message, .. }
            | Notice::RosterIgnored { message, .. }
            | Notice::RosterUndelivered { message, .. }
            | Notice::GroupClosed { message, .. }
            | Notice::InviteUsed { message, .. }
            | Notice::InviteExpired { message, .. }
            | Notice::InviteClosed { message, .. }
            | Notice::InviteError { message, .. } => message,
        }
    }

    /// Print as a warning: a JSON line with `--json`, else `warning: …` on
    /// stderr unless `--quiet`.
    pub fn warn(self, out: Out) {
        if out.json {
            json_line(&self);
        } else if !out.quiet {
            eprintln!("warning: {}", self.message());
        }
    }

    /// Print as information: a JSON line with `--json`, else the sentence on
    /// stderr in human mode.
    pub fn note(self, out: Out) {
        if out.json {
            json_line(&self);
        } else if out.human() {
            eprintln!("{}", self.message());
        }
    }
}
