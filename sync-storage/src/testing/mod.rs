//! The storage contract as tests any backend runs (feature `testing`): the
//! contract tests ([`contract`]), admission and owners' budgets
//! ([`access`]), closing groups ([`close`]), two instances on one database ([`instances`]), and the
//! model check against [`crate::MemoryStorage`] ([`model_check`]).
//!
//! A backend's test suite implements [`Backend`] (opens the store under
//! test over storage of its own: a temporary file, a fresh database) and
//! writes one line, `sync_storage::storage_contract_tests!(factory, 128);`,
//! which makes one `#[test]` per contract test plus the model check with
//! 128 cases. The factory returns `None` when its backend is not available
//! (PostgreSQL without a URL): each test then says so loudly and passes.

pub mod access;
pub mod close;
pub mod contract;
pub mod instances;
pub mod model_check;

use crate::{Quotas, Storage};
use async_trait::async_trait;
use futures::future::LocalBoxFuture;

/// Opens the store under test. One value per test, owning that test's data
/// (a temporary file, a fresh database), which goes when it is dropped. The
/// tests run on the thread that calls them, so `open` need not be `Send`.
#[async_trait(?Send)]
pub trait Backend {
    /// Open the store over this test's data: empty the first time, and
    /// holding everything committed so far afterwards. Opening again while
    /// a store is open gives a second instance over the same data (another
    /// connection, another relay process). Panics if it cannot.
    async fn open(&mut self, quotas: Quotas) -> Box<dyn Storage>;

    /// True when concurrent writes to one instance commit in the order they
    /// were submitted (one write queue, as SQLite's writer). Otherwise the
    /// model check accepts any order of a burst that the model answers
    /// identically.
    fn commits_in_submission_order(&self) -> bool;
}

/// Makes a [`Backend`] over empty storage of its own, or returns `None`
/// (having printed why) when the backend is not available here.
pub type Factory = fn() -> LocalBoxFuture<'static, Option<Box<dyn Backend>>>;

/// Run one contract test (`test(backend)`) on a fresh backend from
/// `factory`, on a multi-threaded runtime (the tests spawn tasks that push
/// concurrently). Nothing runs when `factory` returns `None`.
pub fn run_one(factory: Factory, test: for<'a> fn(&'a mut dyn Backend) -> LocalBoxFuture<'a, ()>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        if let Some(mut backend) = factory().await {
            test(&mut *backend).await;
        }
    });
}

/// One `#[test]` per contract, access and instances test, and the model
/// check with `$cases` cases, for the backend `$factory` (a
/// [`testing::Factory`](crate::testing::Factory)) makes. Expand it in a test
/// target that depends on `sync-storage` with the `testing` feature.
#[macro_export]
macro_rules! storage_contract_tests {
    ($factory:path, $cases:expr) => {
        $crate::storage_contract_tests!(@each $factory; contract:
            pushes_get_consecutive_cursors_and_duplicates_their_first_cursor,
            a_push_over_the_quota_stores_nothing,
            pull_pages_respect_row_and_byte_limits_and_expiry,
            acks_never_go_backwards_or_beyond_the_head,
            concurrent_pushes_share_commits_without_gaps,
            acknowledged_pushes_survive_reopening,
            group_blob_quota_and_relay_storage_limit_store_nothing,
            concurrent_pushes_never_overshoot_the_group_quota,
            expired_blobs_are_deleted_in_bounded_batches_with_exact_counters,
            acked_blobs_are_deleted_only_when_every_recent_device_has_them,
            idle_empty_groups_are_pruned_and_heads_never_go_backwards,
            idle_devices_of_a_live_group_are_pruned_but_not_its_live_device,
            pruning_goes_in_bounded_batches_and_the_floor_survives_reopening,
            a_blob_is_expired_from_its_expiry_time_on,
        );
        $crate::storage_contract_tests!(@each $factory; access:
            without_a_token_no_group_is_created_but_existing_ones_open,
            a_token_creates_up_to_max_groups_even_when_hellos_race,
            an_owner_budget_spans_its_groups_and_cleanup_gives_it_back,
            a_revocation_from_another_connection_freezes_pushes_at_once,
            addresses_get_their_window_budget_and_a_promised_place,
            pruned_groups_go_back_to_their_owners_and_empty_owner_rows_go,
            deleted_blobs_give_their_bytes_back_to_group_owner_and_relay,
        );
        $crate::storage_contract_tests!(@each $factory; close:
            a_closed_group_refuses_pushes_and_unlisted_devices,
            a_kept_device_pushes_until_the_grace_and_its_blobs_expire_by_then,
            a_close_racing_pushes_keeps_exactly_the_pushes_committed_before_it,
            listed_devices_pull_until_the_grace_then_the_blobs_go_and_the_mark_stays,
            a_close_racing_pushes_on_two_instances_keeps_exactly_those_committed,
            two_instances_closing_at_once_record_one_close,
        );
        $crate::storage_contract_tests!(@each $factory; instances:
            eight_tasks_on_two_instances_push_to_one_group_without_gaps,
            group_and_token_quotas_hold_across_two_instances,
        );
        #[test]
        fn model_check_answers_like_the_reference_model() {
            $crate::testing::model_check::run($cases, $factory);
        }
    };
    (@each $factory:path; $module:ident: $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::testing::run_one($factory, |b| {
                    Box::pin($crate::testing::$module::$name(b))
                });
            }
        )*
    };
}
