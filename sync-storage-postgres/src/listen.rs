//! Wake-ups across relay instances (docs/deploy.md "Several relays on one
//! PostgreSQL"): every push transaction that moves a group's head sends
//! `pg_notify(channel, payload)` ([`payload`]); PostgreSQL delivers it to
//! every `LISTEN`ing session on COMMIT only, so a rolled-back push wakes
//! nobody. Each relay instance listens on **one** dedicated connection
//! ([`LISTENER_APPLICATION_NAME`]) and turns what arrives into
//! [`HeadEvent`]s ([`run`]).
//!
//! The payload is `1:<group id, 64 lowercase hex>:<head, decimal>` (at most
//! 87 bytes, far below PostgreSQL's 8,000-byte limit). Anyone who can
//! connect to the database can `NOTIFY` on the channel, so [`parse`] takes
//! nothing on trust: anything else is [`HeadEvent::Malformed`], and the
//! relay re-reads the head from the table before it publishes one.
//!
//! After a dropped connection the listener reconnects with a doubling
//! backoff ([`RECONNECT_BACKOFF_MIN`] to [`RECONNECT_BACKOFF_MAX`]; back to
//! the minimum only after a connection that held that long) and
//! sends [`HeadEvent::Resync`] once it listens again: wake-ups of the
//! outage are lost, so the relay re-reads its live groups' heads.

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::time::Duration;
use sync_protocol::GroupId;
use sync_storage::{FeedSender, HeadEvent};

/// The channel pushes notify and listeners listen on, unless
/// [`crate::PostgresStorageOptions::notify_channel`] says otherwise.
pub const NOTIFY_CHANNEL: &str = "sync_relay_heads";

/// `application_name` of each instance's listening connection (what
/// `pg_stat_activity` shows for it).
pub const LISTENER_APPLICATION_NAME: &str = "sync-relay-listener";

/// First wait before reconnecting a dropped listener.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Longest wait between reconnection attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Longest payload [`parse`] looks at (ours are at most 87 bytes).
const MAX_PAYLOAD: usize = 128;

/// The wake-up payload for `group` at `head`.
pub fn payload(group: &GroupId, head: u64) -> String {
    format!("1:{}:{head}", hex::encode(group.0))
}

/// The event a notification's payload stands for: [`HeadEvent::Moved`]
/// for exactly the format of [`payload`], [`HeadEvent::Malformed`] for
/// anything else (never a panic, whatever the bytes).
pub fn parse(payload: &str) -> HeadEvent {
    parse_moved(payload).unwrap_or(HeadEvent::Malformed)
}

fn parse_moved(payload: &str) -> Option<HeadEvent> {
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    let rest = payload.strip_prefix("1:")?;
    let (hex_id, head) = rest.split_once(':')?;
    if hex_id.len() != 64
        || !hex_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        || head.is_empty()
        || head.len() > 20
        || !head.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut id = [0u8; 32];
    hex::decode_to_slice(hex_id, &mut id).ok()?;
    Some(HeadEvent::Moved {
        group: GroupId(id),
        head: head.parse().ok()?,
    })
}

/// Why one listening connection ended.
enum Ended {
    /// The consumer dropped its feed: stop.
    FeedClosed,
    /// The connection failed (or could not be made): reconnect.
    Lost(sqlx::Error),
    /// The connection was closed under the listener: reconnect.
    Dropped,
}

/// Listen on `channel` over a connection of its own to `connect`, forward
/// wake-ups to `tx`, and reconnect (with backoff) whenever the connection
/// is lost, until the consumer drops its feed.
pub(crate) async fn run(connect: PgConnectOptions, channel: String, mut tx: FeedSender) {
    let connect = connect.application_name(LISTENER_APPLICATION_NAME);
    let closed = tx.closed();
    tokio::pin!(closed);
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut listening_since = None;
    loop {
        let ended = tokio::select! {
            _ = &mut closed => return,
            ended = listen(&connect, &channel, &mut tx, &mut listening_since) => ended,
        };
        if matches!(ended, Ended::FeedClosed) {
            return;
        }
        if let Some(since) = listening_since.take() {
            // A fresh outage after a steady connection: the first retry
            // comes soon. A connection that keeps dropping right after it
            // was made keeps backing off (each reconnect costs the relay a
            // re-read of every live group).
            if since.elapsed() >= RECONNECT_BACKOFF_MAX {
                backoff = RECONNECT_BACKOFF_MIN;
            }
            if tx.send(HeadEvent::Disconnected).is_err() {
                return;
            }
        }
        match ended {
            Ended::FeedClosed => return,
            Ended::Lost(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "head listener: connection failed");
            }
            Ended::Dropped => {
                tracing::warn!(
                    retry_in_ms = backoff.as_millis() as u64,
                    "head listener: connection dropped"
                );
            }
        }
        tokio::select! {
            _ = &mut closed => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// One listening connection, from connect to loss.
async fn listen(
    connect: &PgConnectOptions,
    channel: &str,
    tx: &mut FeedSender,
    listening_since: &mut Option<tokio::time::Instant>,
) -> Ended {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(connect.clone());
    let ended = async {
        let mut listener = PgListener::connect_with(&pool).await.map_err(Ended::Lost)?;
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        listener.listen(channel).await.map_err(Ended::Lost)?;
        // Listening from here on: whatever the consumer re-reads now
        // includes every push a lost wake-up was about.
        *listening_since = Some(tokio::time::Instant::now());
        tracing::info!(channel, "head listener: listening");
        tx.send(HeadEvent::Resync).map_err(|_| Ended::FeedClosed)?;
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    tx.send(parse(n.payload())).map_err(|_| Ended::FeedClosed)?;
                }
                Ok(None) => return Err(Ended::Dropped),
                Err(e) => return Err(Ended::Lost(e)),
            }
        }
    }
    .await;
    // The listener went with the block: its connection is on its way back
    // to the pool (after an `UNLISTEN *` when it is still alive). Close the
    // pool, without waiting on a connection that hangs.
    let _ = tokio::time::timeout(Duration::from_secs(1), pool.close()).await;
    match ended {
        Ok(()) => Ended::Dropped,
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_payload_round_trips_and_stays_small() {
        let g = GroupId([0xab; 32]);
        for head in [0, 1, 4711, u64::MAX] {
            let p = payload(&g, head);
            assert!(p.len() <= 87, "{}", p.len());
            assert_eq!(parse(&p), HeadEvent::Moved { group: g, head });
        }
    }

    #[test]
    fn anything_else_is_malformed() {
        let hex = "ab".repeat(32);
        for bad in [
            String::new(),
            "1:".into(),
            format!("2:{hex}:5"),
            format!("1:{hex}"),
            format!("1:{hex}:"),
            format!("1:{hex}:-1"),
            format!("1:{hex}:+1"),
            format!("1:{hex}:18446744073709551616"), // u64::MAX + 1
            format!("1:{hex}:99999999999999999999999"),
            format!("1:{hex}:5:6"),
            format!("1:{hex}: 5"),
            format!("1:{}:5", "AB".repeat(32)),
            format!("1:{}:5", "ab".repeat(31)),
            format!("1:{}:5", "ab".repeat(33)),
            format!("1:{}:5", "zz".repeat(32)),
            format!("1:{}é:5", "ab".repeat(31)),
            "x".repeat(7999),
        ] {
            assert_eq!(parse(&bad), HeadEvent::Malformed, "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn no_payload_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn near_misses_never_panic(prefix in "[0-9a-f:]{0,70}", head in "[0-9]{0,25}") {
            let _ = parse(&format!("1:{prefix}:{head}"));
        }
    }
}
