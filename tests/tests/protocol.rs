//! Protocol-level checks against the real relay binary, using the client
//! library and raw iroh connections.

use e2e_tests::{LibDevice, RelayProcess};
use iroh::Endpoint;
use std::collections::BTreeSet;
use std::time::Duration;
use sync_client::GroupSecret;
use sync_protocol::{
    BlobId, CloseCode, DeviceId, ErrorCode, Hello, Message, PROTOCOL_VERSION, Proof, Push,
    PushItem, read_message, write_message,
};

/// Generous deadline for an answer or a close the relay owes us: a missed
/// one fails the test instead of passing for "the relay closed".
const DEADLINE: Duration = Duration::from_secs(60);

/// Send `msg` on a new stream and read one answer (None: the stream or the
/// connection is gone). Panics when neither an answer nor the end of the
/// stream arrives within [`DEADLINE`].
async fn exchange(conn: &iroh::endpoint::Connection, msg: &Message) -> Option<Message> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    write_message(&mut send, msg, 1 << 20).await.ok()?;
    send.finish().ok()?;
    tokio::time::timeout(DEADLINE, read_message(&mut recv, 1 << 20))
        .await
        .unwrap_or_else(|_| panic!("no answer to {} within {DEADLINE:?}", msg.kind()))
        .ok()?
}

/// Wait (at most [`DEADLINE`]) for the relay to close `conn`, and return
/// the close code it sent. Panics when the connection stays open or ends
/// any other way (idle timeout, reset), which would be a silent hang.
async fn relay_close_code(conn: &iroh::endpoint::Connection) -> CloseCode {
    let closed = tokio::time::timeout(DEADLINE, conn.closed())
        .await
        .unwrap_or_else(|_| panic!("the relay did not close the connection within {DEADLINE:?}"));
    let code = app_close_code(&closed)
        .unwrap_or_else(|| panic!("the connection ended without a relay close code: {closed:?}"));
    CloseCode::from_u32(u32::try_from(code).expect("close codes are u32"))
}

async fn hello_with(
    relay: &RelayProcess,
    hello: impl FnOnce(DeviceId, DeviceId) -> Hello,
) -> (Endpoint, iroh::endpoint::Connection, Option<Message>) {
    let (ep, conn) = relay.raw_connect().await;
    let relay_id: iroh::EndpointId = relay.node_id().parse().unwrap();
    let h = hello(
        DeviceId(*relay_id.as_bytes()),
        DeviceId(*ep.id().as_bytes()),
    );
    let answer = exchange(&conn, &Message::Hello(h)).await;
    (ep, conn, answer)
}

fn error_code(answer: &Option<Message>) -> Option<ErrorCode> {
    match answer {
        Some(Message::Error(e)) => Some(e.error_code()),
        _ => None,
    }
}

#[tokio::test]
async fn push_without_the_group_secret_is_unauthorized_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let secret = GroupSecret::generate();
    let keys = secret.keys();

    // 1. A forged group id with a proof that is just bytes.
    let (_ep, conn, answer) = hello_with(&relay, |_, _| Hello {
        version: PROTOCOL_VERSION,
        group_id: keys.group_id(),
        proof: Proof([7; 64]),
        device_name: None,
    })
    .await;
    assert_eq!(
        error_code(&answer),
        Some(ErrorCode::Unauthorized),
        "{answer:?}"
    );
    // The refusal ends the session with close code 4 (HELLO_REJECTED),
    // after which a push cannot even be sent.
    assert_eq!(relay_close_code(&conn).await, CloseCode::HelloRejected);
    let push = Message::Push(Push {
        items: vec![PushItem {
            blob_id: BlobId([1; 16]),
            payload: vec![1, 2, 3],
            ttl_s: None,
        }],
    });
    assert_eq!(exchange(&conn, &push).await, None);

    // 2. A real member's proof, replayed by another device.
    let (_ep2, conn2, answer) = hello_with(&relay, |relay_id, _me| Hello {
        version: PROTOCOL_VERSION,
        group_id: keys.group_id(),
        proof: keys.proof(&relay_id, &DeviceId([9; 32])),
        device_name: None,
    })
    .await;
    assert_eq!(error_code(&answer), Some(ErrorCode::Unauthorized));
    assert_eq!(relay_close_code(&conn2).await, CloseCode::HelloRejected);

    // 3. Signed with another group's key for this group's id.
    let other = GroupSecret::generate().keys();
    let (_ep3, conn3, answer) = hello_with(&relay, |relay_id, me| Hello {
        version: PROTOCOL_VERSION,
        group_id: keys.group_id(),
        proof: other.proof(&relay_id, &me),
        device_name: None,
    })
    .await;
    assert_eq!(error_code(&answer), Some(ErrorCode::Unauthorized));
    assert_eq!(relay_close_code(&conn3).await, CloseCode::HelloRejected);

    // 4. A push before any Hello: NOT_IN_SESSION, then a protocol-violation close.
    let (_ep4, conn4) = relay.raw_connect().await;
    let answer = exchange(&conn4, &push).await;
    assert_eq!(error_code(&answer), Some(ErrorCode::NotInSession));
    assert_eq!(relay_close_code(&conn4).await, CloseCode::ProtocolViolation);

    // Nothing was stored, not even a group row.
    let health = relay.health();
    assert_eq!(health["groups"], 0, "{health}");
    assert_eq!(health["storage_bytes"], 0);

    // The honest path works on the same relay, so the refusals were not an outage.
    let dev = LibDevice::new(&relay.address, &secret);
    let client = dev.connect().await;
    assert_eq!(client.session().welcome().head_cursor, 0);
    client.close().await;

    // A wrong protocol version gets its own code.
    let (_ep5, conn5, answer) = hello_with(&relay, |relay_id, me| Hello {
        version: PROTOCOL_VERSION + 1,
        group_id: keys.group_id(),
        proof: keys.proof(&relay_id, &me),
        device_name: None,
    })
    .await;
    assert_eq!(error_code(&answer), Some(ErrorCode::UnsupportedVersion));
    assert_eq!(relay_close_code(&conn5).await, CloseCode::HelloRejected);
}

#[tokio::test]
async fn retried_push_is_stored_once_with_the_same_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let secret = GroupSecret::generate();
    let dev = LibDevice::new(&relay.address, &secret);
    let client = dev.connect().await;
    let item = PushItem {
        blob_id: BlobId([42; 16]),
        payload: vec![5; 100],
        ttl_s: None,
    };
    let other = PushItem {
        blob_id: BlobId([43; 16]),
        payload: vec![6; 100],
        ttl_s: None,
    };
    let first = client.session().push(vec![item.clone()]).await.unwrap();
    assert_eq!(
        (first.results[0].cursor, first.results[0].duplicate),
        (1, false)
    );
    // The retry (e.g. after a lost ack), alone and inside a bigger batch.
    let retry = client.session().push(vec![item.clone()]).await.unwrap();
    assert_eq!(
        (retry.results[0].cursor, retry.results[0].duplicate),
        (1, true)
    );
    assert_eq!(retry.head, 1);
    let mixed = client
        .session()
        .push(vec![other.clone(), item.clone(), other.clone()])
        .await
        .unwrap();
    let got: Vec<_> = mixed
        .results
        .iter()
        .map(|r| (r.cursor, r.duplicate))
        .collect();
    assert_eq!(got, vec![(2, false), (1, true), (2, true)]);
    assert_eq!(mixed.head, 2);

    // Another device sees each blob once; the pusher itself gets no echo,
    // only the marker of its last one (docs/protocol.md "Version 2: no echo").
    let reader = LibDevice::new(&relay.address, &secret).connect().await;
    for (session, expected) in [
        (reader.session(), vec![(1, 100), (2, 100)]),
        (client.session(), vec![(2, 0)]),
    ] {
        let mut resp = session.pull(0, 100).await.unwrap();
        let mut got = Vec::new();
        while let Some(batch) = resp.next_batch().await.unwrap() {
            got.extend(batch.blobs.iter().map(|b| (b.cursor, b.payload.len())));
        }
        assert_eq!(got, expected);
    }
    assert_eq!(relay.health()["storage_bytes"], 200);
    reader.close().await;
    client.close().await;
}

#[tokio::test]
async fn cursors_stay_gapless_with_eight_devices_pushing_concurrently() {
    const DEVICES: usize = 8;
    const BATCHES: usize = 12;
    const PER_BATCH: usize = 5;
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let secret = GroupSecret::generate();
    let mut tasks = Vec::new();
    for d in 0..DEVICES {
        let mut dev = LibDevice::new(&relay.address, &secret);
        tasks.push(tokio::spawn(async move {
            let client = dev.connect().await;
            let mut cursors = Vec::new();
            for b in 0..BATCHES {
                let msgs: Vec<Vec<u8>> = (0..PER_BATCH)
                    .map(|i| format!("d{d} b{b} m{i}").into_bytes())
                    .collect();
                for ok in client
                    .push_messages(&mut dev.state, &msgs, &Default::default())
                    .await
                    .unwrap()
                {
                    let c: Vec<u64> = ok.results.iter().map(|r| r.cursor).collect();
                    assert!(
                        c.windows(2).all(|w| w[1] == w[0] + 1),
                        "a batch gets consecutive cursors: {c:?}"
                    );
                    cursors.extend(c);
                }
            }
            client.close().await;
            cursors
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let total = (DEVICES * BATCHES * PER_BATCH) as u64;
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len() as u64, total);
    assert_eq!(
        unique,
        (1..=total).collect::<BTreeSet<_>>(),
        "gapless, no cursor twice"
    );

    // A reader sees every blob once, in cursor order, and every message decrypts.
    let mut reader = LibDevice::new(&relay.address, &secret);
    let client = reader.connect().await;
    let mut messages = BTreeSet::new();
    let out = tmp.path().join("out");
    let summary = client
        .pull(&mut reader.state, &out, &mut |e| {
            if let sync_client::PullEvent::Message { data, .. } = e {
                assert!(messages.insert(data), "a message arrived twice");
            } else {
                panic!("unexpected event {e:?}");
            }
        })
        .await
        .unwrap();
    assert_eq!(summary.cursor, total);
    assert_eq!(messages.len() as u64, total);
    client.close().await;
}

#[tokio::test]
async fn a_blob_that_fails_to_open_is_reported_with_its_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let secret = GroupSecret::generate();
    let mut writer = LibDevice::new(&relay.address, &secret);
    let client = writer.connect().await;
    client
        .push_messages(&mut writer.state, &[b"good".to_vec()], &Default::default())
        .await
        .unwrap();
    // A member (or anyone who got in) pushes bytes that are not a valid envelope.
    client
        .session()
        .push(vec![PushItem {
            blob_id: BlobId([1; 16]),
            payload: vec![1; 64],
            ttl_s: None,
        }])
        .await
        .unwrap();
    client
        .push_messages(
            &mut writer.state,
            &[b"also good".to_vec()],
            &Default::default(),
        )
        .await
        .unwrap();
    client.close().await;

    let mut reader = LibDevice::new(&relay.address, &secret);
    let client = reader.connect().await;
    let mut events = Vec::new();
    client
        .pull(&mut reader.state, tmp.path(), &mut |e| events.push(e))
        .await
        .unwrap();
    let rejected: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            sync_client::PullEvent::Rejected { cursor, .. } => Some(*cursor),
            _ => None,
        })
        .collect();
    assert_eq!(rejected, vec![2]);
    let messages = events
        .iter()
        .filter(|e| matches!(e, sync_client::PullEvent::Message { .. }))
        .count();
    assert_eq!(messages, 2);
    assert_eq!(
        reader.state.state.cursor, 3,
        "the cursor moves past the bad blob"
    );
    client.close().await;
}

fn app_close_code(err: &iroh::endpoint::ConnectionError) -> Option<u64> {
    match err {
        iroh::endpoint::ConnectionError::ApplicationClosed(close) => {
            Some(close.error_code.into_inner())
        }
        _ => None,
    }
}

#[tokio::test]
async fn silent_connection_is_closed_with_hello_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("relay.toml");
    std::fs::write(&config, "[limits]\nhello_timeout_s = 1\n").unwrap();
    let relay = RelayProcess::start_with(
        &tmp.path().join("relay"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );
    let (_ep, conn) = relay.raw_connect().await;
    assert_eq!(relay_close_code(&conn).await, CloseCode::HelloTimeout);
}

#[tokio::test]
async fn oversized_length_prefix_gets_an_error_and_close_code_2() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (_ep, conn) = relay.raw_connect().await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Claims a 4 GiB frame as the first bytes of the session.
    send.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    let answer = read_message(&mut recv, 1 << 16).await.unwrap();
    match answer {
        Some(Message::Error(e)) => {
            assert_eq!(e.error_code(), ErrorCode::InvalidMessage);
            assert!(e.message.contains("exceeds the limit"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(relay_close_code(&conn).await, CloseCode::FrameTooLarge);
    // The relay keeps serving honest clients.
    let dev = LibDevice::new(&relay.address, &GroupSecret::generate());
    dev.connect().await.close().await;
}
