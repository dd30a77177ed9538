//! Unanswered dials (issue 10; docs/deploy.md "Unanswered dials"): a dial
//! whose packets never get an answer is abandoned by
//! `RelaySession::connect` and made again from a fresh endpoint, a bounded
//! number of times. The relay sits behind a userspace UDP proxy that
//! leaves the first client addresses (fresh endpoints) unanswered.

use e2e_tests::proxy::UdpProxy;
use e2e_tests::{LibDevice, RelayProcess};
use std::time::Duration;
use sync_client::{ClientError, GroupSecret, RelaySession, dial_attempt_timeout};

/// A device of a new group reaching `relay` through `proxy`.
fn device(relay: &RelayProcess, proxy: &UdpProxy, connect_timeout: Duration) -> LibDevice {
    let mut dev = LibDevice::new(
        &format!("{}@{}", relay.node_id(), proxy.addr),
        &GroupSecret::generate(),
    );
    dev.opts.connect_timeout = connect_timeout;
    dev
}

/// The first dial is never answered: the session still opens, on the
/// second dial, from a second client address; the relay saw only the
/// second one (one address validation, one connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_dial_is_made_again_from_a_fresh_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_behind_proxy(&tmp.path().join("relay"), &[]);
    let proxy = UdpProxy::start(relay.quic).await;
    proxy.leave_unanswered(1);
    // Long enough for dial 1 to be abandoned and dial 2 to finish on a
    // loaded machine; a hang guard, not a measurement.
    let dev = device(&relay, &proxy, Duration::from_secs(60));
    let session = RelaySession::connect(&dev.opts)
        .await
        .expect("connects on a later dial");
    assert_eq!(session.dials(), 2, "one dial abandoned, one answered");
    let stats = proxy.stats();
    assert_eq!(stats.clients, 2, "each dial from a fresh endpoint");
    assert!(
        stats.dropped >= 2,
        "the first dial's Initial and its resend went unanswered: {stats:?}"
    );
    let m = relay.metrics();
    assert_eq!(m.value("sync_relay_address_validations", &[]), 1.0);
    assert_eq!(m.value("sync_relay_connections", &[]), 1.0);
    session.close().await;
}

/// Dials stop at the connect timeout: with every dial unanswered and
/// room for two, the connect fails after exactly two dials, with a message
/// that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_dials_stop_at_the_connect_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_behind_proxy(&tmp.path().join("relay"), &[]);
    let proxy = UdpProxy::start(relay.quic).await;
    proxy.leave_unanswered(u64::MAX);
    // Dial 1 gets its full attempt time, dial 2 what is left (2 s).
    let timeout = dial_attempt_timeout(1) + Duration::from_secs(2);
    let dev = device(&relay, &proxy, timeout);
    let err = RelaySession::connect(&dev.opts)
        .await
        .expect_err("nothing answers");
    match &err {
        ClientError::Connect { reason, .. } => {
            assert!(reason.contains("(2 dials)"), "{reason}")
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert_eq!(proxy.stats().clients, 2);
    assert_eq!(
        relay.metrics().value("sync_relay_address_validations", &[]),
        0.0
    );
}
