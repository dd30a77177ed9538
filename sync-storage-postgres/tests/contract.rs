//! The storage contract (`sync_storage::testing`) against PostgreSQL: every
//! contract, access and two-instance test and the model check, each test
//! (each model-check case) in a database of its own, created with a random
//! name on the server `SYNC_TEST_POSTGRES_URL` names and dropped when the
//! test ends, also when it panics. Without the variable every test prints
//! a loud SKIPPED line and passes (a fresh machine without PostgreSQL);
//! `.ci/run` sets it and checks the server answers, so CI always runs them.

sync_storage::storage_contract_tests!(sync_storage_postgres::testing::factory, 32);
