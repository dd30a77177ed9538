//! The 0k-sync relay (docs/protocol.md and docs/deploy.md): an iroh endpoint that stores opaque
//! encrypted blobs per sync group under gapless cursors and tells live
//! sessions when their group's head moves. It never sees a key or plaintext.
//!
//! Layout: [`config`] (relay.toml), [`admission`] (every admission decision:
//! before TLS, at `Hello`, per request; who may create groups), [`advertise`] (announced address), [`identity`] (node key), [`endpoint`]
//! (iroh), [`server`] (accept loop, shutdown), [`session`] (per-connection
//! state machine), [`handlers`] (one per request), [`auth`] (membership
//! proof), [`storage`] (trait + SQLite), [`notify`] (NOTIFY fan-out), [`recent`] (recent small blobs for inline delivery), [`head_feed`] (heads moved on other
//! instances),
//! [`ratelimit`] (governor limits), [`budget`] (memory budgets per peer),
//! [`cleanup`] (expiry task), [`metrics`]
//! (OpenMetrics), [`http`] (`/health`, `/metrics`).

#![forbid(unsafe_code)]

pub mod admission;
pub mod advertise;
pub mod auth;
pub mod backup;
pub mod budget;
pub mod cleanup;
pub mod close_feed;
pub mod config;
pub mod context;
pub mod db_metrics;
pub mod endpoint;
pub mod handlers;
pub mod head_feed;
pub mod heap_metrics;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod notify;
pub mod ratelimit;
pub mod recent;
pub mod server;
pub mod session;
pub mod storage;

pub use config::Config;
pub use server::Relay;
