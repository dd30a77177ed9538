//! The operator's commands on the SQLite file (`sync-relay token …`,
//! [`sync_storage_sqlite::admin`]) while a relay has it open.

use sync_protocol::{AccessToken, BlobId, DeviceId, GroupId};
use sync_storage::{
    NewBlob, NewGroup, NewToken, PushRequest, Quotas, Storage, StorageError, TokenHash,
};
use sync_storage_sqlite::{SqliteStorage, SqliteStorageOptions, admin};

const D: DeviceId = DeviceId([2; 32]);

fn group(n: u8) -> GroupId {
    GroupId([n; 32])
}

fn token(n: u8) -> TokenHash {
    TokenHash::of(&AccessToken([n; 32]))
}

fn new_token(n: u8, max_groups: u64, max_storage: u64) -> NewToken {
    NewToken {
        hash: token(n),
        label: Some(format!("t{n}")),
        created_at_ms: 1,
        max_groups,
        max_storage,
    }
}

fn push(g: GroupId, id: u8, len: usize, expires_at_ms: i64) -> PushRequest {
    PushRequest {
        group: g,
        sender: D,
        items: vec![NewBlob {
            blob_id: BlobId([id; 16]),
            payload: vec![id; len],
            expires_at_ms,
        }],
        now_ms: 1000,
    }
}

/// `sync-relay token revoke` writes through its own connection while the
/// relay runs: the relay caches nothing, so its next transaction sees it.
#[tokio::test]
async fn a_revocation_from_another_connection_freezes_pushes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(SqliteStorageOptions::new(
        dir.path().join("a.db"),
        Quotas::UNLIMITED,
    ))
    .await
    .unwrap();
    let mut admin_conn = admin::open_admin(&dir.path().join("a.db")).await.unwrap();
    let info = admin::create_token(&mut admin_conn, &new_token(1, 5, 1 << 20))
        .await
        .unwrap();
    assert_eq!(info.id, token(1).public_id());
    s.open_session(group(1), D, 1, NewGroup::Token(token(1)))
        .await
        .unwrap();
    s.push(push(group(1), 1, 10, i64::MAX)).await.unwrap();
    let revoked = admin::revoke_token(&mut admin_conn, &info.id, 77)
        .await
        .unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(77));
    let err = s.push(push(group(1), 2, 10, i64::MAX)).await.unwrap_err();
    assert!(matches!(err, StorageError::TokenRevoked), "{err:?}");
    // Reads and sessions on the group go on; the token creates nothing more.
    let opened = s
        .open_session(group(1), DeviceId([5; 32]), 2, NewGroup::Refuse)
        .await
        .unwrap();
    assert_eq!(opened.head, 1);
    assert_eq!(
        s.pull_page(group(1), 0, 10, 1 << 20, 3)
            .await
            .unwrap()
            .blobs
            .len(),
        1
    );
    let err = s
        .open_session(group(2), D, 3, NewGroup::Token(token(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::AccessTokenInvalid), "{err:?}");
    // A second revocation keeps the first time; unknown ids are named.
    let again = admin::revoke_token(&mut admin_conn, &info.id, 99)
        .await
        .unwrap();
    assert_eq!(again.revoked_at_ms, Some(77));
    assert!(matches!(
        admin::revoke_token(&mut admin_conn, "00000000", 99).await,
        Err(StorageError::TokenNotFound(_))
    ));
    assert_eq!(
        admin::list_tokens(&mut admin_conn).await.unwrap(),
        s.tokens().await.unwrap()
    );
}
