//! `devices [--json]`: the group's roster as this device holds it
//! (docs/security.md "Devices, roster and key epochs"; docs/client.md
//! "Devices").

use crate::output::{Out, json_line, short};
use anyhow::Result;
use serde::Serialize;
use sync_client::Home;
use sync_client::roster::{LocalRoster, RosterState};
use sync_client::util::now_ms;
use sync_protocol::DeviceId;

/// One device of `devices --json`.
#[derive(Serialize)]
pub struct DeviceOut {
    /// Its name.
    pub name: String,
    /// Its node id (hex).
    pub id: String,
    /// This device.
    pub me: bool,
    /// Who added it (node id, hex); `null` for the founder.
    pub added_by: Option<String>,
    /// The adder's name, if known.
    pub added_by_name: Option<String>,
    /// When, Unix ms, as the adder claimed.
    pub added_at_ms: u64,
    /// The epoch it was added in.
    pub added_in_epoch: u64,
    /// The highest sequence number of its blobs this device received
    /// (`null`: none): the newest thing known of it here.
    pub last_seen_seq: Option<u64>,
    /// The cursor of that blob in its group.
    pub last_seen_cursor: Option<u64>,
}

/// A removed device.
#[derive(Serialize)]
pub struct RemovedOut {
    /// Its last name.
    pub name: String,
    /// Its node id (hex).
    pub id: String,
    /// Who removed it (node id, hex).
    pub by: String,
    /// The epoch its removal closed.
    pub epoch: u64,
}

/// An entry the fold did not apply.
#[derive(Serialize)]
pub struct IgnoredOut {
    /// Entry id (hex).
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Why.
    pub reason: String,
}

/// `devices --json`.
#[derive(Serialize)]
pub struct DevicesOut {
    /// The roster id (hex).
    pub roster: String,
    /// The roster's current key epoch.
    pub epoch: u64,
    /// The epoch this device has reached (pushes go there).
    pub my_epoch: Option<u64>,
    /// The current epoch's group id (hex).
    pub group_id: String,
    /// Members of the current epoch.
    pub members: Vec<DeviceOut>,
    /// Devices removed.
    pub removed: Vec<RemovedOut>,
    /// Removed devices still holding the current key: a re-key is due and
    /// nothing is pushed until then.
    pub must_rotate: Vec<String>,
    /// Devices a concurrent rotation left out: their adder adds them again.
    pub dropped: Vec<String>,
    /// Entries ignored, with the reason.
    pub ignored: Vec<IgnoredOut>,
    /// Enrolment requests waiting for this device to publish an `Add`.
    pub pending: Vec<String>,
}

fn name_of(state: &RosterState, d: &DeviceId) -> Option<String> {
    state
        .members
        .get(d)
        .map(|m| m.name.clone())
        .or_else(|| state.removed.get(d).map(|r| r.name.clone()))
}

pub fn devices(home: &Home, out: Out) -> Result<()> {
    let mut roster = LocalRoster::open(home)?;
    // A group from before rosters gets one now (published by the next pull).
    if roster.settle(now_ms())?.is_none() {
        let name = roster.device_name();
        if roster.ensure_genesis(&name, now_ms())? && out.human() {
            eprintln!(
                "this group had no roster: this device founded one; the next `sync-cli pull` publishes it"
            );
        }
    }
    let settled = roster.settle(now_ms())?;
    roster.save()?;
    let Some(settled) = settled else {
        anyhow::bail!("no roster is known yet: run `sync-cli pull` first");
    };
    let st = &settled.state;
    let me = roster.me();
    let senders = home.state()?.state.senders;
    let members = st
        .members
        .iter()
        .map(|(id, m)| {
            let track = senders.get(&id.to_string());
            let seq = track.map(|t| t.highest()).filter(|s| *s > 0);
            DeviceOut {
                name: m.name.clone(),
                id: id.to_string(),
                me: *id == me,
                added_by: m.added_by.map(|d| d.to_string()),
                added_by_name: m.added_by.and_then(|d| name_of(st, &d)),
                added_at_ms: m.added_at_ms,
                added_in_epoch: m.added_in_epoch,
                last_seen_seq: seq,
                last_seen_cursor: track.map(|t| t.last_cursor).filter(|c| *c > 0),
            }
        })
        .collect();
    let report = DevicesOut {
        roster: st.roster.to_string(),
        epoch: st.epoch,
        my_epoch: roster.chain.current().epoch,
        group_id: st.group_id.to_string(),
        members,
        removed: st
            .removed
            .iter()
            .map(|(id, r)| RemovedOut {
                name: r.name.clone(),
                id: id.to_string(),
                by: r.by.to_string(),
                epoch: r.epoch,
            })
            .collect(),
        must_rotate: st.must_rotate.iter().map(|d| d.to_string()).collect(),
        dropped: st.dropped.iter().map(|d| d.to_string()).collect(),
        ignored: st
            .ignored
            .iter()
            .map(|i| IgnoredOut {
                id: i.id.to_string(),
                kind: i.kind.to_string(),
                reason: i.reason.to_string(),
            })
            .collect(),
        pending: roster
            .chain
            .pending
            .iter()
            .map(|p| p.device.clone())
            .collect(),
    };
    if out.json {
        json_line(&report);
        return Ok(());
    }
    println!(
        "roster {} at key epoch {}{}",
        short(&report.roster),
        report.epoch,
        match report.my_epoch {
            Some(e) if e == report.epoch => String::new(),
            Some(e) => format!(" (this device is at epoch {e}: run `sync-cli pull`)"),
            None => " (this device has not placed its key yet: run `sync-cli pull`)".into(),
        }
    );
    for d in &report.members {
        let added = match (&d.added_by_name, &d.added_by) {
            (_, None) => "founder".to_string(),
            (Some(n), Some(id)) => format!("added by {n} ({})", short(id)),
            (None, Some(id)) => format!("added by {}", short(id)),
        };
        let seen = match d.last_seen_seq {
            Some(s) => format!("last blob received here: #{s}"),
            None if d.me => "this device".to_string(),
            None => "no blob received here".to_string(),
        };
        println!(
            "{} {:<20} {}  {} at {} (epoch {}), {}",
            if d.me { "*" } else { " " },
            d.name,
            short(&d.id),
            added,
            sync_client::util::human_time_ms(d.added_at_ms),
            d.added_in_epoch,
            seen
        );
    }
    for r in &report.removed {
        println!(
            "  {:<20} {}  REMOVED by {} (epoch {})",
            r.name,
            short(&r.id),
            short(&r.by),
            r.epoch
        );
    }
    for d in &report.must_rotate {
        println!(
            "  must rotate: {} still holds the current key; the next pull re-keys the group",
            short(d)
        );
    }
    for d in &report.dropped {
        println!(
            "  dropped: {} was left out by a concurrent rotation; its adder adds it again",
            short(d)
        );
    }
    for i in &report.ignored {
        println!(
            "  ignored roster entry {} ({}): {}",
            short(&i.id),
            i.kind,
            i.reason
        );
    }
    for p in &report.pending {
        println!(
            "  enrolment request from {} waits; the next pull answers it",
            short(p)
        );
    }
    Ok(())
}
