//! Output: JSON on stdout for scripts, human lines otherwise; progress bars
//! on stderr for transfers that last over a second (only when stdout is a
//! terminal); errors with what happened and what to do.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use sync_client::session::REFUSED_BEFORE_HANDSHAKE;
use sync_client::{ClientError, ConnectOptions, Home, LinkState, RetryPolicy, SyncClient};
use sync_protocol::ErrorCode;

/// How to print.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// JSON on stdout.
    pub json: bool,
    /// Nothing but errors.
    pub quiet: bool,
}

impl Out {
    /// Human lines are printed.
    pub fn human(&self) -> bool {
        !self.json && !self.quiet
    }

    /// A progress bar that appears once a transfer has run for a second,
    /// only when stdout is a terminal and output is human.
    pub fn progress(&self, label: &str) -> Progress {
        Progress::new(label, self.human() && std::io::stdout().is_terminal())
    }
}

/// Print one JSON value on its own line.
pub fn json_line<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode JSON output: {e}"),
    }
}

/// A short node id for human output: the first 10 hex characters.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(10)]
}

/// Shows the client's retries on stderr while it lives (unless `--quiet`):
/// one status line per wait, "relay unreachable, retrying in 4 s
/// (attempt 3)" — on a terminal a single line updated in place, otherwise
/// one line each. Library log lines stay hidden (they need `-v`).
/// It also records in the home which relay the client uses, at connect
/// and after every failover, so the next command tries that one first.
pub struct RetryStatus {
    task: tokio::task::JoinHandle<()>,
    remember: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for RetryStatus {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(task) = &self.remember {
            task.abort();
        }
    }
}

/// Connect to the home's relays with `policy` (the one that worked last
/// first, failing over to the others: docs/client.md "Several relays"),
/// showing each retry (see [`RetryStatus`]). Keep the returned status alive
/// as long as the client: reconnects later on are shown the same way.
pub async fn connect(
    home: &Home,
    opts: &ConnectOptions,
    policy: RetryPolicy,
    out: Out,
) -> Result<(SyncClient, RetryStatus), ClientError> {
    let relays = home.relays()?;
    // The saved pull cursor: a relay whose head is below it is not of the
    // group's cluster (docs/client.md "Several relays").
    // Each key epoch is its own group with its own cursor.
    let floor = home.state()?.state.cursor_in(
        &opts.keys.group_id().to_string(),
        &home.secret()?.keys().group_id().to_string(),
    );
    let (link, changes) = tokio::sync::watch::channel(LinkState::Connected { generation: 1 });
    let mut status = RetryStatus {
        task: tokio::spawn(show_retries(changes, out)),
        remember: None,
    };
    let client = SyncClient::connect_failover(opts, relays, floor, policy, link).await?;
    fn remember(home: &Home, relay: &sync_client::RelayAddr) {
        if let Err(e) = home.remember_relay(relay) {
            tracing::warn!(error = %e, "cannot record the relay in use");
        }
    }
    let mut changes = client.relay_changes();
    let first = changes.borrow_and_update().clone();
    remember(home, &first);
    let home = home.clone();
    status.remember = Some(tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let relay = changes.borrow_and_update().clone();
            remember(&home, &relay);
        }
    }));
    Ok((client, status))
}

/// A link-state channel whose retries are shown as by [`connect`], for
/// clients made otherwise; the display lasts while the status lives.
pub fn retry_display(out: Out) -> (tokio::sync::watch::Sender<LinkState>, RetryStatus) {
    let (link, changes) = tokio::sync::watch::channel(LinkState::Connected { generation: 1 });
    let status = RetryStatus {
        task: tokio::spawn(show_retries(changes, out)),
        remember: None,
    };
    (link, status)
}

async fn show_retries(mut changes: tokio::sync::watch::Receiver<LinkState>, out: Out) {
    if out.quiet {
        return;
    }
    let terminal = std::io::stderr().is_terminal();
    let mut line: Option<ProgressBar> = None;
    while changes.changed().await.is_ok() {
        let state = changes.borrow_and_update().clone();
        match state {
            LinkState::Reconnecting {
                attempt,
                delay,
                unreachable,
                error,
            } => {
                let text = retry_line(attempt, delay, why(unreachable, &error));
                if !terminal {
                    eprintln!("{text}");
                    continue;
                }
                let bar = line.get_or_insert_with(|| {
                    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                bar.set_message(text);
            }
            LinkState::Connected { .. } => {
                if let Some(bar) = line.take() {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

/// What a retry waits for, in a few words: the relay refused the
/// connection before its handshake (too many connections, from this address
/// or awaiting admission: [`REFUSED_BEFORE_HANDSHAKE`]), it cannot be
/// reached, it answered that its database is away (STORAGE_UNAVAILABLE), or
/// it answered but is busy.
pub fn why(unreachable: bool, error: &str) -> &'static str {
    if error.contains(REFUSED_BEFORE_HANDSHAKE) {
        "relay refused the connection (too many connections from this address, or it is busy)"
    } else if !unreachable && error.contains(ErrorCode::StorageUnavailable.name()) {
        "relay's storage unavailable"
    } else if unreachable {
        "relay unreachable"
    } else {
        "relay busy"
    }
}

/// "relay unreachable, retrying in 4 s (attempt 3)"; `what` from [`why`].
pub fn retry_line(attempt: u32, delay: Duration, what: &str) -> String {
    let secs = delay.as_secs_f64();
    let wait = if secs >= 1.0 {
        format!("{secs:.0} s")
    } else {
        format!("{secs:.1} s")
    };
    format!("{what}, retrying in {wait} (attempt {attempt})")
}

/// A byte-count progress bar (see [`Out::progress`]).
pub struct Progress {
    bar: ProgressBar,
    enabled: bool,
    started: Instant,
    shown: bool,
}

impl Progress {
    fn new(label: &str, enabled: bool) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template(
            "{msg:20!} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(label.to_string());
        Progress {
            bar,
            enabled,
            started: Instant::now(),
            shown: false,
        }
    }

    /// Bytes done and, when known, the total.
    pub fn update(&mut self, done: u64, total: Option<u64>) {
        if let Some(t) = total {
            self.bar.set_length(t);
        }
        self.bar.set_position(done);
        if self.enabled && !self.shown && self.started.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The hint for STORAGE_UNAVAILABLE, alone or as the last error of a retry
/// that gave up.
const STORAGE_UNAVAILABLE_HINT: &str = "the relay is running but cannot reach its database: nothing was stored; run the command again later (or with a longer --retry-for), and tell the relay's operator if it lasts";

/// The hint for GROUP_CLOSED (docs/security.md "What the relay must do").
const GROUP_CLOSED_HINT: &str = "this device can no longer use this group: if it was removed, ask a member for a new invite; if the group moved to a new key epoch, the device moves with it on its next contact (no new invite needed)";

/// What the user can do about an error, if there is something to say.
pub fn hint(err: &anyhow::Error) -> Option<&'static str> {
    let client = err.chain().find_map(|e| e.downcast_ref::<ClientError>())?;
    Some(match client {
        ClientError::Relay(e) => match e.error_code() {
            ErrorCode::Unauthorized => {
                "this device's group secret is not accepted by the relay: check that the home belongs to the group (sync-cli status) or join again with a fresh invite"
            }
            ErrorCode::UnsupportedVersion => {
                "the relay speaks another protocol version: upgrade sync-cli or the relay"
            }
            ErrorCode::BlobTooLarge => {
                "the relay's size limit is smaller than expected: upgrade sync-cli"
            }
            ErrorCode::GroupQuotaExceeded => {
                "the group's storage at the relay is full: wait for old data to expire, or ask the relay operator for a larger quota"
            }
            ErrorCode::TtlTooLong => "ask for a shorter --ttl",
            ErrorCode::AccessTokenRequired => {
                "this relay creates groups only for devices with an access token: get one from the relay's operator (`sync-relay token create`) and create the group in a new home with `sync-cli init --relay ADDR --token TOKEN`; to use an existing group, join it with an invite instead"
            }
            ErrorCode::AccessTokenInvalid => {
                "the access token is unknown or was revoked: ask the relay's operator for a new one"
            }
            ErrorCode::OwnerQuotaExceeded => {
                "the storage budget of the token (or address) that created this group is used up: wait for old data to expire, or ask the relay operator for a larger budget"
            }
            ErrorCode::GroupLimitReached => {
                "the relay creates no more groups for this token or address now: ask its operator for a token with a higher --max-groups, or try again later"
            }
            ErrorCode::Overloaded => "the relay is at capacity: try again later",
            ErrorCode::RateLimited => {
                "the relay asks this device to slow down: try again in a moment"
            }
            ErrorCode::ShuttingDown => "the relay is restarting: run the command again in a moment",
            ErrorCode::StorageUnavailable => STORAGE_UNAVAILABLE_HINT,
            _ => return None,
        },
        ClientError::GaveUp { last, .. }
            if last.relay_code() == Some(ErrorCode::StorageUnavailable) =>
        {
            STORAGE_UNAVAILABLE_HINT
        }
        ClientError::GroupClosed(_) => GROUP_CLOSED_HINT,
        ClientError::GaveUp { last, .. } if last.is_group_closed() => GROUP_CLOSED_HINT,
        ClientError::Connect { .. } | ClientError::GaveUp { .. } => {
            "check that the relay is running and that the address in `sync-cli status` is right"
        }
        ClientError::RelayBehind { .. } => {
            "every relay of a group must be an instance of one relay cluster (sharing its database); list only those in `sync-cli init --relay …`, or join again with an invite naming them"
        }
        ClientError::Io { .. } => "check the path and its permissions",
        _ => return None,
    })
}

/// Print an error (and its hint) on stderr, or as JSON on stdout.
pub fn print_error(err: &anyhow::Error, json: bool) {
    let message = format!("{err:#}");
    let hint = hint(err);
    if json {
        json_line(&serde_json::json!({ "event": "error", "error": message, "hint": hint }));
    }
    eprintln!("error: {message}");
    if let Some(h) = hint {
        eprintln!("  hint: {h}");
    }
}

/// The invite as a QR code drawn with Unicode half blocks.
pub fn qr(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection the relay refused before its handshake is named as
    /// such on the status line, not as an unreachable relay.
    #[test]
    fn a_refused_connection_gets_its_own_status_line() {
        let refused = ClientError::Connect {
            addr: "ab@127.0.0.1:4433".into(),
            reason: REFUSED_BEFORE_HANDSHAKE.into(),
        }
        .to_string();
        assert_eq!(
            retry_line(3, Duration::from_secs(4), why(true, &refused)),
            "relay refused the connection (too many connections from this address, or it is \
             busy), retrying in 4 s (attempt 3)"
        );
        assert_eq!(
            retry_line(
                1,
                Duration::from_millis(250),
                why(true, "no answer within 10.0 s")
            ),
            "relay unreachable, retrying in 0.2 s (attempt 1)"
        );
        assert_eq!(why(false, "OVERLOADED"), "relay busy");
    }

    /// A relay whose database is away is named as such, not as busy.
    #[test]
    fn a_relay_without_its_database_gets_its_own_status_line() {
        let err = ClientError::Relay(
            sync_protocol::ErrorMsg::new(ErrorCode::StorageUnavailable, "db away")
                .with_retry_after(5000),
        )
        .to_string();
        assert_eq!(
            retry_line(2, Duration::from_secs(5), why(false, &err)),
            "relay's storage unavailable, retrying in 5 s (attempt 2)"
        );
        let internal = ClientError::Relay(sync_protocol::ErrorMsg::new(ErrorCode::Internal, "bug"))
            .to_string();
        assert_eq!(why(false, &internal), "relay busy");
        // Given up: the hint names the database, not a relay that is down.
        let gave_up = anyhow::Error::new(ClientError::GaveUp {
            attempts: 3,
            last: Box::new(ClientError::Relay(sync_protocol::ErrorMsg::new(
                ErrorCode::StorageUnavailable,
                "db away",
            ))),
        });
        assert_eq!(hint(&gave_up), Some(STORAGE_UNAVAILABLE_HINT));
    }
}
