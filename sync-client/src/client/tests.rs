//! The client's retry loops against a scripted in-process relay (a real
//! iroh endpoint on loopback that answers `Hello`s and requests as a test
//! says), with fixed jitter and a sleeper that records every wait instead
//! of sleeping: the tests see exactly the waits [`SyncClient::call`] and
//! the reconnect loop take, and that they give up after `max_attempts`.

use super::*;
use crate::relay_addr::RelayAddr;
use iroh::endpoint::{Connection, VarInt, presets};
use iroh::{Endpoint, RelayMode, SecretKey};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use sync_protocol::limits::{
    DEFAULT_MAX_BATCH, DEFAULT_MAX_BLOB_SIZE, HANDSHAKE_MAX_FRAME, max_frame_for_blob_size,
};
use sync_protocol::{
    AckOk, BlobId, CloseCode, ErrorMsg, Message, PROTOCOL_VERSION, PullBatch, PulledBlob, PushItem,
    PushOk, PushResult, Welcome, read_message, write_message,
};
use tokio_util::task::AbortOnDropHandle;

/// Generous deadline for a whole scenario (they take well under a second).
const DEADLINE: Duration = Duration::from_secs(60);

/// Waits recorded past this many mean the loop never gives up.
const RUNAWAY: usize = 100;

/// What the scripted relay does with connection number `n`'s `Hello`.
#[derive(Debug, Clone, Copy)]
enum AtHello {
    Welcome,
    /// A `Welcome` announcing this group head.
    WelcomeAt(u64),
    /// An `Error` frame with this code and retry hint.
    Refuse(ErrorCode, Option<u32>),
}

/// What it does with request number `r` of a welcomed connection.
#[derive(Debug, Clone, Copy)]
enum OnRequest {
    /// Answer a `Push` with `PushOk`.
    Serve,
    /// Answer with an `Error` frame; the session goes on.
    Refuse(ErrorCode, Option<u32>),
    /// Close the connection (the client sees it lost).
    Drop,
    /// Answer with empty `PullBatch { more: true }` frames until the client
    /// stops reading (at most [`RUNAWAY_FRAMES`]).
    EmptyBatches,
    /// Answer a `Pull` after 0 with blobs at cursors 1 and 2 under a head
    /// of 0 (read before they were committed, as the protocol allows), any
    /// later `Pull` with nothing under head 2.
    BlobsPastTheHead,
    /// Answer a `Pull` with one empty, final `PullBatch` announcing this
    /// head (anything else as [`OnRequest::Serve`]).
    EmptyWithHead(u64),
}

/// Frames [`OnRequest::EmptyBatches`] sends at most: a client still reading
/// after these never stops.
const RUNAWAY_FRAMES: usize = 10_000;

type HelloScript = dyn Fn(usize) -> AtHello + Send + Sync;
type RequestScript = dyn Fn(usize, usize) -> OnRequest + Send + Sync;

/// A relay that follows a script, counting connections and requests.
struct ScriptedRelay {
    addr: RelayAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    _endpoint: Endpoint,
    _accept: AbortOnDropHandle<()>,
}

impl ScriptedRelay {
    async fn start(
        at_hello: impl Fn(usize) -> AtHello + Send + Sync + 'static,
        on_request: impl Fn(usize, usize) -> OnRequest + Send + Sync + 'static,
    ) -> Self {
        let endpoint = Endpoint::builder(presets::Minimal)
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0".parse::<SocketAddr>().unwrap())
            .unwrap()
            .alpns(vec![sync_protocol::ALPN.to_vec()])
            .bind()
            .await
            .unwrap();
        let addr = RelayAddr {
            node_id: endpoint.id(),
            host_port: endpoint.bound_sockets()[0].to_string(),
        };
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let at_hello: Arc<HelloScript> = Arc::new(at_hello);
        let on_request: Arc<RequestScript> = Arc::new(on_request);
        let relay_id = DeviceId(*endpoint.id().as_bytes());
        let ep = endpoint.clone();
        let (conns, reqs) = (Arc::clone(&connections), Arc::clone(&requests));
        let accept = AbortOnDropHandle::new(tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            while let Some(incoming) = ep.accept().await {
                let Ok(conn) = incoming.await else { continue };
                let n = conns.fetch_add(1, Ordering::SeqCst);
                let (at_hello, on_request, reqs) = (
                    Arc::clone(&at_hello),
                    Arc::clone(&on_request),
                    Arc::clone(&reqs),
                );
                sessions.spawn(async move {
                    serve(conn, relay_id, at_hello(n), |r| on_request(n, r), &reqs).await;
                });
            }
        }));
        ScriptedRelay {
            addr,
            connections,
            requests,
            _endpoint: endpoint,
            _accept: accept,
        }
    }

    fn options(&self) -> ConnectOptions {
        ConnectOptions {
            relay: self.addr.clone(),
            keys: crate::GroupSecret::from_bytes([1; 32]).keys(),
            device_key: SecretKey::generate(),
            device_name: None,
            connect_timeout: DEADLINE,
            access_token: None,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn error(code: ErrorCode, retry_after_ms: Option<u32>) -> Message {
    let mut e = ErrorMsg::new(code, "scripted");
    e.retry_after_ms = retry_after_ms;
    Message::Error(e)
}

async fn serve(
    conn: Connection,
    relay_id: DeviceId,
    at_hello: AtHello,
    on_request: impl Fn(usize) -> OnRequest,
    requests: &AtomicUsize,
) {
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let Ok(Some(Message::Hello(_))) = read_message(&mut recv, HANDSHAKE_MAX_FRAME).await else {
        return;
    };
    let answer = match at_hello {
        AtHello::Welcome | AtHello::WelcomeAt(_) => Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            relay_id,
            head_cursor: match at_hello {
                AtHello::WelcomeAt(head) => head,
                _ => 0,
            },
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            max_frame: max_frame_for_blob_size(DEFAULT_MAX_BLOB_SIZE),
            max_batch: DEFAULT_MAX_BATCH,
            default_ttl_s: 3600,
            max_ttl_s: 3600,
        }),
        AtHello::Refuse(code, retry) => error(code, retry),
    };
    let _ = write_message(&mut send, &answer, HANDSHAKE_MAX_FRAME).await;
    let _ = send.finish();
    if let AtHello::Refuse(..) = at_hello {
        // Leave the closing to the client, so it reads the refusal.
        conn.closed().await;
        return;
    }
    let mut r = 0;
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let Ok(Some(request)) = read_message(&mut recv, 1 << 21).await else {
            return;
        };
        requests.fetch_add(1, Ordering::SeqCst);
        let answer = match (on_request(r), &request) {
            (OnRequest::EmptyWithHead(head), Message::Pull(_)) => Message::PullBatch(PullBatch {
                blobs: Vec::new(),
                head,
                more: false,
            }),
            (OnRequest::Serve | OnRequest::EmptyWithHead(_), _) => match request {
                Message::Push(push) => Message::PushOk(PushOk {
                    results: push
                        .items
                        .iter()
                        .zip(1..)
                        .map(|(item, cursor)| PushResult {
                            blob_id: item.blob_id,
                            cursor,
                            duplicate: false,
                        })
                        .collect(),
                    head: push.items.len() as u64,
                }),
                Message::Pull(_) => Message::PullBatch(PullBatch {
                    blobs: Vec::new(),
                    head: 0,
                    more: false,
                }),
                Message::Ack(ack) => Message::AckOk(AckOk { cursor: ack.cursor }),
                other => panic!("the scripted relay serves pushes and pulls only, got {other:?}"),
            },
            (OnRequest::EmptyBatches, _) => {
                let empty = Message::PullBatch(PullBatch {
                    blobs: Vec::new(),
                    head: 7,
                    more: true,
                });
                for _ in 0..RUNAWAY_FRAMES {
                    if write_message(&mut send, &empty, 1 << 21).await.is_err() {
                        break;
                    }
                }
                r += 1;
                continue;
            }
            (OnRequest::BlobsPastTheHead, _) => match request {
                Message::Pull(pull) if pull.after == 0 => Message::PullBatch(PullBatch {
                    blobs: (1..=2)
                        .map(|cursor| PulledBlob {
                            cursor,
                            blob_id: BlobId([cursor as u8; 16]),
                            sender: DeviceId([3; 32]),
                            created_at: 0,
                            payload: vec![0; 64],
                        })
                        .collect(),
                    head: 0,
                    more: false,
                }),
                Message::Pull(_) => Message::PullBatch(PullBatch {
                    blobs: Vec::new(),
                    head: 2,
                    more: false,
                }),
                Message::Ack(ack) => Message::AckOk(AckOk { cursor: ack.cursor }),
                other => panic!("BlobsPastTheHead serves pulls only, got {other:?}"),
            },
            (OnRequest::Refuse(code, retry), _) => error(code, retry),
            (OnRequest::Drop, _) => {
                conn.close(VarInt::from_u32(CloseCode::Internal.as_u32()), b"scripted");
                return;
            }
        };
        let _ = write_message(&mut send, &answer, 1 << 21).await;
        let _ = send.finish();
        r += 1;
    }
}

/// Jitter fixed at 1: every wait is its ceiling.
fn full_jitter() -> Jitter {
    Box::new(|| 1.0)
}

/// Pacing with fixed jitter whose sleeper records each wait (when the
/// loop awaits it) and returns at once; its clock is the sum of the waits
/// recorded.
fn recording() -> (Pacing, Arc<Mutex<Vec<Duration>>>) {
    let waits = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&waits);
    let clock = Arc::clone(&waits);
    let pacing = Pacing {
        jitter: full_jitter,
        now: Arc::new(move || clock.lock().unwrap().iter().sum()),
        sleep: Arc::new(move |d| {
            let log = Arc::clone(&log);
            Box::pin(async move {
                let mut log = log.lock().unwrap();
                log.push(d);
                assert!(log.len() <= RUNAWAY, "the retry loop never gives up");
            })
        }),
    };
    (pacing, waits)
}

/// Policy for the tests: ceilings 100, 200, 400, 400 ms, 4 attempts, and a
/// stall timeout no scenario reaches.
fn policy() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(100),
        max_delay: Duration::from_millis(400),
        max_attempts: Some(4),
        give_up_after: None,
        stall_timeout: DEADLINE,
    }
}

/// A fresh link-state channel.
fn link() -> watch::Sender<LinkState> {
    watch::channel(LinkState::Connected { generation: 1 }).0
}

fn ms(list: &[u64]) -> Vec<Duration> {
    list.iter().map(|&m| Duration::from_millis(m)).collect()
}

async fn push_one(client: &SyncClient) -> Result<PushOk> {
    let item = PushItem {
        blob_id: BlobId([9; 16]),
        payload: vec![1, 2, 3],
        ttl_s: None,
    };
    client
        .call(|s| {
            let item = item.clone();
            async move { s.push(vec![item]).await }
        })
        .await
}

async fn within_deadline<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("scenario finished")
}

#[tokio::test]
async fn a_lost_connection_is_retried_with_backoff_until_max_attempts() {
    // The first session drops at its first request; every later Hello is
    // refused as OVERLOADED (retryable), with no retry hint.
    let relay = ScriptedRelay::start(
        |n| match n {
            0 => AtHello::Welcome,
            _ => AtHello::Refuse(ErrorCode::Overloaded, None),
        },
        |_, _| OnRequest::Drop,
    )
    .await;
    let (pacing, waits) = recording();
    let client = SyncClient::connect_paced(&relay.options(), policy(), pacing, link())
        .await
        .unwrap();
    let link = client.link_state();
    let err = within_deadline(push_one(&client)).await.unwrap_err();
    match &err {
        ClientError::GaveUp { attempts, last } => {
            assert_eq!(*attempts, 4);
            assert_eq!(last.relay_code(), Some(ErrorCode::Overloaded), "{last:?}");
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    // One wait before each of the 4 reconnect attempts: the policy's
    // doubling ceilings, capped at 400 ms.
    assert_eq!(*waits.lock().unwrap(), ms(&[100, 200, 400, 400]));
    assert_eq!(relay.connections(), 1 + 4, "first connection + 4 attempts");
    assert_eq!(relay.requests(), 1);
    assert!(
        matches!(
            *link.borrow(),
            LinkState::Reconnecting { attempt: 4, delay, .. } if delay == Duration::from_millis(400)
        ),
        "{:?}",
        *link.borrow()
    );
}

#[tokio::test]
async fn a_reconnect_honours_the_relays_retry_hint_and_then_repeats_the_request() {
    // Session 1 drops; the first reconnect is refused with a 1.5 s retry
    // hint (above the 200 ms ceiling); the second is welcomed.
    let relay = ScriptedRelay::start(
        |n| match n {
            1 => AtHello::Refuse(ErrorCode::Overloaded, Some(1500)),
            _ => AtHello::Welcome,
        },
        |n, _| match n {
            0 => OnRequest::Drop,
            _ => OnRequest::Serve,
        },
    )
    .await;
    let (pacing, waits) = recording();
    let client = SyncClient::connect_paced(&relay.options(), policy(), pacing, link())
        .await
        .unwrap();
    let ok = within_deadline(push_one(&client)).await.unwrap();
    assert_eq!(ok.results[0].cursor, 1);
    assert_eq!(*waits.lock().unwrap(), ms(&[100, 1500]));
    assert_eq!(relay.connections(), 3);
    assert_eq!(relay.requests(), 2, "the request was repeated once");
    assert_eq!(
        *client.link_state().borrow(),
        LinkState::Connected { generation: 2 }
    );
    client.close().await;
}

#[tokio::test]
async fn overloaded_answers_are_retried_with_backoff_until_max_attempts() {
    // The session stays up; every request is refused as OVERLOADED, the
    // third with a 1 s hint.
    let relay = ScriptedRelay::start(
        |_| AtHello::Welcome,
        |_, r| OnRequest::Refuse(ErrorCode::Overloaded, (r == 2).then_some(1000)),
    )
    .await;
    let (pacing, waits) = recording();
    let client = SyncClient::connect_paced(&relay.options(), policy(), pacing, link())
        .await
        .unwrap();
    let err = within_deadline(push_one(&client)).await.unwrap_err();
    assert_eq!(err.relay_code(), Some(ErrorCode::Overloaded), "{err:?}");
    assert_eq!(*waits.lock().unwrap(), ms(&[100, 200, 1000, 400]));
    assert_eq!(relay.requests(), 1 + 4);
    assert_eq!(relay.connections(), 1, "no reconnect for a live session");
    client.close().await;
}

#[tokio::test]
async fn storage_unavailable_is_retried_with_the_relays_hint_at_hello_and_mid_session() {
    // A Hello refused as STORAGE_UNAVAILABLE with the relay's 5 s hint is
    // retried after it; then a request refused so, twice, is retried after
    // the hint each time and repeated once the database is back.
    let relay = ScriptedRelay::start(
        |n| match n {
            0 => AtHello::Refuse(ErrorCode::StorageUnavailable, Some(5000)),
            _ => AtHello::Welcome,
        },
        |_, r| match r {
            0 | 1 => OnRequest::Refuse(ErrorCode::StorageUnavailable, Some(5000)),
            _ => OnRequest::Serve,
        },
    )
    .await;
    let (pacing, waits) = recording();
    let client = SyncClient::connect_paced(&relay.options(), policy(), pacing, link())
        .await
        .unwrap();
    let ok = within_deadline(push_one(&client)).await.unwrap();
    assert_eq!(ok.results[0].cursor, 1);
    assert_eq!(*waits.lock().unwrap(), ms(&[5000, 5000, 5000]));
    assert_eq!(relay.connections(), 2);
    assert_eq!(relay.requests(), 3, "refused twice, then served");
    client.close().await;
}

#[tokio::test]
async fn rate_limited_answers_are_waited_out_up_to_the_cap() {
    // Every request is refused as RATE_LIMITED for 100 s: the client waits
    // each hint until it has waited MAX_RATE_LIMIT_WAIT (300 s) in all.
    let relay = ScriptedRelay::start(
        |_| AtHello::Welcome,
        |_, _| OnRequest::Refuse(ErrorCode::RateLimited, Some(100_000)),
    )
    .await;
    let (pacing, waits) = recording();
    let client = SyncClient::connect_paced(&relay.options(), policy(), pacing, link())
        .await
        .unwrap();
    let err = within_deadline(push_one(&client)).await.unwrap_err();
    assert_eq!(err.relay_code(), Some(ErrorCode::RateLimited), "{err:?}");
    assert_eq!(
        *waits.lock().unwrap(),
        vec![Duration::from_secs(100); 3],
        "waited {MAX_RATE_LIMIT_WAIT:?} in all"
    );
    assert_eq!(relay.requests(), 4);
    client.close().await;
}

/// A pull against the scripted relay into a fresh state and directory.
async fn pull_once(client: &SyncClient) -> Result<crate::PullSummary> {
    let dir = tempfile::tempdir().unwrap();
    let mut state = crate::StateStore::open(dir.path().join("state.json")).unwrap();
    client
        .pull(&mut state, &dir.path().join("out"), &mut |_| {})
        .await
}

#[tokio::test]
async fn pull_waits_out_rate_limits_in_the_same_loop_with_the_same_cap() {
    // Every pull is refused as RATE_LIMITED with the largest hint the wire
    // can carry (49 days): the client waits at most MAX_RATE_LIMIT_WAIT in
    // all, then reports the error.
    let relay = ScriptedRelay::start(
        |_| AtHello::Welcome,
        |_, _| OnRequest::Refuse(ErrorCode::RateLimited, Some(u32::MAX)),
    )
    .await;
    let (pacing, waits) = recording();
    let client = SyncClient::connect_paced(&relay.options(), policy(), pacing, link())
        .await
        .unwrap();
    let err = within_deadline(pull_once(&client)).await.unwrap_err();
    assert_eq!(err.relay_code(), Some(ErrorCode::RateLimited), "{err:?}");
    assert_eq!(*waits.lock().unwrap(), vec![MAX_RATE_LIMIT_WAIT]);
    assert_eq!(relay.requests(), 2);
    client.close().await;
}

#[tokio::test]
async fn pull_retries_a_lost_connection_through_the_same_loop() {
    // The first pull's connection drops; the client reconnects with the
    // policy's backoff and pulls again on the new session.
    let relay = ScriptedRelay::start(
        |_| AtHello::Welcome,
        |n, _| match n {
            0 => OnRequest::Drop,
            _ => OnRequest::Serve,
        },
    )
    .await;
    let (pacing, waits) = recording();
    let client = SyncClient::connect_paced(&relay.options(), policy(), pacing, link())
        .await
        .unwrap();
    let summary = within_deadline(pull_once(&client)).await.unwrap();
    assert_eq!(summary.blobs, 0);
    assert_eq!(*waits.lock().unwrap(), ms(&[100]));
    assert_eq!(relay.connections(), 2);
    client.close().await;
}

#[tokio::test]
async fn huge_retry_hints_are_capped() {
    // OVERLOADED with a 49-day hint, at Hello and on requests: every wait is
    // at most MAX_RATE_LIMIT_WAIT, and the client gives up after
    // max_attempts as usual.
    let relay = ScriptedRelay::start(
        |n| match n {
            0 => AtHello::Welcome,
            _ => AtHello::Refuse(ErrorCode::Overloaded, Some(u32::MAX)),
        },
        |n, _| match n {
            0 => OnRequest::Refuse(ErrorCode::Overloaded, Some(u32::MAX)),
            _ => OnRequest::Serve,
        },
    )
    .await;
    let (pacing, waits) = recording();
    let client = SyncClient::connect_paced(&relay.options(), policy(), pacing, link())
        .await
        .unwrap();
    let err = within_deadline(push_one(&client)).await.unwrap_err();
    assert_eq!(err.relay_code(), Some(ErrorCode::Overloaded), "{err:?}");
    assert_eq!(*waits.lock().unwrap(), vec![MAX_RATE_LIMIT_WAIT; 4]);
    client.close().await;
}

#[tokio::test]
async fn endless_empty_batches_end_the_pull_with_a_protocol_error() {
    let relay = ScriptedRelay::start(|_| AtHello::Welcome, |_, _| OnRequest::EmptyBatches).await;
    let (pacing, _) = recording();
    let client = SyncClient::connect_paced(&relay.options(), policy(), pacing, link())
        .await
        .unwrap();
    let err = within_deadline(pull_once(&client)).await.unwrap_err();
    match &err {
        ClientError::Protocol(m) => assert!(m.contains("empty batches"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_eq!(relay.requests(), 1, "not retried");
    client.close().await;
}

#[tokio::test]
async fn an_empty_answer_with_a_huge_head_does_not_move_the_cursor() {
    // The relay answers every pull with nothing and head u64::MAX. Moving
    // the cursor to that head would skip everything below it for good (and
    // an honest relay would refuse every later pull from it). Its Welcome
    // announces head 41, so the device's cursor is not ahead of the relay.
    let relay = ScriptedRelay::start(
        |_| AtHello::WelcomeAt(41),
        |_, _| OnRequest::EmptyWithHead(u64::MAX),
    )
    .await;
    let (pacing, _) = recording();
    let client = SyncClient::connect_paced(&relay.options(), policy(), pacing, link())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut state = crate::StateStore::open(&path).unwrap();
    state.state.cursor = 41;
    let summary = within_deadline(client.pull(&mut state, &dir.path().join("out"), &mut |_| {}))
        .await
        .unwrap();
    assert_eq!(summary.head, u64::MAX, "reported as the relay said");
    assert_eq!(summary.cursor, 41);
    assert_eq!(state.state.cursor, 41);
    assert_eq!(crate::StateStore::open(&path).unwrap().state.cursor, 41);
    client.close().await;
}

#[tokio::test]
async fn following_waits_when_the_newest_blobs_expired() {
    // The group's head is 5 but its blobs expired: every pull is empty with
    // head 5, and the cursor (of the last blob delivered) stays 0. Following
    // must then wait for a head above 5, not pull again and again because
    // the head is above the cursor.
    let relay = ScriptedRelay::start(
        |_| AtHello::WelcomeAt(5),
        |_, _| OnRequest::EmptyWithHead(5),
    )
    .await;
    let (pacing, _) = recording();
    let client = SyncClient::connect_paced(&relay.options(), policy(), pacing, link())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut state = crate::StateStore::open(dir.path().join("state.json")).unwrap();
    let mut synced = 0;
    within_deadline(client.follow(
        &mut state,
        &dir.path().join("out"),
        &mut |e| {
            if matches!(e, crate::PullEvent::Synced { cursor: 0, head: 5 }) {
                synced += 1;
            }
        },
        tokio::time::sleep(Duration::from_millis(500)),
    ))
    .await
    .unwrap();
    assert_eq!(synced, 1);
    assert_eq!(relay.requests(), 1, "one pull, then waiting");
    client.close().await;
}

#[tokio::test]
async fn reconnecting_gives_up_when_the_time_budget_is_spent() {
    // Unlimited attempts but one second in all: the waits 100, 200, 400 ms
    // fit, the next 400 ms would end past the second, so the client gives
    // up there instead of retrying forever.
    let relay = ScriptedRelay::start(
        |n| match n {
            0 => AtHello::Welcome,
            _ => AtHello::Refuse(ErrorCode::Overloaded, None),
        },
        |_, _| OnRequest::Drop,
    )
    .await;
    let (pacing, waits) = recording();
    let budget = RetryPolicy {
        max_attempts: None,
        give_up_after: Some(Duration::from_secs(1)),
        ..policy()
    };
    let client = SyncClient::connect_paced(&relay.options(), budget, pacing, link())
        .await
        .unwrap();
    let err = within_deadline(push_one(&client)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::GaveUp { attempts: 4, .. }),
        "{err:?}"
    );
    assert_eq!(*waits.lock().unwrap(), ms(&[100, 200, 400]));
    assert_eq!(relay.connections(), 1 + 3);
}

#[tokio::test]
async fn the_first_connect_reports_each_wait_on_the_link() {
    // Every Hello refused as OVERLOADED: each wait before an attempt is
    // announced on the caller's channel, marked as a busy (reachable) relay.
    let relay = ScriptedRelay::start(
        |_| AtHello::Refuse(ErrorCode::Overloaded, None),
        |_, _| OnRequest::Serve,
    )
    .await;
    let (pacing, _) = recording();
    let link = link();
    let mut seen = link.subscribe();
    let err = within_deadline(SyncClient::connect_paced(
        &relay.options(),
        policy(),
        pacing,
        link,
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::GaveUp { attempts: 4, .. }),
        "{err:?}"
    );
    assert!(
        matches!(
            &*seen.borrow_and_update(),
            LinkState::Reconnecting {
                attempt: 4,
                unreachable: false,
                ..
            }
        ),
        "{:?}",
        *seen.borrow()
    );
}

#[tokio::test]
async fn rate_limit_waits_end_with_the_time_budget_too() {
    // A person's command (give_up_after 2 s) is not held for the 5 minutes
    // MAX_RATE_LIMIT_WAIT allows: it waits 2 s in all, then reports.
    let relay = ScriptedRelay::start(
        |_| AtHello::Welcome,
        |_, _| OnRequest::Refuse(ErrorCode::RateLimited, Some(u32::MAX)),
    )
    .await;
    let (pacing, waits) = recording();
    let budget = RetryPolicy {
        give_up_after: Some(Duration::from_secs(2)),
        ..policy()
    };
    let client = SyncClient::connect_paced(&relay.options(), budget, pacing, link())
        .await
        .unwrap();
    let err = within_deadline(pull_once(&client)).await.unwrap_err();
    assert_eq!(err.relay_code(), Some(ErrorCode::RateLimited), "{err:?}");
    assert_eq!(*waits.lock().unwrap(), vec![Duration::from_secs(2)]);
    client.close().await;
}

mod failover;
