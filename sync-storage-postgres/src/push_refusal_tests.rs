//! `push_refusal` (migrations/postgres/0004, the quota decision the
//! one-statement push makes on the server) against the reference,
//! [`check_push`]: the same cases through both, the same answer (the rule
//! that refuses, or none). Figures cluster around each rule's boundary
//! (limit − 1, limit, limit + 1, 0, `i64::MAX`), drawn from a fixed seed.
//! Needs `SYNC_TEST_POSTGRES_URL` (without it, a loud SKIPPED line and a
//! pass).

use crate::push_single::refusal_rule;
use crate::testing::TestDatabase;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, PgConnection};
use sync_storage::Quotas;
use sync_storage::quota::{Adding, Budget, GroupUse, OwnerUse, check_push};

/// One set of decision inputs, as `push_refusal` takes them.
#[derive(Debug, Clone, Copy)]
struct Case {
    adding: Adding,
    group: GroupUse,
    max_group_storage: u64,
    max_group_blobs: u64,
    owner: Option<(Budget, bool)>,
    relay: Budget,
}

impl Case {
    /// [`check_push`]'s answer: the refusing rule's name, or `None`.
    fn reference(&self) -> Option<&'static str> {
        let quotas = Quotas {
            max_group_storage: self.max_group_storage,
            max_group_blobs: self.max_group_blobs,
            ..Quotas::UNLIMITED
        };
        let owner = self.owner.map(|(budget, revoked)| OwnerUse {
            kind: "token",
            budget,
            revoked,
        });
        check_push(&quotas, self.group, owner, self.relay, self.adding)
            .err()
            .map(|e| refusal_rule(&e).expect("check_push refuses with a quota rule"))
    }
}

/// Cases whose figures sit on and around the boundaries of every rule.
fn cases(n: usize) -> Vec<Case> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let max = i64::MAX as u64;
    let limits = [0u64, 1, 100, 1000, max];
    let pick = |rng: &mut rand::rngs::StdRng, limit: u64| -> u64 {
        let v = [
            0,
            1,
            limit.saturating_sub(101),
            limit.saturating_sub(100),
            limit.saturating_sub(1),
            limit,
            limit.saturating_add(1).min(max),
        ];
        v[rng.random_range(0..v.len())]
    };
    (0..n)
        .map(|_| {
            let lim = |rng: &mut rand::rngs::StdRng| limits[rng.random_range(0..limits.len())];
            let (gs, gb, ol, rl) = (lim(&mut rng), lim(&mut rng), lim(&mut rng), lim(&mut rng));
            let adding = Adding {
                bytes: [0u64, 1, 100][rng.random_range(0..3)],
                blobs: [0u64, 1, 100][rng.random_range(0..3)],
            };
            let group = GroupUse {
                bytes: pick(&mut rng, gs),
                blobs: pick(&mut rng, gb),
            };
            let owner_budget = Budget {
                used: pick(&mut rng, ol),
                limit: ol,
            };
            let owner = rng
                .random_bool(0.7)
                .then(|| (owner_budget, rng.random_bool(0.2)));
            let relay = Budget {
                used: pick(&mut rng, rl),
                limit: rl,
            };
            Case {
                adding,
                group,
                max_group_storage: gs,
                max_group_blobs: gb,
                owner,
                relay,
            }
        })
        .collect()
}

#[tokio::test]
async fn push_refusal_decides_as_check_push() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    // Opening the store runs the migrations.
    let store = crate::PostgresStorage::open(db.options(Quotas::UNLIMITED))
        .await
        .unwrap();
    let cases = cases(20_000);
    let col =
        |f: &dyn Fn(&Case) -> u64| -> Vec<i64> { cases.iter().map(|c| f(c) as i64).collect() };
    let checked: Vec<bool> = cases.iter().map(|c| c.owner.is_some()).collect();
    let revoked: Vec<bool> = cases.iter().map(|c| c.owner.is_some_and(|o| o.1)).collect();
    let mut conn = PgConnection::connect_with(&db.options(Quotas::UNLIMITED).connect)
        .await
        .unwrap();
    let answers: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT push_refusal(a, ab, gb, gn, mgs, mgb, oc, orv, ou, ol, ru, rl) \
         FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], \
                     $6::BIGINT[], $7::BOOLEAN[], $8::BOOLEAN[], $9::BIGINT[], $10::BIGINT[], \
                     $11::BIGINT[], $12::BIGINT[]) WITH ORDINALITY \
              AS t(a, ab, gb, gn, mgs, mgb, oc, orv, ou, ol, ru, rl, i) ORDER BY i",
    )
    .bind(col(&|c| c.adding.bytes))
    .bind(col(&|c| c.adding.blobs))
    .bind(col(&|c| c.group.bytes))
    .bind(col(&|c| c.group.blobs))
    .bind(col(&|c| c.max_group_storage))
    .bind(col(&|c| c.max_group_blobs))
    .bind(checked)
    .bind(revoked)
    .bind(col(&|c| c.owner.map_or(0, |o| o.0.used)))
    .bind(col(&|c| c.owner.map_or(0, |o| o.0.limit)))
    .bind(col(&|c| c.relay.used))
    .bind(col(&|c| c.relay.limit))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(answers.len(), cases.len());
    let mut by_rule = std::collections::BTreeMap::new();
    for (case, answer) in cases.iter().zip(&answers) {
        let expected = case.reference();
        assert_eq!(answer.as_deref(), expected, "{case:?}");
        *by_rule.entry(expected.unwrap_or("stored")).or_insert(0) += 1;
    }
    // Every answer occurs often enough for the comparison to mean something.
    for rule in [
        "stored",
        "token_revoked",
        "group_storage",
        "group_blobs",
        "owner_storage",
        "relay_storage",
    ] {
        assert!(by_rule.get(rule).is_some_and(|&n| n >= 200), "{by_rule:?}");
    }
    let _ = conn.close().await;
    store.pool.close().await;
}
