//! What one peer can make the relay spend, whatever it does (issue 10,
//! items 3 and 4): memory per session and before `Hello` is bounded, a
//! reader that stops reading is cut off, and connections over the
//! per-address rate or the cap on connections awaiting `Hello` are refused
//! before their TLS handshake. Honest clients keep working throughout.
//!
//! Memory is measured as in `adversarial.rs`: a baseline after an honest
//! round trip, the relay's address space capped `e2e_tests::memory::ADDRESS_SPACE_HEADROOM`
//! above its warmed-up size (an allocation sized from a peer's claim aborts
//! it), and the peak RSS (VmHWM) since the baseline checked against a
//! budget. Every figure is printed.
//!
//! The attackers use their own QUIC settings, as a real attacker would:
//! tiny receive windows, so the relay cannot hand its answers off into the
//! attacker's buffers and has to hold them itself.

use e2e_tests::memory::MemoryWatch;
use e2e_tests::{LibDevice, RelayProcess, honest_round_trip, relay_with};
use iroh::endpoint::{Connection, ConnectionError, QuicTransportConfig, presets};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use sync_client::{GroupKeys, GroupSecret};
use sync_protocol::{
    BlobId, CloseCode, DeviceId, ErrorCode, Hello, Message, PROTOCOL_VERSION, Pull, PushItem,
    Welcome, encode_frame, read_message, write_message,
};
use tokio::task::JoinSet;

/// Generous wait for anything the relay owes.
const ANSWER: Duration = Duration::from_secs(60);

/// Request streams a session may have open at once
/// (`limits.max_requests_in_flight`, default 16).
const REQUEST_SLOTS: usize = 16;

/// An offline endpoint bound to `ip` (any loopback address: Linux routes
/// all of 127/8 to `lo`), with `transport` or iroh's defaults.
async fn endpoint(ip: &str, transport: Option<QuicTransportConfig>) -> Endpoint {
    let mut builder = Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr(format!("{ip}:0").parse::<SocketAddr>().unwrap())
        .expect("bind address");
    if let Some(t) = transport {
        builder = builder.transport_config(t);
    }
    builder.bind().await.expect("bind endpoint")
}

/// Receive windows of an attacker that never reads: the relay can send it
/// 1 KiB per stream and 16 KiB in all, then has to hold the rest itself.
fn stingy() -> QuicTransportConfig {
    QuicTransportConfig::builder()
        .stream_receive_window(1024u32.into())
        .receive_window((16u32 << 10).into())
        .build()
}

fn relay_addr(relay: &RelayProcess) -> EndpointAddr {
    let id: EndpointId = relay.node_id().parse().unwrap();
    EndpointAddr::new(id).with_ip_addr(relay.quic)
}

async fn connect(ep: &Endpoint, relay: &RelayProcess) -> Result<Connection, String> {
    match tokio::time::timeout(ANSWER, ep.connect(relay_addr(relay), sync_protocol::ALPN)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// A valid `Hello` for `keys`' group on `conn`; returns the `Welcome`.
async fn hello(
    relay: &RelayProcess,
    ep: &Endpoint,
    conn: &Connection,
    keys: &GroupKeys,
) -> Welcome {
    let relay_id = DeviceId(*relay.node_id().parse::<EndpointId>().unwrap().as_bytes());
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        group_id: keys.group_id(),
        proof: keys.proof(&relay_id, &DeviceId(*ep.id().as_bytes())),
        device_name: None,
    });
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    write_message(&mut send, &hello, 4096).await.unwrap();
    send.finish().unwrap();
    match tokio::time::timeout(ANSWER, read_message(&mut recv, 4096)).await {
        Ok(Ok(Some(Message::Welcome(w)))) => w,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// The close code the relay closed `conn` with, waiting up to `limit`.
async fn closed_with(conn: &Connection, limit: Duration) -> Option<u64> {
    match tokio::time::timeout(limit, conn.closed()).await.ok()? {
        ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

/// Honest round trips, one after another, until `stop` is set; returns
/// their times. Each must complete.
fn honest_traffic(
    relay: &Arc<RelayProcess>,
    stop: &Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    let (relay, stop) = (Arc::clone(relay), Arc::clone(stop));
    tokio::spawn(async move {
        let mut times = Vec::new();
        while stop.load(Ordering::SeqCst) == 0 {
            let t = tokio::time::timeout(ANSWER, honest_round_trip(&relay))
                .await
                .expect("an honest round trip completes during the attack");
            times.push(t);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        times
    })
}

fn summary(times: &[Duration]) -> String {
    let mut ms: Vec<u128> = times.iter().map(|t| t.as_millis()).collect();
    ms.sort_unstable();
    match ms.as_slice() {
        [] => "none".into(),
        s => format!(
            "{} round trips, median {} ms, max {} ms",
            s.len(),
            s[s.len() / 2],
            s[s.len() - 1]
        ),
    }
}

/// `sync_relay_in_flight_bytes` once it has read 0 for a second, or after
/// 2 × [`ANSWER`]: a closed session's requests give their bytes back as they
/// notice the close, and an answer waiting for budget takes what is given
/// back (the gauge can read 0 for the moment in between).
fn in_flight_settles(relay: &RelayProcess) -> f64 {
    let deadline = Instant::now() + 2 * ANSWER;
    let mut zero_since: Option<Instant> = None;
    loop {
        let v = relay.metrics().value("sync_relay_in_flight_bytes", &[]);
        if v != 0.0 {
            zero_since = None;
        } else if zero_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_secs(1) {
            return v;
        }
        if Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Push one blob of `len` random bytes into `keys`' group.
async fn push_blob(relay: &RelayProcess, secret: &GroupSecret, len: usize) {
    let dev = LibDevice::new(&relay.address, secret);
    let client = dev.connect().await;
    client
        .session()
        .push(vec![PushItem {
            blob_id: BlobId([7; 16]),
            payload: e2e_tests::random_bytes(len),
            ttl_s: None,
        }])
        .await
        .expect("push the blob");
    client.close().await;
}

/// A session of `secret`'s group with stingy windows that opens `streams`
/// request streams, each a `Pull` of everything, and never reads an answer.
/// Returns the connection (to watch its close) and the tasks holding the
/// streams.
async fn never_reading_puller(
    relay: &RelayProcess,
    secret: &GroupSecret,
    streams: usize,
) -> (Endpoint, Connection, JoinSet<()>) {
    let ep = endpoint("127.0.0.1", Some(stingy())).await;
    let conn = connect(&ep, relay).await.expect("attacker connects");
    hello(relay, &ep, &conn, &secret.keys()).await;
    let pull = Arc::new(encode_frame(&Message::Pull(Pull {
        after: 0,
        limit: 1000,
    })));
    let mut tasks = JoinSet::new();
    for _ in 0..streams {
        let (conn, pull) = (conn.clone(), Arc::clone(&pull));
        tasks.spawn(async move {
            let Ok((mut send, recv)) = conn.open_bi().await else {
                return;
            };
            if send.write_all(&pull).await.is_err() {
                return;
            }
            let _ = send.finish();
            // Never read; hold the stream until the connection ends.
            let _ = conn.closed().await;
            drop((send, recv));
        });
    }
    (ep, conn, tasks)
}

/// 20 sessions each open 100 streams of `Pull` of a 1 MiB blob and never
/// read: the relay holds at most `session_response_frames` (2) answer
/// frames per session, cuts every attacker off when a frame misses its
/// write deadline (close code 8, TOO_SLOW), gives the bytes back, and
/// serves honest clients meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pullers_that_never_read_are_cut_off_and_cost_bounded_memory() {
    const SESSIONS: usize = 20;
    const STREAMS: usize = 100;
    let tmp = tempfile::tempdir().unwrap();
    // Write deadline of a 1 MiB frame: 2 s + 1 MiB / (1 MiB/s) = 3 s.
    let relay = relay_with(
        tmp.path(),
        "[limits]\nrequest_timeout_s = 2\nmin_transfer_rate = 1048576\n",
    );
    let secret = GroupSecret::generate();
    push_blob(&relay, &secret, 1 << 20).await;
    let watch = MemoryWatch::start(&relay).await;
    let relay = Arc::new(relay);
    let stop = Arc::new(AtomicUsize::new(0));
    let honest = honest_traffic(&relay, &stop);
    let started = Instant::now();
    let attackers = futures::future::join_all(
        (0..SESSIONS).map(|_| never_reading_puller(&relay, &secret, STREAMS)),
    )
    .await;
    let codes = futures::future::join_all(
        attackers
            .iter()
            .map(|(_, conn, _)| closed_with(conn, ANSWER)),
    )
    .await;
    let cut_after = started.elapsed();
    stop.store(1, Ordering::SeqCst);
    let times = honest.await.unwrap();
    let mut relay = Arc::into_inner(relay).expect("the honest task is done");
    let metrics = relay.metrics();
    eprintln!(
        "{SESSIONS} never-reading pullers × {STREAMS} streams: connections ended after {cut_after:?}; \
         honest meanwhile: {}; slow_readers_total {}",
        summary(&times),
        metrics.value("sync_relay_slow_readers", &[])
    );
    // The issue asks for < 256 MiB. The bound is tighter: 2 answer frames
    // per session (20 × 2.1 MiB) plus QUIC state; without the per-session
    // share the attackers would fill the relay-wide 128 MiB.
    watch.check(&mut relay, 100.0, "never-reading pullers");
    let too_slow = Some(u64::from(CloseCode::TooSlow.as_u32()));
    assert!(
        codes.iter().all(|c| *c == too_slow),
        "every attacker is closed with TOO_SLOW: {codes:?}"
    );
    assert_eq!(
        metrics.value("sync_relay_slow_readers", &[]),
        SESSIONS as f64
    );
    assert!(
        !times.is_empty(),
        "no honest round trip ran during the attack"
    );
    assert_eq!(
        in_flight_settles(&relay),
        0.0,
        "every reserved byte was given back"
    );
    drop(attackers);
    honest_round_trip(&relay).await;
}

/// A reader that is slow but keeps reading is not cut off: with
/// `min_transfer_rate` = 64 KiB/s and `request_timeout_s` = 1, a 1 MiB answer
/// read at about twice that rate (8 s) finishes within its deadline of
/// 1 s + 16 s, although that is far beyond the 1 s base. (The chaos suite's
/// `link_56_kbit` runs the defaults over a 7000 byte/s link.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_above_the_minimum_rate_is_not_cut_off() {
    const RATE: f64 = 128.0 * 1024.0;
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(
        tmp.path(),
        "[limits]\nrequest_timeout_s = 1\nmin_transfer_rate = 65536\n",
    );
    let secret = GroupSecret::generate();
    push_blob(&relay, &secret, 1 << 20).await;
    // Small windows, so the relay's progress follows the reader's.
    let transport = QuicTransportConfig::builder()
        .stream_receive_window((16u32 << 10).into())
        .receive_window((64u32 << 10).into())
        .build();
    let ep = endpoint("127.0.0.1", Some(transport)).await;
    let conn = connect(&ep, &relay).await.unwrap();
    hello(&relay, &ep, &conn, &secret.keys()).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let pull = Message::Pull(Pull {
        after: 0,
        limit: 10,
    });
    write_message(&mut send, &pull, 4096).await.unwrap();
    send.finish().unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = match tokio::time::timeout(ANSWER, recv.read(&mut chunk)).await {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => break,
            other => panic!("after {} bytes: {other:?}", got.len()),
        };
        got.extend_from_slice(&chunk[..n]);
        // Pace the reading at RATE.
        let due = Duration::from_secs_f64(got.len() as f64 / RATE);
        tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
    }
    let took = started.elapsed();
    let slow_readers = relay.metrics().value("sync_relay_slow_readers", &[]);
    eprintln!(
        "slow reader: {} bytes in {took:?} ({:.0} bytes/s); slow_readers_total {slow_readers}",
        got.len(),
        got.len() as f64 / took.as_secs_f64()
    );
    match sync_protocol::decode_body(&got[4..]) {
        Ok(Message::PullBatch(b)) => assert_eq!(b.blobs[0].payload.len(), 1 << 20),
        other => panic!("{other:?}"),
    }
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    assert_eq!(slow_readers, 0.0);
}

/// The relay-wide budget bounds what many sessions hold together, even
/// with per-session shares that would allow more: 20 never-reading pullers
/// with a share of 16 frames each (340 MiB together) against
/// `max_bytes_in_flight` = 24 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_wide_budget_bounds_answers_of_all_sessions_together() {
    const SESSIONS: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(
        tmp.path(),
        "[limits]\nrequest_timeout_s = 5\nmin_transfer_rate = 1048576\n\
         session_response_frames = 16\nmax_bytes_in_flight = 25165824\n",
    );
    let secret = GroupSecret::generate();
    push_blob(&relay, &secret, 1 << 20).await;
    let mut relay = relay;
    let watch = MemoryWatch::start(&relay).await;
    let attackers = futures::future::join_all(
        (0..SESSIONS).map(|_| never_reading_puller(&relay, &secret, REQUEST_SLOTS)),
    )
    .await;
    // Answers that got budget miss their deadline and cut their session
    // off; the others wait for budget up to request_timeout_s, then are
    // answered OVERLOADED, until nothing is held.
    let settled = in_flight_settles(&relay);
    let metrics = relay.metrics();
    eprintln!(
        "relay-wide budget 24 MiB, {SESSIONS} pullers × {REQUEST_SLOTS} streams: \
         slow_readers_total {}, OVERLOADED answers {}",
        metrics.value("sync_relay_slow_readers", &[]),
        metrics.value("sync_relay_errors", &["OVERLOADED"])
    );
    watch.check(
        &mut relay,
        64.0,
        "pullers against a 24 MiB relay-wide budget",
    );
    assert_eq!(settled, 0.0, "every reserved byte was given back");
    assert!(metrics.value("sync_relay_slow_readers", &[]) >= 1.0);
    assert!(
        metrics.value("sync_relay_errors", &["OVERLOADED"]) >= 1.0,
        "some answers found the relay-wide budget spent"
    );
    drop(attackers);
    honest_round_trip(&relay).await;
}

/// Request bodies are paid for before they are read: 8 sessions each fill
/// every request slot with a largest frame sent but for its last byte, and
/// hold it. A session gets at most `session_request_frames` (4) of them
/// read, and all sessions together at most what `max_bytes_in_flight`
/// holds (here 20 frames); the rest are refused at once (RATE_LIMITED over
/// the session's share, OVERLOADED over the relay's) and cost nothing.
/// (Without the budget one connection made the relay hold 16 such frames,
/// 17 MiB, for up to `request_timeout_s + len / 4096` s: 5 minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_beyond_the_session_budget_are_refused_before_they_are_read() {
    const SESSIONS: usize = 8;
    let tmp = tempfile::tempdir().unwrap();
    // 20 largest frames (1 MiB + 64 KiB + 4) and 64 KiB for small requests.
    const RELAY_FRAMES: usize = 20;
    let mut relay = relay_with(
        tmp.path(),
        &format!(
            "[limits]\nmax_bytes_in_flight = {}\n",
            RELAY_FRAMES * 1_114_112 + 65_536
        ),
    );
    let watch = MemoryWatch::start(&relay).await;
    let refused = Arc::new(AtomicUsize::new(0));
    let overloaded = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let mut sessions = Vec::new();
    let mut max_frame = 0;
    for _ in 0..SESSIONS {
        let ep = endpoint("127.0.0.1", None).await;
        let conn = connect(&ep, &relay).await.unwrap();
        let welcome = hello(&relay, &ep, &conn, &GroupSecret::generate().keys()).await;
        let len = welcome.max_frame;
        max_frame = len;
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend(e2e_tests::random_bytes(len as usize - 1));
        let frame = Arc::new(frame);
        let mut tasks = JoinSet::new();
        for _ in 0..REQUEST_SLOTS {
            let (conn, frame) = (conn.clone(), Arc::clone(&frame));
            let (refused, held) = (Arc::clone(&refused), Arc::clone(&held));
            let overloaded = Arc::clone(&overloaded);
            tasks.spawn(async move {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                let answer = async {
                    match read_message(&mut recv, 1 << 16).await {
                        Ok(Some(Message::Error(e))) => Some(e),
                        // The connection ended (the test is over).
                        _ => None,
                    }
                };
                let write = async {
                    // Ends early when the relay refuses the stream.
                    if send.write_all(&frame).await.is_ok() {
                        held.fetch_add(1, Ordering::SeqCst);
                    }
                    // Hold the stream (and what the relay read of it).
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    e = answer => match e {
                        Some(e) if e.error_code() == ErrorCode::RateLimited => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(e) if e.error_code() == ErrorCode::Overloaded => {
                            overloaded.fetch_add(1, Ordering::SeqCst);
                        }
                        None => {}
                        Some(e) => panic!("unexpected answer {e:?}"),
                    },
                    _ = write => {}
                }
            });
        }
        sessions.push((ep, conn, tasks));
        // One session at a time: each has its streams read or refused
        // before the next starts, so the first 5 take the relay's 20 frames.
        let so_far = sessions.len();
        let deadline = Instant::now() + ANSWER;
        while refused.load(Ordering::SeqCst) + overloaded.load(Ordering::SeqCst)
            < so_far * (REQUEST_SLOTS - 4)
        {
            assert!(
                Instant::now() < deadline,
                "session {so_far} was not answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Wait until the relay holds 20 frames (each reserved in full before
    // a byte of its body is read) and refused every other stream (each
    // refusal is sent before anything of the stream is read).
    let read = RELAY_FRAMES as f64 * f64::from(max_frame);
    let all_refused = SESSIONS * REQUEST_SLOTS - RELAY_FRAMES;
    let refusals = || refused.load(Ordering::SeqCst) + overloaded.load(Ordering::SeqCst);
    let deadline = Instant::now() + ANSWER;
    loop {
        let reserved = relay.metrics().value("sync_relay_in_flight_bytes", &[]);
        if refusals() >= all_refused && reserved >= read {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{reserved} bytes reserved, {} streams refused, {} written",
            refusals(),
            held.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the relay take in the bodies it reads.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let honest = honest_round_trip(&relay).await;
    let (rate_limited, overloaded) = (
        refused.load(Ordering::SeqCst),
        overloaded.load(Ordering::SeqCst),
    );
    let metrics = relay.metrics();
    let in_flight = metrics.value("sync_relay_in_flight_bytes", &[]);
    eprintln!(
        "{SESSIONS} sessions × {REQUEST_SLOTS} nearly complete largest frames: \
         {rate_limited} refused RATE_LIMITED (session share), {overloaded} OVERLOADED \
         (relay-wide), {in_flight} bytes reserved; honest round trip {honest:?}"
    );
    assert_eq!(
        in_flight, read,
        "exactly {RELAY_FRAMES} largest frames are read"
    );
    assert_eq!(rate_limited + overloaded, all_refused);
    // The first 5 sessions got their share of 4 frames each (20, all the
    // relay has) and the rest of their streams refused RATE_LIMITED; the
    // other 3 sessions found the relay's budget spent: OVERLOADED.
    let full = RELAY_FRAMES / 4;
    assert_eq!(rate_limited, full * (REQUEST_SLOTS - 4));
    assert_eq!(overloaded, (SESSIONS - full) * REQUEST_SLOTS);
    assert_eq!(
        metrics.value("sync_relay_budget_refusals", &["session"]),
        rate_limited as f64
    );
    assert_eq!(
        metrics.value("sync_relay_budget_refusals", &["relay"]),
        overloaded as f64
    );
    // 20 frames read (21 MiB), and QUIC holds at most a connection window
    // (two frames) of each session's data in transit: ~38 MiB.
    watch.check(
        &mut relay,
        64.0,
        "nearly complete largest frames on every slot",
    );
    drop(sessions);
}

/// 8 connections start a `Hello` and never finish it, and meanwhile try
/// 100 unidirectional and 100 more bidirectional streams of 1 MB each, and
/// datagrams: before `Hello` a connection may open one bidirectional
/// stream and send 16 KiB in all, and no datagram, so they cost almost
/// nothing (QUIC's defaults would let each buffer ~125 MB per direction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_hello_can_make_the_relay_buffer_almost_nothing() {
    const CONNECTIONS: usize = 8;
    const STREAMS: usize = 100;
    let tmp = tempfile::tempdir().unwrap();
    // The connections stay for the whole test.
    let mut relay = relay_with(tmp.path(), "[limits]\nhello_timeout_s = 120\n");
    let watch = MemoryWatch::start(&relay).await;
    let data = Arc::new(e2e_tests::random_bytes(1_000_000));
    let opened_uni = Arc::new(AtomicUsize::new(0));
    let opened_bi = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        let ep = endpoint("127.0.0.1", None).await;
        let conn = connect(&ep, &relay).await.unwrap();
        // Nor does the relay take QUIC datagrams (it would buffer 1.25 MB
        // of them per connection by default).
        assert_eq!(
            conn.max_datagram_size(),
            None,
            "the relay accepts datagrams"
        );
        // A Hello of 4 KiB that never gets past its first 100 bytes keeps
        // the connection waiting for it.
        let (mut first, first_recv) = conn.open_bi().await.unwrap();
        first.write_all(&4096u32.to_be_bytes()).await.unwrap();
        first.write_all(&[0; 100]).await.unwrap();
        for _ in 0..STREAMS {
            let (c, d, opened) = (conn.clone(), Arc::clone(&data), Arc::clone(&opened_uni));
            tasks.spawn(async move {
                if let Ok(mut send) = c.open_uni().await {
                    opened.fetch_add(1, Ordering::SeqCst);
                    let _ = send.write_all(&d).await;
                    std::future::pending::<()>().await;
                }
            });
            let (c, d, opened) = (conn.clone(), Arc::clone(&data), Arc::clone(&opened_bi));
            tasks.spawn(async move {
                if let Ok((mut send, _recv)) = c.open_bi().await {
                    opened.fetch_add(1, Ordering::SeqCst);
                    let _ = send.write_all(&d).await;
                    std::future::pending::<()>().await;
                }
            });
        }
        conns.push((ep, conn, first, first_recv));
    }
    // Give the streams time to deliver whatever the relay lets them: until
    // the relay's memory has not moved for 2 s.
    let (mut last, mut still) = (0, 0);
    let deadline = Instant::now() + ANSWER;
    while still < 2 && Instant::now() < deadline && relay.exit_status().is_none() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = relay.rss_kib();
        still = if now.abs_diff(last) < 256 {
            still + 1
        } else {
            0
        };
        last = now;
    }
    let (uni, bi) = (
        opened_uni.load(Ordering::SeqCst),
        opened_bi.load(Ordering::SeqCst),
    );
    eprintln!("{CONNECTIONS} connections without Hello: {uni} uni and {bi} more bi streams opened");
    watch.check(&mut relay, 64.0, "connections without Hello, 1 MB streams");
    for (_, conn, _, _) in &conns {
        assert!(
            conn.close_reason().is_none(),
            "the relay closed a connection still within its Hello timeout: {:?}",
            conn.close_reason()
        );
    }
    assert_eq!(uni, 0, "unidirectional streams opened");
    assert_eq!(bi, 0, "bidirectional streams opened besides the Hello's");
    honest_round_trip(&relay).await;
    tasks.abort_all();
}

/// Wait until the relay has counted `n` completed handshakes (its side of a
/// handshake ends a moment after the client's), then return its metrics.
fn after_handshakes(relay: &RelayProcess, n: usize) -> e2e_tests::Metrics {
    let deadline = Instant::now() + ANSWER;
    loop {
        let metrics = relay.metrics();
        let counted = metrics.value("sync_relay_connections", &[]) as usize;
        if counted >= n || Instant::now() > deadline {
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Try `n` connections at once from `ip`; returns those that completed a
/// handshake, and the errors of the others.
async fn connection_burst(
    relay: &RelayProcess,
    ip: &str,
    n: usize,
) -> (Vec<(Endpoint, Connection)>, Vec<String>) {
    // A few endpoints share the attempts (one UDP port each).
    let mut eps = Vec::new();
    for _ in 0..10 {
        eps.push(endpoint(ip, None).await);
    }
    let addr = relay_addr(relay);
    let mut attempts = JoinSet::new();
    for i in 0..n {
        let (ep, addr) = (eps[i % eps.len()].clone(), addr.clone());
        attempts.spawn(async move {
            let r = tokio::time::timeout(ANSWER, ep.connect(addr, sync_protocol::ALPN)).await;
            match r {
                Ok(Ok(conn)) => Ok((ep, conn)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer".into()),
            }
        });
    }
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    while let Some(r) = attempts.join_next().await {
        match r.unwrap() {
            Ok(c) => ok.push(c),
            Err(e) => refused.push(e),
        }
    }
    (ok, refused)
}

/// 500 connections at once from one address, none sending `Hello`: those
/// over the burst (`connections_per_ip_burst` = 50, then 10 a second) are
/// refused before the TLS handshake — they never complete one — and are
/// counted; another address is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_rate_never_complete_a_handshake() {
    const ATTEMPTS: usize = 500;
    const BURST: f64 = 50.0;
    const RATE: f64 = 10.0;
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), "[limits]\nhello_timeout_s = 120\n");
    let started = Instant::now();
    let (ok, refused) = connection_burst(&relay, "127.0.0.1", ATTEMPTS).await;
    let elapsed = started.elapsed();
    let metrics = after_handshakes(&relay, ok.len());
    let allowed = BURST + RATE * elapsed.as_secs_f64();
    eprintln!(
        "{ATTEMPTS} connections from one address in {elapsed:?}: {} completed the handshake \
         (allowed at most {allowed:.0}), {} refused (e.g. {:?}); relay counted {} handshakes, \
         {} refusals, {} address validations",
        ok.len(),
        refused.len(),
        refused.first(),
        metrics.value("sync_relay_connections", &[]),
        metrics.value("sync_relay_connections_refused", &["per_ip_rate"]),
        metrics.value("sync_relay_address_validations", &[]),
    );
    assert!(ok.len() >= BURST as usize, "the burst itself is allowed");
    assert!(
        ok.len() as f64 <= allowed + 1.0,
        "{} handshakes completed from one address",
        ok.len()
    );
    assert_eq!(ok.len() + refused.len(), ATTEMPTS);
    // Every attempt proved its address (QUIC Retry) before it was counted.
    assert!(metrics.value("sync_relay_address_validations", &[]) >= ATTEMPTS as f64);
    assert_eq!(
        metrics.value("sync_relay_connections", &[]),
        ok.len() as f64,
        "the relay completed no other handshake"
    );
    // A refused attempt may be counted more than once (the device repeats
    // its Initial packet before the refusal reaches it).
    assert!(
        metrics.value("sync_relay_connections_refused", &["per_ip_rate"]) >= refused.len() as f64
    );
    // Another address (127.0.0.2 is loopback too) gets a session at once.
    let ep = endpoint("127.0.0.2", None).await;
    let conn = connect(&ep, &relay)
        .await
        .expect("another address connects");
    hello(&relay, &ep, &conn, &GroupSecret::generate().keys()).await;
    drop(ok);
}

/// With `max_connections_awaiting_hello` = 10, of 30 connections that never
/// send `Hello` only 10 complete a handshake; the rest are refused before
/// it and counted. Once those 10 are gone, a device connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_awaiting_hello_are_capped_before_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(
        tmp.path(),
        "[limits]\nmax_connections_awaiting_hello = 10\nhello_timeout_s = 120\n\
         [rate_limits]\nconnections_per_ip_per_s = 1000\nconnections_per_ip_burst = 1000\n",
    );
    let (ok, refused) = connection_burst(&relay, "127.0.0.1", 30).await;
    let metrics = after_handshakes(&relay, ok.len());
    eprintln!(
        "30 connections without Hello, cap 10: {} completed the handshake, {} refused (e.g. {:?})",
        ok.len(),
        refused.len(),
        refused.first()
    );
    assert_eq!(ok.len(), 10);
    assert!(metrics.value("sync_relay_connections_refused", &["awaiting_hello"]) >= 20.0);
    assert_eq!(metrics.value("sync_relay_connections", &[]), 10.0);
    // Close them; the relay notices and counts them out.
    for (ep, conn) in &ok {
        conn.close(0u32.into(), b"bye");
        ep.close().await;
    }
    let deadline = Instant::now() + ANSWER;
    loop {
        let ep = endpoint("127.0.0.1", None).await;
        if let Ok(conn) = connect(&ep, &relay).await {
            hello(&relay, &ep, &conn, &GroupSecret::generate().keys()).await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection accepted after the others left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
