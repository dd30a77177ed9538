//! Model check: proptest drives a backend and the in-memory reference model
//! ([`MemoryStorage`]) with the same random operations and requires the same
//! answer to every one, compared field by field: pushes (ids repeated within
//! a batch and across batches, every quota refusal), pulls (every field of
//! every [`PulledBlob`], `created_at` and payload bytes included, under row
//! and byte limits and expiry), acks, expiry, acknowledged-blob deletion,
//! pruning of idle groups and devices (some groups named live; heads after a
//! prune, where a group created again starts at the head floor), stats
//! (owner rows included); after every step the backend's counter audit must
//! balance (groups' and owners' counters). Time is a counter the operations
//! move, so `created_at` is deterministic.
//!
//! Admission (issue 10) is part of it: sessions open groups that do not
//! exist yet under every [`NewGroup`] (a token that is valid, at its
//! `max_groups`, revoked or unknown; an address within or over its window's
//! new groups, or one more than `max_addresses`; refused; unowned), pushes
//! charge their group's owner (refused over the owner's budget, or after
//! its token was revoked), pushes and acks to groups that do not exist (or
//! no longer do) are refused, tokens are created, revoked and listed, and
//! every deletion must keep the owners' counters exact. Admission and
//! pruning meet: a pruned group gives its place back to its owner (a token
//! at its `max_groups` may create another, as the model's owners derived
//! from the groups say), owner rows left with nothing go once their window
//! ended (`Stats::owners`), and a group created again after a prune,
//! through admission, starts at the head floor.
//!
//! Two operations reach what a one-call-at-a-time check cannot:
//! - **Burst**: several writes (pushes to different groups, some refused by a
//!   quota, the same blob id in two of them, acks, deletions, a WAL
//!   checkpoint) submitted concurrently. SQLite's writer takes them from its
//!   queue into one transaction, each in its own savepoint (group commit).
//!   The model applies them in the order the backend commits them: for a
//!   backend with one write queue, the order of submission, which
//!   [`submit_burst`] makes the queue order; for any other, any order the
//!   model answers identically (the burst must be linearizable).
//! - **Reopen**: the backend is closed (writes then answer `Closed`, as the
//!   model's do) and opened again over the same data; the model keeps its
//!   contents. Heads, counters, acks and the relay-wide byte total (which
//!   SQLite's writer recomputes at open) must survive.
//!
//! The check is backend-generic: [`check`] takes a [`Backend`] that opens the
//! store under test over one test case's data, and [`run`] runs `cases`
//! random cases, each on a fresh backend from a factory
//! ([`crate::storage_contract_tests`] makes the `#[test]`).

use super::Backend;
use crate::*;
use futures::future::BoxFuture;
use proptest::prelude::*;
use std::sync::Arc;
use std::task::Poll;
use sync_protocol::{BlobId, DeviceId, GroupId, PulledBlob};

const QUOTAS: Quotas = Quotas {
    max_group_storage: 400,
    max_group_blobs: 14,
    max_storage: 700,
    address: AddressQuotas {
        max_storage: 200,
        new_groups_per_window: 1,
        window_ms: 30,
        max_addresses: 1,
    },
};
/// Groups 0 and 1 have sessions (and no owner) from the start; groups 2..
/// come into being only through a session under some admission (pushes and
/// acks to them before are refused). A prune may remove any of them.
const GROUPS: u8 = 8;
/// Tokens 0 and 1 exist from the start (limits in [`setup_token`]); token 2
/// is unknown until a `CreateToken` makes it.
const TOKENS: u8 = 3;
/// Addresses that may ask for groups in open mode.
const ADDRESSES: u8 = 2;
const DEVICES: u8 = 3;
/// Larger than anything a case stores: a deletion in a burst takes all
/// eligible blobs, so its answer does not depend on which rows a backend
/// picks first.
const ALL: u32 = 1000;

fn gid(g: u8) -> GroupId {
    GroupId([g + 1; 32])
}

fn dev(d: u8) -> DeviceId {
    DeviceId([d + 1; 32])
}

fn token(t: u8) -> TokenHash {
    TokenHash::of(&sync_protocol::AccessToken([t + 1; 32]))
}

fn address(a: u8) -> AddressKey {
    AddressKey::of(std::net::IpAddr::from([192, 0, 2, a + 1]))
}

/// Token `t` as created at `now`: token 0 may own 2 groups and 250 bytes,
/// the others 1 group and 120 bytes.
fn setup_token(t: u8, now: i64) -> NewToken {
    NewToken {
        hash: token(t),
        label: (t == 0).then(|| format!("token {t}")),
        created_at_ms: now,
        max_groups: if t == 0 { 2 } else { 1 },
        max_storage: if t == 0 { 250 } else { 120 },
    }
}

/// How a session asks for its group if the group does not exist.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Admit {
    Token(u8),
    Address(u8),
    Refuse,
    Unowned,
}

impl Admit {
    fn new_group(self) -> NewGroup {
        match self {
            Admit::Token(t) => NewGroup::Token(token(t)),
            Admit::Address(a) => NewGroup::Address(address(a)),
            Admit::Refuse => NewGroup::Refuse,
            Admit::Unowned => NewGroup::Unowned,
        }
    }
}

fn admit() -> impl Strategy<Value = Admit> {
    prop_oneof![
        4 => (0..TOKENS).prop_map(Admit::Token),
        4 => (0..ADDRESSES).prop_map(Admit::Address),
        1 => Just(Admit::Refuse),
        1 => Just(Admit::Unowned),
    ]
}

/// A write, with arguments relative to the state (resolved by [`prepare`]).
#[derive(Debug, Clone)]
pub(crate) enum Write {
    /// Items are (blob id, payload length, TTL).
    Push {
        group: u8,
        device: u8,
        items: Vec<(u8, u8, i64)>,
    },
    /// `back` 0 acks one beyond the head (refused); n > 0 acks head − (n − 1).
    Ack {
        group: u8,
        device: u8,
        back: u8,
    },
    OpenSession {
        group: u8,
        device: u8,
        admit: Admit,
    },
    CreateToken {
        token: u8,
    },
    RevokeToken {
        token: u8,
    },
    /// One `delete_expired` taking everything expired.
    ExpireAll,
    /// One `delete_acked` taking everything acknowledged.
    DeleteAckedAll {
        window: i64,
    },
    /// One `prune_idle` taking everything idle for `window`, sparing the
    /// groups whose bit is set in `live`.
    PruneIdleAll {
        window: i64,
        live: u8,
    },
    Maintenance,
}

/// One step of a test case.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Write(Write),
    /// Writes submitted concurrently (group-committed by SQLite).
    Burst(Vec<Write>),
    Pull {
        group: u8,
        after_back: u8,
        max_blobs: u32,
        max_bytes: usize,
    },
    Tick(i64),
    /// Delete expired blobs in batches of 3 until a batch comes back short.
    Expire,
    /// Delete acknowledged blobs in batches of 3 likewise.
    DeleteAcked {
        window: i64,
    },
    /// Delete expired blobs, then prune idle devices and groups in batches
    /// of 3 until both counts come back short, sparing the groups whose bit
    /// is set in `live` (what one cleanup run does).
    PruneIdle {
        window: i64,
        live: u8,
    },
    Stats,
    /// List the tokens.
    Tokens,
    /// Close the backend and open it again over the same data.
    Reopen,
}

fn push() -> impl Strategy<Value = Write> {
    (
        data_group(),
        0..DEVICES,
        prop::collection::vec((0..24u8, 0..60u8, 1..40i64), 1..6),
    )
        .prop_map(|(group, device, items)| Write::Push {
            group,
            device,
            items,
        })
}

/// The group a push, ack or pull goes to: mostly one of the first three, so
/// the others come into being mostly through a session under an admission.
fn data_group() -> impl Strategy<Value = u8> {
    prop_oneof![3 => 0..3u8, 1 => 0..GROUPS]
}

fn open_session() -> impl Strategy<Value = Write> {
    (0..GROUPS, 0..DEVICES, admit()).prop_map(|(group, device, admit)| Write::OpenSession {
        group,
        device,
        admit,
    })
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        8 => push(),
        3 => (data_group(), 0..DEVICES, 0..4u8)
            .prop_map(|(group, device, back)| Write::Ack { group, device, back }),
        3 => open_session(),
        1 => (0..TOKENS).prop_map(|token| Write::CreateToken { token }),
        1 => (0..TOKENS).prop_map(|token| Write::RevokeToken { token }),
        1 => Just(Write::ExpireAll),
        1 => (0..30i64).prop_map(|window| Write::DeleteAckedAll { window }),
        1 => (0..12i64, 0..8u8).prop_map(|(window, live)| Write::PruneIdleAll { window, live }),
        1 => Just(Write::Maintenance),
    ]
}

/// Operations of one test case.
pub(crate) fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => push().prop_map(Op::Write),
        3 => open_session().prop_map(Op::Write),
        2 => write().prop_map(Op::Write),
        4 => prop::collection::vec(write(), 2..6).prop_map(Op::Burst),
        3 => (data_group(), 0..6u8, 1..5u32, 1..200usize)
            .prop_map(|(group, after_back, max_blobs, max_bytes)| Op::Pull { group, after_back, max_blobs, max_bytes }),
        2 => (1..25i64).prop_map(Op::Tick),
        1 => Just(Op::Expire),
        1 => (0..30i64).prop_map(|window| Op::DeleteAcked { window }),
        2 => (0..12i64, 0..8u8).prop_map(|(window, live)| Op::PruneIdle { window, live }),
        1 => Just(Op::Stats),
        1 => Just(Op::Tokens),
        1 => Just(Op::Reopen),
    ];
    prop::collection::vec(op, 1..max)
}

/// A call with absolute arguments: what the backend and the model both run.
#[derive(Clone)]
enum Call {
    Push(GroupId, DeviceId, Vec<NewBlob>, i64),
    Ack(GroupId, DeviceId, u64, i64),
    OpenSession(GroupId, DeviceId, i64, NewGroup),
    CreateToken(NewToken),
    RevokeToken(String, i64),
    Tokens,
    DeleteExpired(i64, u32),
    DeleteAcked(i64, u32),
    PruneIdle(i64, u32, Vec<GroupId>),
    Maintenance,
    Head(GroupId),
    Pull(GroupId, u64, u32, usize, i64),
    DrainExpired(i64),
    DrainAcked(i64),
    DrainIdle(i64, Vec<GroupId>),
    Stats,
}

/// A pulled blob with every field shown in failure messages (the
/// protocol's `Debug` prints only the payload's length).
#[derive(Debug, PartialEq)]
struct Blob {
    cursor: u64,
    blob_id: BlobId,
    sender: DeviceId,
    created_at: u64,
    payload: Vec<u8>,
}

/// An answer, errors included, comparable as a whole.
#[derive(Debug, PartialEq)]
enum Answer {
    Pushed(Result<PushOutcome, String>),
    Cursor(Result<u64, String>),
    Page(Result<(bool, Vec<Blob>), String>),
    Deleted(Result<Deleted, String>),
    Pruned(Result<Pruned, String>),
    Stats(Result<StorageStats, String>),
    Done(Result<(), String>),
    Opened(Result<OpenedSession, String>),
    Token(Result<TokenInfo, String>),
    Tokens(Result<Vec<TokenInfo>, String>),
}

fn ans<T>(r: Result<T, StorageError>) -> Result<T, String> {
    r.map_err(|e| format!("{e:?}"))
}

fn page(p: PullPage) -> (bool, Vec<Blob>) {
    // Exhaustive destructuring: a field added to either type must be
    // compared here before this compiles.
    let PullPage { blobs, complete } = p;
    let blobs = blobs
        .into_iter()
        .map(|b| {
            let PulledBlob {
                cursor,
                blob_id,
                sender,
                created_at,
                payload,
            } = b;
            Blob {
                cursor,
                blob_id,
                sender,
                created_at,
                payload,
            }
        })
        .collect();
    (complete, blobs)
}

async fn drain(s: &dyn Storage, expired: bool, arg: i64) -> Result<Deleted, StorageError> {
    let mut total = Deleted::default();
    loop {
        let d = if expired {
            s.delete_expired(arg, 3).await?
        } else {
            s.delete_acked(arg, 3).await?
        };
        total.blobs += d.blobs;
        total.bytes += d.bytes;
        if d.blobs < 3 {
            return Ok(total);
        }
    }
}

/// A live session of `dev(0)` on each of `groups`: the groups are spared,
/// and of their devices only `dev(0)` (the others are pruned when idle).
fn live(groups: Vec<GroupId>) -> LiveGroups {
    Arc::new(move || groups.iter().map(|g| (*g, dev(0))).collect())
}

/// The groups whose bit is set in `mask`.
fn live_groups(mask: u8) -> Vec<GroupId> {
    (0..GROUPS)
        .filter(|g| mask & (1 << g) != 0)
        .map(gid)
        .collect()
}

async fn drain_idle(
    s: &dyn Storage,
    before: i64,
    spared: Vec<GroupId>,
) -> Result<Pruned, StorageError> {
    let mut total = Pruned::default();
    loop {
        let p = s.prune_idle(before, 3, live(spared.clone())).await?;
        total.groups += p.groups;
        total.devices += p.devices;
        total.owners += p.owners;
        if p.groups < 3 && p.devices < 3 && p.owners < 3 {
            return Ok(total);
        }
    }
}

fn run_call<'a>(s: &'a dyn Storage, call: &'a Call) -> BoxFuture<'a, Answer> {
    Box::pin(async move {
        match call.clone() {
            Call::Push(group, sender, items, now_ms) => Answer::Pushed(ans(s
                .push(PushRequest {
                    group,
                    sender,
                    items,
                    now_ms,
                })
                .await)),
            Call::Ack(g, d, cursor, now) => Answer::Cursor(ans(s.ack(g, d, cursor, now).await)),
            Call::OpenSession(g, d, now, new_group) => {
                Answer::Opened(ans(s.open_session(g, d, now, new_group).await))
            }
            Call::CreateToken(t) => Answer::Token(ans(s.create_token(t).await)),
            Call::RevokeToken(id, now) => Answer::Token(ans(s.revoke_token(&id, now).await)),
            Call::Tokens => Answer::Tokens(ans(s.tokens().await)),
            Call::DeleteExpired(now, limit) => {
                Answer::Deleted(ans(s.delete_expired(now, limit).await))
            }
            Call::DeleteAcked(since, limit) => {
                Answer::Deleted(ans(s.delete_acked(since, limit).await))
            }
            Call::PruneIdle(before, limit, spared) => {
                Answer::Pruned(ans(s.prune_idle(before, limit, live(spared)).await))
            }
            Call::DrainIdle(before, spared) => {
                Answer::Pruned(ans(drain_idle(s, before, spared).await))
            }
            Call::Maintenance => Answer::Done(ans(s.maintenance().await)),
            Call::Head(g) => Answer::Cursor(ans(s.head(g).await)),
            Call::Pull(g, after, rows, bytes, now) => {
                Answer::Page(ans(s.pull_page(g, after, rows, bytes, now).await).map(page))
            }
            Call::DrainExpired(now) => Answer::Deleted(ans(drain(s, true, now).await)),
            Call::DrainAcked(since) => Answer::Deleted(ans(drain(s, false, since).await)),
            Call::Stats => Answer::Stats(ans(s.stats().await)),
        }
    })
}

/// Submit `calls` concurrently and collect their answers in submission
/// order. Each call's future is polled once, in order, before all are
/// awaited together: one poll runs a write up to its wait for the answer, so it is in
/// the backend's queue (SQLite: the writer's FIFO channel) before the next is
/// submitted, and the writer task cannot run in between (the test runtime
/// has one thread and this loop does not yield). `unconstrained` keeps
/// tokio's cooperative budget from turning a ready send into a yield.
async fn submit_burst(s: &dyn Storage, calls: &[Call]) -> Vec<Answer> {
    let mut futures: Vec<_> = calls.iter().map(|c| run_call(s, c)).collect();
    let mut answers: Vec<Option<Answer>> = calls.iter().map(|_| None).collect();
    tokio::task::unconstrained(async {
        for (f, a) in futures.iter_mut().zip(answers.iter_mut()) {
            if let Poll::Ready(done) = futures::poll!(f.as_mut()) {
                *a = Some(done);
            }
        }
    })
    .await;
    // Then all together: a backend whose calls are transactions of their
    // own (PostgreSQL) may have one call wait for a row lock another holds
    // until it is polled to its commit, so none may wait for another here.
    futures::future::join_all(futures.into_iter().zip(answers).map(|(f, a)| async move {
        match a {
            Some(done) => done,
            None => f.await,
        }
    }))
    .await
}

/// All orders of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            all.push(q);
        }
    }
    all
}

/// Keep the model states that answer `calls` exactly as the backend did
/// (`got`), applying the calls in one of `orders`; every order that matches
/// yields a successor state (duplicates dropped). On no match, the error
/// shows the first model's answers in submission order.
async fn follow(
    models: Vec<MemoryStorage>,
    calls: &[Call],
    got: &[Answer],
    orders: &[Vec<usize>],
) -> Result<Vec<MemoryStorage>, String> {
    let mut next: Vec<MemoryStorage> = Vec::new();
    let mut expected = None;
    for model in &models {
        for order in orders {
            let m = model.fork();
            let mut answers: Vec<Option<Answer>> = calls.iter().map(|_| None).collect();
            for &i in order {
                answers[i] = Some(run_call(&m, &calls[i]).await);
            }
            let answers: Vec<Answer> = answers.into_iter().flatten().collect();
            if answers == got {
                if !next.iter().any(|n| n.same_contents(&m)) {
                    next.push(m);
                }
            } else if expected.is_none() {
                expected = Some(answers);
            }
        }
    }
    if next.is_empty() {
        return Err(format!(
            "backend answered {got:#?}\nmodel answers {:#?}",
            expected.unwrap_or_default()
        ));
    }
    Ok(next)
}

/// Resolve a write's relative arguments against the backend's state.
async fn prepare(s: &dyn Storage, w: &Write, now: i64, salt: &mut u32) -> Call {
    match w {
        Write::Push {
            group,
            device,
            items,
        } => {
            let items = items
                .iter()
                .map(|&(id, len, ttl)| {
                    // Payload bytes unique to this item: a payload stored
                    // under the wrong id, torn or overwritten by a later
                    // push of the same id shows.
                    *salt += 1;
                    let seed = salt.to_le_bytes();
                    NewBlob {
                        blob_id: BlobId([id; 16]),
                        payload: (0..usize::from(len))
                            .map(|i| seed[i % 4] ^ id ^ (i as u8).wrapping_mul(31))
                            .collect(),
                        expires_at_ms: now + ttl,
                    }
                })
                .collect();
            Call::Push(gid(*group), dev(*device), items, now)
        }
        Write::Ack {
            group,
            device,
            back,
        } => {
            let head = s.head(gid(*group)).await.expect("head");
            let cursor = if *back == 0 {
                head + 1
            } else {
                head.saturating_sub(u64::from(*back) - 1)
            };
            Call::Ack(gid(*group), dev(*device), cursor, now)
        }
        Write::OpenSession {
            group,
            device,
            admit,
        } => Call::OpenSession(gid(*group), dev(*device), now, admit.new_group()),
        Write::CreateToken { token } => Call::CreateToken(setup_token(*token, now)),
        Write::RevokeToken { token: t } => Call::RevokeToken(token(*t).public_id(), now),
        Write::ExpireAll => Call::DeleteExpired(now, ALL),
        Write::DeleteAckedAll { window } => Call::DeleteAcked(now - window, ALL),
        Write::PruneIdleAll { window, live } => {
            Call::PruneIdle(now - window, ALL, live_groups(*live))
        }
        Write::Maintenance => Call::Maintenance,
    }
}

/// Run `ops` against the store `backend` opens and against the model.
pub(crate) async fn check(backend: &mut dyn Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut store = backend.open(QUOTAS).await;
    let mut models = vec![MemoryStorage::new(QUOTAS)];
    let mut now: i64 = 1000;
    let mut salt = 0;
    let setup: Vec<Call> = (0..2)
        .flat_map(|g| {
            (0..DEVICES).map(move |d| Call::OpenSession(gid(g), dev(d), 1000, NewGroup::Unowned))
        })
        .chain((0..2).map(|t| Call::CreateToken(setup_token(t, 1000))))
        .collect();
    for (step, op) in std::iter::once(None)
        .chain(ops.iter().map(Some))
        .enumerate()
    {
        let s = &*store;
        let calls: Vec<Call> = match op {
            None => setup.clone(),
            Some(Op::Write(w)) => vec![prepare(s, w, now, &mut salt).await],
            Some(Op::Burst(ws)) => {
                let mut calls = Vec::new();
                for w in ws {
                    calls.push(prepare(s, w, now, &mut salt).await);
                }
                calls
            }
            Some(Op::Pull {
                group,
                after_back,
                max_blobs,
                max_bytes,
            }) => {
                let g = gid(*group);
                let head = s.head(g).await.expect("head");
                let after = head.saturating_sub(u64::from(*after_back));
                vec![
                    Call::Head(g),
                    Call::Pull(g, after, *max_blobs, *max_bytes, now),
                ]
            }
            Some(Op::Tick(dt)) => {
                now += dt;
                Vec::new()
            }
            Some(Op::Expire) => vec![Call::DrainExpired(now)],
            Some(Op::DeleteAcked { window }) => vec![Call::DrainAcked(now - window)],
            Some(Op::PruneIdle { window, live }) => {
                // As the cleanup task runs them: expiry first, then pruning,
                // then every group's head (a pruned group's is the floor).
                // Stats and tokens show the owners' rows and counts after it.
                let mut calls = vec![
                    Call::DrainExpired(now),
                    Call::DrainIdle(now - window, live_groups(*live)),
                    Call::Stats,
                    Call::Tokens,
                ];
                calls.extend((0..GROUPS).map(|g| Call::Head(gid(g))));
                calls
            }
            Some(Op::Stats) => vec![Call::Stats],
            Some(Op::Tokens) => vec![Call::Tokens],
            Some(Op::Reopen) => {
                store.close().await;
                for m in &models {
                    m.close().await;
                }
                // A closed store refuses writes; so does the closed model.
                let refused = [
                    Call::Push(gid(0), dev(0), vec![], now),
                    Call::Ack(gid(0), dev(0), 0, now),
                ];
                for c in &refused {
                    let got = run_call(&*store, c).await;
                    for m in &models {
                        prop_assert_eq!(&got, &run_call(m, c).await, "step {}: {:?}", step, op);
                    }
                }
                drop(store);
                store = backend.open(QUOTAS).await;
                models = models.iter().map(MemoryStorage::fork).collect();
                // Counters, the relay-wide total and the tokens as the
                // reopened backend reads them back.
                vec![Call::Stats, Call::Tokens]
            }
        };
        let s = &*store;
        let in_order = vec![(0..calls.len()).collect()];
        let (got, orders) = match op {
            Some(Op::Burst(_)) if !backend.commits_in_submission_order() => {
                (submit_burst(s, &calls).await, permutations(calls.len()))
            }
            Some(Op::Burst(_)) => (submit_burst(s, &calls).await, in_order),
            _ => {
                let mut got = Vec::new();
                for c in &calls {
                    got.push(run_call(s, c).await);
                }
                (got, in_order)
            }
        };
        models = follow(models, &calls, &got, &orders)
            .await
            .map_err(|e| TestCaseError::fail(format!("step {step}: {op:?}\n{e}")))?;
        let audit = s.audit().await.expect("audit");
        prop_assert_eq!(audit.mismatched_groups, 0, "step {}: {:?}", step, audit);
        prop_assert_eq!(audit.mismatched_owners, 0, "step {}: {:?}", step, audit);
        prop_assert_eq!(audit.counted_bytes, audit.actual_bytes, "step {}", step);
        prop_assert_eq!(audit.counted_blobs, audit.actual_blobs, "step {}", step);
    }
    store.close().await;
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Run `cases` random cases of at most 50 operations, each against a fresh
/// backend from `factory` (which returns `None`, having said why, when the
/// backend is not available: then nothing runs). Panics with the shrunk
/// failing case.
pub fn run(cases: u32, factory: super::Factory) {
    let rt = runtime();
    let Some(probe) = rt.block_on(factory()) else {
        return;
    };
    drop(probe);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&ops(50), |ops| {
        let rt = runtime();
        let mut backend = rt
            .block_on(factory())
            .ok_or_else(|| TestCaseError::fail("the backend went away"))?;
        rt.block_on(check(&mut *backend, ops))
    });
    if let Err(err) = result {
        panic!("model check failed: {err}");
    }
}
