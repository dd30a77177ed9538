//! The soak's clients, all running at once until the deadline:
//!
//! - **steady devices**: long sessions in long-lived groups, pushing 1 KiB
//!   blobs with a short TTL and pulling (then acknowledging) what arrived,
//!   each at most `rate` operations a second — the honest load;
//! - **session churn**: sessions of the same groups that connect, push one
//!   blob, pull the last few and vanish, half of them with a clean close and
//!   half abruptly (the endpoint dropped without a close, as a device that
//!   loses its network: the relay only learns from the idle timeout). They
//!   reuse a small pool of device keys, as real devices reconnect;
//! - **group churn**: a device creates a fresh group with the access token,
//!   pushes three blobs, a second device joins with a plain `Hello` and pulls
//!   them, both leave and nobody comes back (the blobs expire, the cleanup
//!   prunes the group);
//! - **never-reading pullers**: sessions with tiny receive windows that ask
//!   for 256 KiB blobs on every request stream they may open and read
//!   nothing, until the relay cuts them off at the write deadline; then they
//!   come back.
//!
//! Churning clients dial from many loopback addresses (127.2–5.x.y: Linux
//! routes all of 127/8 to `lo`), so the relay's per-address state is
//! exercised and its default per-address connection rate is kept.

use crate::env::{blob_id, random};
use anyhow::Result;
use iroh::endpoint::{Connection, ConnectionError, QuicTransportConfig, presets};
use iroh::{Endpoint, EndpointAddr, NetReportConfig, RelayMode, SecretKey};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_client::{
    ConnectOptions, GroupKeys, MAX_DIALS, RelayAddr, RelaySession, dial_attempt_timeout,
};
use sync_protocol::{
    AccessToken, CloseCode, DeviceId, Hello, Message, PROTOCOL_VERSION, Pull, PushItem,
    encode_frame, read_message, write_message,
};
use tokio::time::Instant;

/// Time allowed for a connect: dials (redials included) plus `Hello`.
const CONNECT: Duration = Duration::from_secs(30);

/// What every client needs.
pub struct World {
    /// The relay's address.
    pub relay: RelayAddr,
    /// Its bound QUIC address.
    pub quic: SocketAddr,
    /// The token new groups are created with.
    pub token: AccessToken,
    /// When every client stops.
    pub deadline: Instant,
    /// TTL of the blobs honest clients push (seconds).
    pub ttl_s: u32,
    /// What happened.
    pub report: Mutex<Report>,
}

/// What the clients did (the honest ones must see no error).
#[derive(Debug, Default)]
pub struct Report {
    /// Steady push round trips.
    pub push: Vec<Duration>,
    /// Steady pull round trips (all batches).
    pub pull: Vec<Duration>,
    /// Churn sessions: dial + `Hello` to `Welcome` (redials included).
    pub connect: Vec<Duration>,
    /// Dials abandoned unanswered and made again (not errors: a device
    /// does the same).
    pub redials: u64,
    /// Errors of honest clients (steady, session churn, group churn).
    pub errors: u64,
    /// The first 20 of them.
    pub first_errors: Vec<String>,
    /// Churn sessions closed cleanly.
    pub closed: u64,
    /// Churn sessions that vanished without a close.
    pub vanished: u64,
    /// Groups created and abandoned.
    pub groups_created: u64,
    /// Puller sessions opened.
    pub pullers: u64,
    /// Puller sessions the relay closed with TOO_SLOW.
    pub pullers_cut_off: u64,
    /// Puller sessions that ended otherwise (or were still open at the end).
    pub pullers_other: u64,
}

impl World {
    fn error(&self, what: &str, err: impl std::fmt::Display) {
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        r.errors += 1;
        if r.first_errors.len() < 20 {
            r.first_errors.push(format!("{what}: {err}"));
        }
    }

    fn record(&self, f: impl FnOnce(&mut Report)) {
        f(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Sleep `d`, or until the deadline; false when the deadline came.
    async fn pause(&self, d: Duration) -> bool {
        tokio::time::sleep_until((Instant::now() + d).min(self.deadline)).await;
        self.running()
    }

    fn options(&self, keys: &GroupKeys, token: bool) -> ConnectOptions {
        ConnectOptions {
            relay: self.relay.clone(),
            keys: keys.clone(),
            device_key: SecretKey::generate(),
            device_name: None,
            connect_timeout: CONNECT,
            access_token: token.then_some(self.token),
        }
    }

    fn item(&self, id: sync_protocol::BlobId, len: usize, ttl_s: u32) -> PushItem {
        PushItem {
            blob_id: id,
            payload: random(len),
            ttl_s: Some(ttl_s),
        }
    }
}

/// An offline endpoint on `ip` with the node key `key` and `transport` (or
/// iroh's defaults).
pub async fn endpoint(
    ip: Ipv4Addr,
    key: SecretKey,
    transport: Option<QuicTransportConfig>,
) -> Result<Endpoint> {
    let mut builder = Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr(SocketAddr::from((ip, 0)))?
        .portmapper_config(iroh::endpoint::PortmapperConfig::Disabled)
        .net_report_config(NetReportConfig::minimal())
        .secret_key(key);
    if let Some(t) = transport {
        builder = builder.transport_config(t);
    }
    Ok(builder.bind().await?)
}

/// Close an endpoint, waiting at most a second for the close to be sent.
async fn close(ep: &Endpoint) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ep.close()).await;
}

/// Open a session of `keys`' group from `ip` with `key` (a plain `Hello`,
/// or a `HelloWithToken` when `token`), on an endpoint of its own that the
/// caller closes (or drops, to vanish).
///
/// Dials as [`RelaySession::connect`] does (docs/client.md "Dialing";
/// docs/deploy.md "Unanswered dials"): a dial plus `Hello` that gets no
/// answer within [`dial_attempt_timeout`] is abandoned and made again from
/// a fresh endpoint on the same address (a new port and connection id), at
/// most [`MAX_DIALS`] dials within [`CONNECT`]; each redial is counted in
/// [`Report::redials`]. An answer — a refusal included — ends the connect:
/// it is the error the caller counts. (`connect` itself cannot be used: it
/// binds its endpoint on the unspecified address, and the soak's workers
/// dial from addresses of their own.)
async fn session_on(
    world: &World,
    ip: Ipv4Addr,
    key: SecretKey,
    keys: &GroupKeys,
    token: bool,
) -> Result<(RelaySession, Endpoint)> {
    let opts = world.options(keys, token);
    let deadline = Instant::now() + CONNECT;
    let mut dials = 0;
    loop {
        dials += 1;
        let ep = endpoint(ip, key.clone(), None).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = if dials < MAX_DIALS {
            dial_attempt_timeout(dials).min(left)
        } else {
            left
        };
        match tokio::time::timeout(attempt, RelaySession::connect_on(&ep, &opts)).await {
            Ok(Ok(s)) => {
                if dials > 1 {
                    world.record(|r| r.redials += u64::from(dials - 1));
                }
                return Ok((s, ep));
            }
            // An answer (a refusal) is not a lost dial: it is the error.
            Ok(Err(e)) => {
                close(&ep).await;
                return Err(e.into());
            }
            Err(_) => {
                close(&ep).await;
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "no answer within {:.0} s (dials made: {dials})",
                        CONNECT.as_secs_f64()
                    );
                }
            }
        }
    }
}

/// As [`session_on`], the session owning (and closing) its endpoint.
async fn session(
    world: &World,
    ip: Ipv4Addr,
    key: SecretKey,
    keys: &GroupKeys,
    token: bool,
) -> Result<RelaySession> {
    let (s, ep) = session_on(world, ip, key, keys, token).await?;
    Ok(s.owning(ep))
}

/// Pull everything after `cursor`; the new cursor and the blobs received.
async fn pull_all(s: &RelaySession, cursor: u64) -> Result<(u64, u64)> {
    let mut resp = s.pull(cursor, 1000).await?;
    let (mut cursor, mut n) = (cursor, 0);
    while let Some(batch) = resp.next_batch().await? {
        n += batch.blobs.len() as u64;
        if let Some(last) = batch.blobs.last() {
            cursor = last.cursor;
        }
    }
    Ok((cursor, n))
}

/// A steady device `d` of `keys`' group, from 127.1.0.x: pushes and pulls
/// (3 : 1) at most `rate` times a second, acknowledging what it pulled;
/// reconnects if its session breaks (counted as an error: it must not).
/// `ready` is told when its first session is open (the first device of a
/// group creates it with the token).
pub async fn steady(
    world: Arc<World>,
    keys: GroupKeys,
    d: usize,
    rate: u32,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let ip = Ipv4Addr::new(127, 1, (d / 250) as u8, (d % 250 + 1) as u8);
    let key = SecretKey::generate();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut current: Option<RelaySession> = None;
    let (mut cursor, mut k) = (0u64, 0u64);
    let mut next = Instant::now();
    while world.running() {
        let s = match current.take() {
            Some(s) if !s.is_closed() => s,
            _ => match session(&world, ip, key.clone(), &keys, true).await {
                Ok(s) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    s
                }
                Err(e) => {
                    world.error("steady connect", e);
                    world.pause(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let t = Instant::now();
        if k % 4 == 3 {
            match pull_all(&s, cursor).await {
                Ok((c, _)) => {
                    world.record(|r| r.pull.push(t.elapsed()));
                    if c > cursor {
                        cursor = c;
                        if let Err(e) = s.ack(cursor).await {
                            world.error("steady ack", e);
                        }
                    }
                }
                Err(e) => world.error("steady pull", e),
            }
        } else {
            let item = world.item(blob_id(d as u32, k), 1024, world.ttl_s);
            match s.push(vec![item]).await {
                Ok(_) => world.record(|r| r.push.push(t.elapsed())),
                Err(e) => world.error("steady push", e),
            }
        }
        current = Some(s);
        k += 1;
        next += interval;
        tokio::time::sleep_until(next.min(world.deadline)).await;
    }
    if let Some(s) = current {
        s.close().await;
    }
}

/// Session churn worker `w`: about four sessions a second over `groups`,
/// each from the next address of 127.2.w.0/24 with one of eight device keys;
/// each pushes a blob, pulls the last five and leaves — even ones with a
/// close, odd ones by vanishing.
pub async fn session_churn(world: Arc<World>, groups: Arc<Vec<GroupKeys>>, w: usize) {
    let pool: Vec<SecretKey> = (0..8).map(|_| SecretKey::generate()).collect();
    let mut i = 0usize;
    while world.running() {
        let ip = Ipv4Addr::new(127, 2, w as u8, (i % 250 + 1) as u8);
        let keys = &groups[(w + i) % groups.len()];
        let t = Instant::now();
        match session_on(&world, ip, pool[i % pool.len()].clone(), keys, false).await {
            Ok((s, ep)) => {
                world.record(|r| r.connect.push(t.elapsed()));
                let item = world.item(blob_id(1 << 20 | w as u32, i as u64), 1024, world.ttl_s);
                if let Err(e) = s.push(vec![item]).await {
                    world.error("churn push", e);
                }
                let from = s.welcome().head_cursor.saturating_sub(5);
                if let Err(e) = pull_all(&s, from).await {
                    world.error("churn pull", e);
                }
                if i.is_multiple_of(2) {
                    s.close_connection();
                    close(&ep).await;
                    world.record(|r| r.closed += 1);
                } else {
                    vanish(s, ep);
                    world.record(|r| r.vanished += 1);
                }
            }
            Err(e) => world.error("churn connect", format!("{e:#} (after {:?})", t.elapsed())),
        }
        i += 1;
        if !world.pause(Duration::from_millis(250)).await {
            break;
        }
    }
}

/// Leave without a word: the endpoint (its last handle) is dropped first,
/// without `close`, so iroh aborts its tasks and no CONNECTION_CLOSE can
/// leave when the connection handle goes next; the relay finds out only
/// from its idle timeout.
fn vanish(s: RelaySession, ep: Endpoint) {
    drop(ep);
    drop(s);
}

/// Group churn worker `w`: about one group a second, created from
/// 127.3.w.x with the token; three blobs pushed; a second device joins from
/// 127.4.w.x and must pull exactly those three; both close and never
/// return.
pub async fn group_churn(world: Arc<World>, w: usize) {
    let mut i = 0usize;
    while world.running() {
        let keys = sync_client::GroupSecret::generate().keys();
        let host = (i % 250 + 1) as u8;
        let t = Instant::now();
        match session(
            &world,
            Ipv4Addr::new(127, 3, w as u8, host),
            SecretKey::generate(),
            &keys,
            true,
        )
        .await
        {
            Ok(creator) => {
                world.record(|r| r.groups_created += 1);
                let items = (0..3)
                    .map(|n| world.item(blob_id(2 << 20 | w as u32, n), 1024, world.ttl_s))
                    .collect();
                match creator.push(items).await {
                    Ok(_) => join_and_pull(&world, &keys, Ipv4Addr::new(127, 4, w as u8, host))
                        .await
                        .unwrap_or_else(|e| world.error("group churn join", e)),
                    Err(e) => world.error("group churn push", e),
                }
                creator.close().await;
            }
            Err(e) => world.error(
                "group churn create",
                format!("{e:#} (after {:?})", t.elapsed()),
            ),
        }
        i += 1;
        if !world.pause(Duration::from_secs(1)).await {
            break;
        }
    }
}

async fn join_and_pull(world: &World, keys: &GroupKeys, ip: Ipv4Addr) -> Result<()> {
    let joiner = session(world, ip, SecretKey::generate(), keys, false).await?;
    let pulled = pull_all(&joiner, 0).await;
    joiner.close().await;
    let (_, n) = pulled?;
    anyhow::ensure!(n == 3, "the joining device pulled {n} blobs of 3");
    Ok(())
}

/// Receive windows of a reader that never reads: the relay can hand it
/// 1 KiB per stream and 16 KiB in all, and must hold the rest itself.
fn stingy() -> QuicTransportConfig {
    QuicTransportConfig::builder()
        .stream_receive_window(1024u32.into())
        .receive_window((16u32 << 10).into())
        .build()
}

/// Never-reading puller `w` of `keys`' group (which holds 256 KiB blobs),
/// from 127.5.w.x with one of two device keys: opens `streams` request
/// streams, each a `Pull` of everything, reads nothing, and waits for the
/// relay to close the connection; again until the deadline.
pub async fn puller(world: Arc<World>, keys: GroupKeys, w: usize, streams: usize) {
    let pool = [SecretKey::generate(), SecretKey::generate()];
    let relay_id = DeviceId(*world.relay.node_id.as_bytes());
    let addr = EndpointAddr::new(world.relay.node_id).with_ip_addr(world.quic);
    let pull = Arc::new(encode_frame(&Message::Pull(Pull {
        after: 0,
        limit: 1000,
    })));
    let mut i = 0usize;
    while world.running() {
        let ip = Ipv4Addr::new(127, 5, w as u8, (i % 250 + 1) as u8);
        let key = pool[i % 2].clone();
        i += 1;
        let Ok(ep) = endpoint(ip, key, Some(stingy())).await else {
            world.pause(Duration::from_secs(1)).await;
            continue;
        };
        let conn = match tokio::time::timeout(
            CONNECT,
            ep.connect(addr.clone(), sync_protocol::ALPN),
        )
        .await
        {
            Ok(Ok(c)) => c,
            _ => {
                world.record(|r| r.pullers_other += 1);
                close(&ep).await;
                world.pause(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !hello(&conn, &keys, relay_id, DeviceId(*ep.id().as_bytes())).await {
            world.record(|r| r.pullers_other += 1);
            close(&ep).await;
            world.pause(Duration::from_secs(1)).await;
            continue;
        }
        world.record(|r| r.pullers += 1);
        let mut held = tokio::task::JoinSet::new();
        for _ in 0..streams {
            let (conn, pull) = (conn.clone(), Arc::clone(&pull));
            held.spawn(async move {
                let Ok((mut send, recv)) = conn.open_bi().await else {
                    return;
                };
                if send.write_all(&pull).await.is_ok() {
                    let _ = send.finish();
                    let _ = conn.closed().await;
                }
                drop((send, recv));
            });
        }
        let ended = tokio::select! {
            e = conn.closed() => Some(e),
            _ = tokio::time::sleep_until(world.deadline) => None,
        };
        let too_slow = matches!(&ended, Some(ConnectionError::ApplicationClosed(c))
            if c.error_code.into_inner() == u64::from(CloseCode::TooSlow.as_u32()));
        world.record(|r| {
            if too_slow {
                r.pullers_cut_off += 1
            } else {
                r.pullers_other += 1
            }
        });
        held.abort_all();
        close(&ep).await;
    }
}

/// Send a plain `Hello` for `keys`' group on `conn`; true on `Welcome`.
async fn hello(conn: &Connection, keys: &GroupKeys, relay: DeviceId, device: DeviceId) -> bool {
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        group_id: keys.group_id(),
        proof: keys.proof(&relay, &device),
        device_name: None,
    });
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return false;
    };
    if write_message(&mut send, &hello, 4096).await.is_err() || send.finish().is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(CONNECT, read_message(&mut recv, 4096)).await,
        Ok(Ok(Some(Message::Welcome(_))))
    )
}

#[cfg(test)]
mod tests;
