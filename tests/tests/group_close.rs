//! Closing a group (issue 14, docs/security.md "What the relay must do",
//! docs/protocol.md §CloseGroup) against the real relay binary: a member
//! closes the old group keeping device A; B's live session is ended and
//! its next Hello refused with GROUP_CLOSED; A still pulls everything and
//! may push until the grace ends, nobody else may; a second close changes nothing; strangers, sessions that
//! never said Hello and malformed keep lists close nothing; after the grace
//! (the relay's longest TTL, tiny here) the blobs are gone and A is refused
//! too.

use e2e_tests::{LibDevice, RelayProcess, relay_with, wait_until};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use sync_client::close_group::close_group;
use sync_client::{ClientError, GroupSecret, RelaySession};
use sync_protocol::{
    BlobId, DeviceId, ErrorCode, Hello, KeepList, Message, PROTOCOL_VERSION, PushItem,
    read_message, write_message,
};

/// The relay's longest TTL, so the grace of a close: long enough for A to
/// pull on a loaded machine, short enough to wait for.
const MAX_TTL_S: u32 = 8;

fn item(id: u8) -> PushItem {
    PushItem {
        blob_id: BlobId([id; 16]),
        payload: vec![id; 100],
        ttl_s: None,
    }
}

fn device_id(dev: &LibDevice) -> DeviceId {
    DeviceId(*dev.opts.device_key.public().as_bytes())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn assert_group_closed<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) {
    match r {
        Err(ClientError::GroupClosed(msg)) => {
            assert!(msg.contains("closed by a member"), "{what}: {msg}")
        }
        other => panic!("{what}: expected GroupClosed, got {other:?}"),
    }
}

/// Every blob of the group, pulled by `session`.
async fn pull_all(session: &RelaySession) -> Result<Vec<u8>, ClientError> {
    let mut ids = Vec::new();
    let mut answer = session.pull(0, 1000).await?;
    while let Some(batch) = answer.next_batch().await? {
        ids.extend(batch.blobs.iter().map(|b| b.blob_id.0[0]));
    }
    Ok(ids)
}

/// Send one raw request body on a new stream of `conn`; the answer.
async fn raw_request(conn: &iroh::endpoint::Connection, body: &[u8]) -> Option<Message> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    send.write_all(&frame).await.ok()?;
    send.finish().ok()?;
    read_message(&mut recv, 1 << 20).await.ok().flatten()
}

fn error_code(msg: Option<Message>) -> Option<ErrorCode> {
    match msg {
        Some(Message::Error(e)) => Some(e.error_code()),
        _ => None,
    }
}

/// The attacks that must close nothing, while the group is open.
async fn attacks_close_nothing(relay: &RelayProcess, secret: &GroupSecret) {
    // A CloseGroup before any Hello: NOT_IN_SESSION, and the connection
    // is closed.
    let (_ep, conn) = relay.raw_connect().await;
    let close = sync_protocol::encode_body(&Message::CloseGroup(sync_protocol::CloseGroup {
        keep: KeepList::default(),
    }));
    assert_eq!(
        error_code(raw_request(&conn, &close).await),
        Some(ErrorCode::NotInSession)
    );
    // A stranger: a Hello for the group with a proof it cannot make.
    let (ep, conn) = relay.raw_connect().await;
    let relay_id = DeviceId(
        *relay
            .node_id()
            .parse::<iroh::EndpointId>()
            .unwrap()
            .as_bytes(),
    );
    let stranger = GroupSecret::generate().keys();
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        group_id: secret.keys().group_id(),
        proof: stranger.proof(&relay_id, &DeviceId(*ep.id().as_bytes())),
        device_name: None,
    });
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    write_message(&mut send, &hello, 4096).await.unwrap();
    send.finish().unwrap();
    assert_eq!(
        error_code(read_message(&mut recv, 4096).await.unwrap()),
        Some(ErrorCode::Unauthorized)
    );
    assert!(
        raw_request(&conn, &close).await.is_none(),
        "a refused Hello serves no close"
    );
    // A member's session sending keep lists of 65 ids, and with a
    // duplicate: malformed (INVALID_MESSAGE), nothing closed.
    for ids in [
        (0..65u8).collect::<Vec<u8>>(),
        vec![1, 1],
        vec![2, 1], // unsorted
    ] {
        let (_ep, conn, _w) = relay.raw_session(&secret.keys()).await;
        let mut body = vec![11u8, ids.len() as u8];
        for i in &ids {
            body.extend_from_slice(&[*i; 32]);
        }
        assert_eq!(
            error_code(raw_request(&conn, &body).await),
            Some(ErrorCode::InvalidMessage),
            "{} ids",
            ids.len()
        );
    }
    // The library refuses 65 ids before dialing.
    let member = LibDevice::new(&relay.address, secret);
    let many: Vec<DeviceId> = (0..65u8).map(|i| DeviceId([i; 32])).collect();
    assert!(matches!(
        close_group(&member.opts, &many).await,
        Err(ClientError::InvalidInput(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_group_keeps_only_its_listed_devices_until_the_grace_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(
        tmp.path(),
        &format!(
            "[limits]\ndefault_ttl_s = {MAX_TTL_S}\nmax_ttl_s = {MAX_TTL_S}\n\
             [cleanup]\ninterval_s = 1\n"
        ),
    );
    let secret = GroupSecret::generate();
    let a = LibDevice::new(&relay.address, &secret);
    let b = LibDevice::new(&relay.address, &secret);
    let closer = LibDevice::new(&relay.address, &secret);

    let sa = RelaySession::connect(&a.opts).await.unwrap();
    let sb = RelaySession::connect(&b.opts).await.unwrap();
    sa.push(vec![item(1), item(2)]).await.unwrap();
    sb.push(vec![item(3)]).await.unwrap();

    attacks_close_nothing(&relay, &secret).await;
    sb.push(vec![item(4)])
        .await
        .expect("the group is still open");

    // The closer keeps A only (not B, not itself).
    let before = now_ms();
    let closed = close_group(&closer.opts, &[device_id(&a)]).await.unwrap();
    assert!(closed.applied);
    assert_eq!(closed.keep.ids(), &[device_id(&a)]);
    assert_eq!(
        closed.grace_until - closed.closed_at,
        u64::from(MAX_TTL_S) * 1000
    );
    assert!(closed.closed_at >= before.saturating_sub(1000));

    // B's live session is ended with close code 9; its requests and its
    // next Hello get GROUP_CLOSED.
    wait_until(Duration::from_secs(10), "B's session ended", || {
        sb.is_closed()
    });
    assert_group_closed(
        sb.push(vec![item(5)]).await,
        "B's push on its ended session",
    );
    assert_group_closed(RelaySession::connect(&b.opts).await, "B's Hello");
    assert_group_closed(RelaySession::connect(&closer.opts).await, "closer's Hello");

    // A pulls everything (but its own 1 and 2: protocol version 2 sends a
    // device none of its own blobs), acks, and, kept, may still push until
    // the grace ends (a concurrent revocation's roster entries must reach
    // the old group: docs/security.md "Closing and concurrent rotations").
    assert_eq!(pull_all(&sa).await.unwrap(), vec![3, 4]);
    let pushed = sa.push(vec![item(6)]).await.expect("a kept device pushes");
    assert_eq!(pushed.head, 5);
    sa.ack(4).await.unwrap();
    let sa2 = RelaySession::connect(&a.opts)
        .await
        .expect("A may open sessions");
    // 6, A's own and last, comes as the no-echo marker (empty payload).
    assert_eq!(pull_all(&sa2).await.unwrap(), vec![3, 4, 6]);

    // A second close (from A, listed) changes nothing.
    let again = sa2
        .close_group(KeepList::new(vec![device_id(&a), device_id(&b)]).unwrap())
        .await
        .unwrap();
    assert!(!again.applied);
    assert_eq!(
        (again.closed_at, again.keep.clone()),
        (closed.closed_at, closed.keep.clone())
    );
    assert_group_closed(
        RelaySession::connect(&b.opts).await,
        "B's Hello after the second close",
    );

    let m = relay.fresh_metrics();
    assert_eq!(m.value("sync_relay_groups_closed", &[]), 1.0);
    assert_eq!(m.value("sync_relay_group_closes_refused", &[]), 1.0);

    // After the grace: A is refused too, and the cleanup deleted the blobs.
    let wait = closed.grace_until.saturating_sub(now_ms()) + 200;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert_group_closed(pull_all(&sa2).await, "A's pull after the grace");
    assert_group_closed(sa2.push(vec![item(7)]).await, "A's push after the grace");
    assert_group_closed(
        RelaySession::connect(&a.opts).await,
        "A's Hello after the grace",
    );
    wait_until(Duration::from_secs(15), "blobs deleted", || {
        relay.fresh_metrics().value("sync_relay_storage_blobs", &[]) == 0.0
    });
    // The group's row stays (its id cannot be created again).
    assert_eq!(relay.fresh_metrics().value("sync_relay_groups", &[]), 1.0);
    assert_group_closed(RelaySession::connect(&closer.opts).await, "a re-creation");
    sa.close().await;
    sa2.close().await;
}
