//! Sequence numbers reserved in blocks (docs/client.md "Sequence numbers",
//! docs/security.md "Blocks of sequence numbers") against the real relay: two
//! long-lived stores of one home pushing at once never share a number, and
//! the unused numbers of a block whose owner died are voided by the next run
//! — receivers report no gap for them, but still do for numbers a push
//! journal holds back.

use e2e_tests::{LibDevice, RelayProcess};
use std::path::Path;
use sync_client::journal::{JOURNAL_VERSION, Journals, PushJournal};
use sync_client::{GroupSecret, PullEvent, PushOptions, StateStore, SyncClient};

/// Pull everything into a temp dir: (messages, gaps, withheld, replays).
async fn pull_all(
    client: &SyncClient,
    state: &mut StateStore,
) -> (Vec<(String, u64)>, Vec<(u64, u64)>, usize, usize) {
    let out = tempfile::tempdir().unwrap();
    let (mut messages, mut gaps, mut withheld, mut replays) = (Vec::new(), Vec::new(), 0, 0);
    client
        .pull(state, out.path(), &mut |e| match e {
            PullEvent::Message { sender, seq, .. } => messages.push((sender, seq)),
            PullEvent::Gap { first, last, .. } => gaps.push((first, last)),
            PullEvent::Withheld { .. } => withheld += 1,
            PullEvent::Replay { .. } => replays += 1,
            _ => {}
        })
        .await
        .unwrap();
    (messages, gaps, withheld, replays)
}

fn home_of(state: &StateStore) -> &Path {
    state.dir()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_block_holders_of_one_home_never_reuse_a_number() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("data"));
    let secret = GroupSecret::generate();
    let a = LibDevice::new(&relay.address, &secret);
    let b = LibDevice::new(&relay.address, &secret);
    let mut s1 = StateStore::open(a.state.path()).unwrap();
    let mut s2 = StateStore::open(a.state.path()).unwrap();
    s1.use_seq_blocks();
    s2.use_seq_blocks();
    let (c1, c2) = (a.connect().await, a.connect().await);
    const EACH: usize = 150;
    let push = |c: SyncClient, mut s: StateStore| async move {
        for i in 0..EACH {
            c.push_messages(&mut s, &[vec![i as u8; 8]], &PushOptions::default())
                .await
                .unwrap();
        }
        c.release_seqs(&mut s).await.unwrap();
        c.close().await;
    };
    tokio::join!(push(c1, s1), push(c2, s2));
    let receiver = b.connect().await;
    let mut rs = b.state;
    let (messages, gaps, withheld, replays) = pull_all(&receiver, &mut rs).await;
    assert_eq!(messages.len(), 2 * EACH, "every message applied once");
    let mut seqs: Vec<u64> = messages.iter().map(|m| m.1).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 2 * EACH, "no number used twice");
    assert_eq!((gaps, withheld, replays), (vec![], 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holders_block_is_voided_by_the_next_run_but_journaled_numbers_stay_gaps() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("data"));
    let secret = GroupSecret::generate();
    let a = LibDevice::new(&relay.address, &secret);
    let b = LibDevice::new(&relay.address, &secret);
    let path = a.state.path().to_path_buf();
    {
        let mut s = StateStore::open(&path).unwrap();
        s.use_seq_blocks();
        let c = a.connect().await;
        for i in 0..3u8 {
            c.push_messages(&mut s, &[vec![i; 8]], &PushOptions::default())
                .await
                .unwrap();
        }
        // A push of unknown length draws 4 and 5 from the block and names
        // them in its journal; it never gets to send them (the relay never
        // has them: a real gap for receivers until the push is abandoned).
        let home = home_of(&s).to_path_buf();
        let journals = Journals::at(home.join("transfers"));
        let file = journals.path_for(&stdin_journal(0, 0));
        let first = s
            .reserve_seqs_then(2, &file, |first| {
                journals.save(&stdin_journal(first, first + 1))
            })
            .unwrap();
        assert_eq!(first, 4);
        c.close().await;
        // Dropped without release_seqs: as after kill -9, the block's lock
        // is gone and the rest of it 6..=64 is left unused.
    }
    let receiver = b.connect().await;
    let mut rs = StateStore::open(b.state.path()).unwrap();
    let (messages, gaps, ..) = pull_all(&receiver, &mut rs).await;
    assert_eq!(messages.len(), 3);
    assert!(gaps.is_empty());
    // The next run (a one-shot push) claims the dead block and voids it.
    let mut s = StateStore::open(&path).unwrap();
    let c = a.connect().await;
    c.push_messages(&mut s, &[b"after".to_vec()], &PushOptions::default())
        .await
        .unwrap();
    c.close().await;
    let (messages, gaps, withheld, replays) = pull_all(&receiver, &mut rs).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1, 65, "the next number after the dead block");
    assert_eq!(gaps, vec![(4, 5)], "only the journaled numbers are missing");
    assert_eq!((withheld, replays), (0, 0));
    // Nothing is left to void: the block is forgotten.
    assert!(s.pending_voids().unwrap().is_empty());
}

fn stdin_journal(first: u64, last: u64) -> PushJournal {
    PushJournal {
        version: JOURNAL_VERSION,
        source: None,
        name: "from-stdin".into(),
        mode: 0o644,
        ttl_s: None,
        file_id: hex::encode([9u8; 16]),
        chunk_size: 1000,
        chunks: None,
        first_seq: first,
        last_seq: last,
        acked: 0,
        cursors: None,
        complete: None,
        lineage: None,
        generation: 0,
        device: None,
        completed_at_ms: 0,
    }
}

/// Wait for the next message event of `sub` (counting it in `got`).
async fn next_message(sub: &mut sync_client::client::pull::Subscription, got: &mut usize) {
    use sync_client::client::pull::SubscriptionEvent;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(30), sub.next()).await {
            Ok(Some(SubscriptionEvent::Event(PullEvent::Message { .. }))) => {
                *got += 1;
                return;
            }
            Ok(Some(SubscriptionEvent::Failed(e))) => panic!("following failed: {e}"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("{got} messages arrived, then none"),
        }
    }
}

/// The relay's count of ack requests (by `op`).
const ACKS: &str = "sync_relay_request_duration_seconds";

/// The relay's acknowledged cursor of `device` (read from its database).
async fn acked_cursor(relay: &RelayProcess, device: &iroh::SecretKey) -> i64 {
    use sqlx::Connection;
    let url = format!("sqlite://{}?mode=ro", relay.db_path().display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let acked: i64 =
        sqlx::query_scalar("SELECT MAX(acked_cursor) FROM devices WHERE device_id = ?1")
            .bind(&device.public().as_bytes()[..])
            .fetch_one(&mut db)
            .await
            .unwrap();
    db.close().await.unwrap();
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_coalesces_acks_and_stopping_sends_the_last() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("data"));
    let secret = GroupSecret::generate();
    let a = LibDevice::new(&relay.address, &secret);
    let b = LibDevice::new(&relay.address, &secret);
    let b_key = b.opts.device_key.clone();
    let out = tempfile::tempdir().unwrap();
    let follower = std::sync::Arc::new(b.connect().await);
    // Held far longer than the test: after the first pull's ack, only the
    // final one is sent.
    follower.set_ack_interval(std::time::Duration::from_secs(3600));
    let mut sub = follower.subscribe(b.state, out.path().to_path_buf());
    let pusher = a.connect().await;
    let mut sa = a.state;
    sa.use_seq_blocks();
    const N: usize = 30;
    let mut head = 0;
    let mut got = 0;
    for i in 0..N {
        let ok = pusher
            .push_messages(&mut sa, &[vec![i as u8; 16]], &PushOptions::default())
            .await
            .unwrap();
        head = ok.last().unwrap().head;
        if i == 0 {
            // The first cursor is acked at once.
            next_message(&mut sub, &mut got).await;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while relay.metrics().value(ACKS, &["ack"]) < 1.0 {
                assert!(std::time::Instant::now() < deadline, "no first ack");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    while got < N {
        next_message(&mut sub, &mut got).await;
    }
    // Later acks are held by the coalescer, but for the ones the follower
    // owes at half the relay's inline caps (every `INLINE_MAX_FRAMES / 2`
    // deliveries taken inline: docs/protocol.md "Version 3: inline
    // delivery"); the newest is sent on the way out.
    let held = relay.metrics().value(ACKS, &["ack"]);
    let at_caps = (N / (sync_protocol::limits::INLINE_MAX_FRAMES / 2)) as f64;
    assert!(held <= 1.0 + at_caps, "acks held: {held} for {N} messages");
    let state = sub.stop().await.unwrap();
    assert_eq!(state.state.cursor, head);
    assert_eq!(acked_cursor(&relay, &b_key).await, head as i64);
    assert_eq!(
        relay.metrics().value(ACKS, &["ack"]),
        held + 1.0,
        "one ack at the stop"
    );
    pusher.release_seqs(&mut sa).await.unwrap();
}
