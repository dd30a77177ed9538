//! The running relay: storage, iroh endpoint, accept loop, HTTP server, and
//! graceful shutdown (docs/deploy.md "Docker" (stopping)).

use crate::admission::connection::Verdict;
use crate::config::{AccessMode, Config};
use crate::context::RelayContext;
use crate::storage::{Storage, StorageError};
use crate::{admission, advertise, cleanup, endpoint, http, identity, session};
use iroh::endpoint::IncomingAddr;
use iroh::{Endpoint, EndpointId};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use sync_protocol::DeviceId;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Failures starting the relay.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node key could not be read or created.
    #[error("relay identity: {0}")]
    Identity(#[from] identity::IdentityError),
    /// The database could not be opened or migrated.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The QUIC endpoint could not bind.
    #[error(transparent)]
    Endpoint(#[from] endpoint::EndpointError),
    /// The HTTP address could not be bound.
    #[error("network.http_bind {addr}: {error}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
}

/// A started relay. Drop does not stop it cleanly: call [`Relay::shutdown`].
pub struct Relay {
    ctx: Arc<RelayContext>,
    endpoint: Endpoint,
    quic_addr: SocketAddr,
    http_addr: SocketAddr,
    public_addr: String,
    connections: TaskTracker,
    accept_task: JoinHandle<()>,
    http_tasks: Vec<JoinHandle<()>>,
    http_stop: CancellationToken,
    background: TaskTracker,
    metrics_addr: Option<SocketAddr>,
}

impl Relay {
    /// Start everything described by `config`. Errors: [`StartError`].
    pub async fn start(config: Config) -> Result<Relay, StartError> {
        let key = identity::load_or_create(&config.data_dir)?;
        let storage: Arc<dyn Storage> = crate::storage::open(&config).await?;
        info!(
            backend = crate::storage::backend_name(&config),
            "storage open"
        );
        match config.access.mode {
            AccessMode::Token => info!(
                "access: new groups need an access token (sync-relay token create); \
                 devices joining existing groups need none"
            ),
            AccessMode::Open => info!(
                "access: open; per address {} new groups an hour, {} bytes, {} sessions; \
                 groups from at most {} addresses at once",
                config.access.new_groups_per_address_per_hour,
                config.access.max_storage_per_address,
                config.access.max_sessions_per_address,
                config.access.max_addresses(&config.limits)
            ),
        }
        let relay_id = DeviceId(*key.public().as_bytes());
        let endpoint = endpoint::bind(&config.network, &config.limits, key).await?;
        let quic_addr = endpoint
            .bound_sockets()
            .into_iter()
            .next()
            .unwrap_or(config.network.quic_bind);
        let advertised = advertise::advertised(
            quic_addr,
            config.network.public_addr.as_deref(),
            &advertise::host_ips(),
        );
        if let Some(w) = &advertised.warning {
            warn!("{w}");
        }
        let ctx = RelayContext::with_warnings(
            &config,
            relay_id,
            storage,
            advertised.warning.into_iter().collect(),
        );

        let listener = tokio::net::TcpListener::bind(config.network.http_bind)
            .await
            .map_err(|error| StartError::Http {
                addr: config.network.http_bind,
                error,
            })?;
        let http_addr = listener.local_addr().map_err(|error| StartError::Http {
            addr: config.network.http_bind,
            error,
        })?;
        let http_stop = CancellationToken::new();
        let separate_metrics = config.network.metrics_bind.is_some();
        let mut http_tasks = vec![serve_http(
            listener,
            http::router(Arc::clone(&ctx), !separate_metrics),
            http_stop.clone(),
        )];
        let mut metrics_addr = None;
        if let Some(addr) = config.network.metrics_bind {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|error| StartError::Http { addr, error })?;
            metrics_addr = listener.local_addr().ok();
            http_tasks.push(serve_http(
                listener,
                http::metrics_router(Arc::clone(&ctx)),
                http_stop.clone(),
            ));
        }
        let background = TaskTracker::new();
        background.spawn(cleanup::run(Arc::clone(&ctx), config.cleanup.clone()));
        if let Some(feed) = ctx.storage.head_changes() {
            background.spawn(crate::head_feed::run(
                Arc::clone(&ctx),
                feed,
                RelayContext::secs(config.storage.head_poll_interval_s),
            ));
        }
        background.spawn(prune_limiters(
            Arc::clone(&ctx),
            RelayContext::secs(config.rate_limits.prune_interval_s),
        ));
        background.close();

        let connections = TaskTracker::new();
        let accept_task = tokio::spawn(accept_loop(
            endpoint.clone(),
            Arc::clone(&ctx),
            connections.clone(),
        ));
        let public_addr = advertised.addr;
        let relay = Relay {
            ctx,
            endpoint,
            quic_addr,
            http_addr,
            public_addr,
            connections,
            accept_task,
            http_tasks,
            http_stop,
            background,
            metrics_addr,
        };
        info!(
            "relay address: {} (QUIC on {}, HTTP on {}{})",
            relay.address(),
            relay.quic_addr,
            relay.http_addr,
            relay
                .metrics_addr
                .map(|a| format!(", metrics on {a}"))
                .unwrap_or_default()
        );
        Ok(relay)
    }

    /// The relay's node id.
    pub fn node_id(&self) -> EndpointId {
        self.endpoint.id()
    }

    /// The address clients use: `NODE_ID@HOST:PORT`.
    pub fn address(&self) -> String {
        format!("{}@{}", self.node_id(), self.public_addr)
    }

    /// The bound QUIC (UDP) address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound metrics address, when metrics have their own listener.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Shared state (storage, metrics) for embedding and tests.
    pub fn context(&self) -> &Arc<RelayContext> {
        &self.ctx
    }

    /// Stop accepting, let sessions finish in-flight requests within
    /// `shutdown_grace_s`, close them with `CloseCode::ShuttingDown`, drain
    /// storage writes, checkpoint the WAL, and close the endpoint.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.ctx.shutdown.cancel();
        let _ = self.accept_task.await;
        self.connections.close();
        let grace = RelayContext::secs(self.ctx.limits.shutdown_grace_s) + Duration::from_secs(2);
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            warn!("sessions still open after the grace period; closing them");
        }
        self.background.wait().await;
        self.ctx.storage.close().await;
        self.endpoint.close().await;
        self.http_stop.cancel();
        for task in self.http_tasks {
            let _ = task.await;
        }
        info!("stopped");
    }
}

fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(err) = served {
            warn!(error = %err, "HTTP server failed");
        }
    })
}

/// Prune idle rate-limiter keys on an interval so memory stays bounded.
async fn prune_limiters(ctx: Arc<RelayContext>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {
                let left = ctx.rate_limits.prune();
                debug!(keys = left, "pruned idle rate-limiter keys");
            }
        }
    }
}

/// Accept connections, deciding on each before its TLS handshake
/// ([`admission::connection::decide`]: QUIC Retry for an unproven address,
/// refusal over the awaiting-Hello cap or the per-address rate). A refused
/// device sees the connection refused and retries with backoff.
async fn accept_loop(endpoint: Endpoint, ctx: Arc<RelayContext>, connections: TaskTracker) {
    loop {
        let incoming = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        let ip = match incoming.remote_addr() {
            IncomingAddr::Ip(addr) => Some(addr.ip()),
            _ => None,
        };
        let awaiting_hello =
            match admission::connection::decide(&ctx, ip, incoming.remote_addr_validated()) {
                Verdict::Validate => {
                    if let Err(err) = incoming.retry() {
                        err.into_incoming().ignore();
                    }
                    continue;
                }
                Verdict::Refuse { .. } => {
                    incoming.refuse();
                    continue;
                }
                Verdict::Accept(pending) => pending,
            };
        let ctx = Arc::clone(&ctx);
        connections.spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    ctx.metrics.connections.inc();
                    session::serve_connection(ctx, conn, ip, awaiting_hello).await;
                }
                Err(err) => debug!(error = %err, "incoming connection failed"),
            }
        });
    }
}
