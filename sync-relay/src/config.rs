//! Relay configuration (docs/protocol.md and docs/deploy.md): embedded defaults, `relay.toml`, and
//! command-line/environment overrides, in that order of precedence (lowest
//! first). Every key is documented in `relay.toml.example`; unknown keys and
//! invalid values are rejected at start with the key's name.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use sync_protocol::limits::{
    DEFAULT_MAX_BATCH, DEFAULT_MAX_BLOB_SIZE, MAX_FRAME_CEILING, max_frame_for_blob_size,
};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the node key (`relay.key`) and the database
    /// (`relay.db`). Default `./relay-data`. Created (mode 0700) if missing.
    pub data_dir: PathBuf,
    /// Listening addresses and iroh services.
    pub network: NetworkConfig,
    /// Sizes, counts and times the relay enforces.
    pub limits: LimitsConfig,
    /// Request, byte and connection rates.
    pub rate_limits: RateLimitsConfig,
    /// The expiry task.
    pub cleanup: CleanupConfig,
    /// Who may create new groups.
    pub access: AccessConfig,
    /// Where blobs are stored.
    pub storage: StorageConfig,
    /// Log output.
    pub log: LogConfig,
}

/// `[storage]` (docs/deploy.md "Storage backends").
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://PATH` (one relay on one file; a relative PATH is relative
    /// to the working directory) or `postgres://USER@HOST:PORT/DB` (several
    /// relays on one PostgreSQL). Default: unset, the SQLite file
    /// `relay.db` in `data_dir`. Env: `SYNC_RELAY__STORAGE__URL`.
    pub url: Option<String>,
    /// Connections each relay keeps open to PostgreSQL (ignored for
    /// SQLite). Default 16; 1..=1000.
    pub max_connections: u32,
    /// Seconds between fallback polls of the heads of this relay's live
    /// groups (PostgreSQL only): the longest a lost wake-up from another
    /// relay delays a live session (docs/deploy.md "Several relays on one
    /// PostgreSQL"). Default 5; 1..=3600.
    pub head_poll_interval_s: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: None,
            max_connections: 16,
            head_poll_interval_s: 5,
        }
    }
}

/// The backend `[storage] url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// The SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://` or `postgresql://`), as given.
    Postgres(String),
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// UDP address of the iroh QUIC endpoint. Default `0.0.0.0:4433`.
    pub quic_bind: SocketAddr,
    /// TCP address of the HTTP server (`/health`, and `/metrics` unless
    /// `metrics_bind` is set). Default `127.0.0.1:8080`.
    pub http_bind: SocketAddr,
    /// Separate TCP address for `/metrics`. Default: unset (served on
    /// `http_bind`).
    pub metrics_bind: Option<SocketAddr>,
    /// `HOST:PORT` clients should dial, printed in the relay address line.
    /// Default: the bound QUIC address (an unspecified IP shown as 127.0.0.1).
    pub public_addr: Option<String>,
    /// Use n0's public iroh relay servers for hole punching. Default false
    /// (clients dial the relay's direct address; no internet needed).
    pub public_relays: bool,
    /// Publish and resolve node addresses with n0's DNS/pkarr servers.
    /// Default false.
    pub address_lookup: bool,
    /// Hand the kernel up to 10 QUIC datagrams in one send (UDP GSO) where
    /// the system supports it. Default true. `false` saves each connection's
    /// ~10 KiB multi-datagram send buffer (noq keeps one per connection for
    /// its life: 10 × the path MTU instead of 1 ×), at the cost of one
    /// `sendmsg` per datagram on bulk transfers (BENCHMARKS.md "Idle
    /// sessions").
    pub segmentation_offload: bool,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest blob payload in bytes. Default 1048576 (1 MiB); 1..=16 MiB.
    pub max_blob_size: u32,
    /// Most items in one push. Default 256; 1..=4096.
    pub max_batch: u32,
    /// Payload bytes one group may store. Default 1073741824 (1 GiB).
    pub max_group_storage: u64,
    /// Blobs one group may store. Default 1000000.
    pub max_group_blobs: u64,
    /// Payload bytes the whole relay may store; pushes beyond get OVERLOADED.
    /// Default 10737418240 (10 GiB).
    pub max_storage: u64,
    /// Live sessions on the relay; more get OVERLOADED. Default 10000.
    pub max_sessions: u32,
    /// Live sessions of one group; more get RATE_LIMITED. Default 256.
    pub max_group_sessions: u32,
    /// TTL in seconds of a blob pushed without one. Default 604800 (7 days).
    pub default_ttl_s: u32,
    /// Largest TTL in seconds a push may ask for. Default 2592000 (30 days).
    pub max_ttl_s: u32,
    /// Most blobs one pull answers. Default 10000.
    pub max_pull_limit: u32,
    /// Seconds a new connection has to send its Hello. Default 10.
    pub hello_timeout_s: u32,
    /// Seconds a stream has to deliver its request frame's length prefix;
    /// the whole frame gets this plus `length / min_transfer_rate` s, and
    /// so does the device to take each answer frame. Default 30.
    pub request_timeout_s: u32,
    /// Seconds in-flight requests get to finish on shutdown. Default 10.
    pub shutdown_grace_s: u32,
    /// Bytes per second a request must arrive at, and an answer must be
    /// taken at, once `request_timeout_s` has passed: a frame of `len`
    /// bytes gets `request_timeout_s + len / min_transfer_rate` seconds
    /// each way. Default 4096 (56 kbit/s links move 7000); 1..=1073741824.
    pub min_transfer_rate: u32,
    /// Requests one session may have in flight (QUIC bidirectional streams
    /// open at once); a device's further streams wait in its QUIC stack.
    /// Default 16 (the client pipelines 4 pushes); 1..=1024.
    pub max_requests_in_flight: u32,
    /// Request bodies one session may have being read at once, in frames of
    /// `max_frame` bytes; a request beyond gets RATE_LIMITED. Default 4;
    /// 1..=64.
    pub session_request_frames: u32,
    /// Response frames one session may have being written at once, in
    /// frames of `max_frame` bytes; further answers wait. Default 2; 1..=64.
    pub session_response_frames: u32,
    /// Bytes of request bodies and response frames all sessions together
    /// may hold; a request beyond gets OVERLOADED, an answer waits up to
    /// `request_timeout_s`. Default 134217728 (128 MiB); at least one
    /// session's share.
    pub max_bytes_in_flight: u64,
    /// Connections whose `Hello` has not been answered yet (TLS handshake
    /// included); a new connection beyond is refused before its handshake.
    /// Default 1000; at least 1.
    pub max_connections_awaiting_hello: u32,
}

/// `[rate_limits]`. Rates are per second; bursts are what may be spent at
/// once after a quiet period (token buckets, GCRA via `governor`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Requests per second per device. Default 100.
    pub requests_per_s: u32,
    /// Request burst per device. Default 200.
    pub requests_burst: u32,
    /// Pushed payload bytes per second per device. Default 33554432 (32 MiB/s).
    pub push_bytes_per_s: u32,
    /// Pushed bytes burst per device; raised to at least one full push frame.
    /// Default 268435456 (256 MiB).
    pub push_bytes_burst: u32,
    /// New connections per second per remote IP. Default 10.
    pub connections_per_ip_per_s: u32,
    /// New connection burst per remote IP. Default 50.
    pub connections_per_ip_burst: u32,
    /// Seconds between prunes of idle limiter keys. Default 60.
    pub prune_interval_s: u32,
}

/// `[cleanup]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// Seconds between cleanup runs. Default 60.
    pub interval_s: u32,
    /// Blobs (and at most as many idle devices and idle groups) deleted per
    /// write transaction. Default 500.
    pub batch_size: u32,
    /// Also delete blobs every device of the group has acknowledged.
    /// Default false.
    pub delete_acked: bool,
    /// With `delete_acked`: only devices seen within this many days count.
    /// Default 30.
    pub acked_device_window_days: u32,
    /// Days after which a device not seen (no session opened, no ack) is
    /// forgotten, and a group holding no blob, without a live session and
    /// with no device left is pruned (its head is kept as the relay's head
    /// floor, so it never goes backwards). 0 prunes at the next run.
    /// With `delete_acked`, at least `acked_device_window_days` apply.
    /// Default 30; 0..=36500.
    pub idle_group_days: u32,
    /// Seconds between `PRAGMA wal_checkpoint(TRUNCATE)` + `PRAGMA optimize`.
    /// Default 3600.
    pub maintenance_interval_s: u32,
}

/// `[access]`: who may create new groups (docs/deploy.md §Access). Devices
/// joining an existing group are never asked for anything but the group's
/// membership proof.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// `token` (default): a new group is created only by a `HelloWithToken`
    /// carrying an access token from `sync-relay token create`. `open`: any
    /// device may create groups, within the per-address limits below (a
    /// token, when presented, still creates a token-owned group).
    pub mode: AccessMode,
    /// Open mode: groups one address (IPv4 address, IPv6 /64) may create
    /// per hour. Default 10.
    pub new_groups_per_address_per_hour: u32,
    /// Payload bytes all groups one address created may store together;
    /// pushes beyond get OWNER_QUOTA_EXCEEDED. Default 1073741824 (1 GiB).
    pub max_storage_per_address: u64,
    /// Live sessions on all groups one address created; Hellos beyond get
    /// RATE_LIMITED. Default 256.
    pub max_sessions_per_address: u32,
}

/// How new groups are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// Only with an operator-issued access token.
    Token,
    /// By anyone, within per-address limits.
    Open,
}

impl AccessConfig {
    /// How many addresses may own groups at once: as many as the relay can
    /// promise their whole `max_storage_per_address` and
    /// `max_sessions_per_address` (`limits.max_storage` and
    /// `limits.max_sessions` divided by them, the smaller), at least 1.
    pub fn max_addresses(&self, limits: &LimitsConfig) -> u64 {
        let by_storage = limits.max_storage / self.max_storage_per_address.max(1);
        let by_sessions =
            u64::from(limits.max_sessions) / u64::from(self.max_sessions_per_address.max(1));
        by_storage.min(by_sessions).max(1)
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `sync_relay=debug,info`.
    /// Default `info`. `RUST_LOG`, when set, wins.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("relay-data"),
            network: NetworkConfig::default(),
            limits: LimitsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            cleanup: CleanupConfig::default(),
            access: AccessConfig::default(),
            storage: StorageConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            mode: AccessMode::Token,
            new_groups_per_address_per_hour: 10,
            max_storage_per_address: 1 << 30,
            max_sessions_per_address: 256,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            quic_bind: SocketAddr::from(([0, 0, 0, 0], 4433)),
            http_bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_bind: None,
            public_addr: None,
            public_relays: false,
            address_lookup: false,
            segmentation_offload: true,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            max_batch: DEFAULT_MAX_BATCH,
            max_group_storage: 1 << 30,
            max_group_blobs: 1_000_000,
            max_storage: 10 << 30,
            max_sessions: 10_000,
            max_group_sessions: 256,
            default_ttl_s: 7 * 24 * 3600,
            max_ttl_s: 30 * 24 * 3600,
            max_pull_limit: 10_000,
            hello_timeout_s: 10,
            request_timeout_s: 30,
            shutdown_grace_s: 10,
            min_transfer_rate: 4096,
            max_requests_in_flight: 16,
            session_request_frames: 4,
            session_response_frames: 2,
            max_bytes_in_flight: 128 << 20,
            max_connections_awaiting_hello: 1000,
        }
    }
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            requests_per_s: 100,
            requests_burst: 200,
            push_bytes_per_s: 32 << 20,
            push_bytes_burst: 256 << 20,
            connections_per_ip_per_s: 10,
            connections_per_ip_burst: 50,
            prune_interval_s: 60,
        }
    }
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            interval_s: 60,
            batch_size: 500,
            delete_acked: false,
            acked_device_window_days: 30,
            idle_group_days: 30,
            maintenance_interval_s: 3600,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Largest day count a `…_days` key takes (100 years).
const MAX_DAYS: u32 = 36_500;

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the key and line.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `limits.max_blob_size`.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// Prefix of environment variables that set any config key:
/// `SYNC_RELAY__<SECTION>__<KEY>` (or `SYNC_RELAY__<KEY>` for top-level
/// keys), e.g. `SYNC_RELAY__LIMITS__MAX_BLOB_SIZE=2097152`.
pub const ENV_PREFIX: &str = "SYNC_RELAY__";

impl Config {
    /// Parse a TOML document (missing keys take their defaults) and validate.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::layered(Some((text, path)), std::iter::empty())
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(Some(path), std::iter::empty())
    }

    /// Defaults, then the file (if any), then `SYNC_RELAY__…` variables from
    /// `env`; validated. Errors name the file key or the variable.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                    path: path.to_path_buf(),
                    error,
                })?;
                Config::layered(Some((&text, path)), env)
            }
            None => Config::layered(None, env),
        }
    }

    fn layered(
        file: Option<(&str, &Path)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let path = file.map(|(_, p)| p.to_path_buf()).unwrap_or_default();
        let mut table: toml::Table = match file {
            Some((text, _)) => toml::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?,
            None => toml::Table::new(),
        };
        let mut from_env = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let parts: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            let value = parse_env_value(&value);
            match parts.as_slice() {
                [key] => {
                    table.insert(key.clone(), value);
                }
                [section, key] => {
                    let entry = table
                        .entry(section.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    let Some(t) = entry.as_table_mut() else {
                        return Err(ConfigError::Parse {
                            path: PathBuf::from(&name),
                            message: format!("`{section}` is not a section"),
                        });
                    };
                    t.insert(key.clone(), value);
                }
                _ => {
                    return Err(ConfigError::Parse {
                        path: PathBuf::from(&name),
                        message: "expected SYNC_RELAY__SECTION__KEY or SYNC_RELAY__KEY".into(),
                    });
                }
            }
            from_env.push(name);
        }
        let source = if from_env.is_empty() {
            path
        } else {
            PathBuf::from(format!(
                "{} + environment ({})",
                path.display(),
                from_env.join(", ")
            ))
        };
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: source,
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Check every value's range; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        self.storage_url()?;
        if self.storage.max_connections == 0 || self.storage.max_connections > 1000 {
            return invalid(
                "storage.max_connections",
                format!("must be 1..=1000, got {}", self.storage.max_connections),
            );
        }
        let poll = self.storage.head_poll_interval_s;
        if poll == 0 || poll > 3600 {
            return invalid(
                "storage.head_poll_interval_s",
                format!("must be 1..=3600 seconds, got {poll}"),
            );
        }
        let blob_ceiling = MAX_FRAME_CEILING / 2;
        if l.max_blob_size == 0 || l.max_blob_size > blob_ceiling {
            return invalid(
                "limits.max_blob_size",
                format!("must be 1..={blob_ceiling} bytes, got {}", l.max_blob_size),
            );
        }
        if l.max_batch == 0 || l.max_batch > 4096 {
            return invalid(
                "limits.max_batch",
                format!("must be 1..=4096, got {}", l.max_batch),
            );
        }
        if l.max_group_storage < u64::from(l.max_blob_size) {
            return invalid(
                "limits.max_group_storage",
                format!(
                    "must be at least limits.max_blob_size ({}), got {}",
                    l.max_blob_size, l.max_group_storage
                ),
            );
        }
        if l.max_ttl_s == 0 {
            return invalid("limits.max_ttl_s", "must be at least 1 second".into());
        }
        if l.default_ttl_s == 0 || l.default_ttl_s > l.max_ttl_s {
            return invalid(
                "limits.default_ttl_s",
                format!(
                    "must be 1..=limits.max_ttl_s ({}), got {}",
                    l.max_ttl_s, l.default_ttl_s
                ),
            );
        }
        if l.max_pull_limit == 0 {
            return invalid("limits.max_pull_limit", "must be at least 1".into());
        }
        for (key, v) in [
            ("limits.max_group_blobs", l.max_group_blobs),
            ("limits.max_storage", l.max_storage),
            ("limits.max_sessions", u64::from(l.max_sessions)),
            ("limits.max_group_sessions", u64::from(l.max_group_sessions)),
            (
                "access.new_groups_per_address_per_hour",
                u64::from(self.access.new_groups_per_address_per_hour),
            ),
            (
                "access.max_storage_per_address",
                self.access.max_storage_per_address,
            ),
            (
                "access.max_sessions_per_address",
                u64::from(self.access.max_sessions_per_address),
            ),
        ] {
            if v == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        let r = &self.rate_limits;
        for (key, v) in [
            ("rate_limits.requests_per_s", r.requests_per_s),
            ("rate_limits.requests_burst", r.requests_burst),
            ("rate_limits.push_bytes_per_s", r.push_bytes_per_s),
            ("rate_limits.push_bytes_burst", r.push_bytes_burst),
            (
                "rate_limits.connections_per_ip_per_s",
                r.connections_per_ip_per_s,
            ),
            (
                "rate_limits.connections_per_ip_burst",
                r.connections_per_ip_burst,
            ),
            ("rate_limits.prune_interval_s", r.prune_interval_s),
            ("cleanup.interval_s", self.cleanup.interval_s),
            ("cleanup.batch_size", self.cleanup.batch_size),
            (
                "cleanup.maintenance_interval_s",
                self.cleanup.maintenance_interval_s,
            ),
        ] {
            if v == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        if self.cleanup.idle_group_days > MAX_DAYS {
            return invalid(
                "cleanup.idle_group_days",
                format!(
                    "must be 0..={MAX_DAYS} days, got {}",
                    self.cleanup.idle_group_days
                ),
            );
        }
        if self.cleanup.batch_size > 100_000 {
            return invalid(
                "cleanup.batch_size",
                format!("must be 1..=100000, got {}", self.cleanup.batch_size),
            );
        }
        for (key, v) in [
            ("limits.hello_timeout_s", l.hello_timeout_s),
            ("limits.request_timeout_s", l.request_timeout_s),
        ] {
            if v == 0 || v > 3600 {
                return invalid(key, format!("must be 1..=3600 seconds, got {v}"));
            }
        }
        if l.shutdown_grace_s > 3600 {
            return invalid(
                "limits.shutdown_grace_s",
                format!("must be 0..=3600 seconds, got {}", l.shutdown_grace_s),
            );
        }
        for (key, v, max) in [
            ("limits.min_transfer_rate", l.min_transfer_rate, 1 << 30),
            (
                "limits.max_requests_in_flight",
                l.max_requests_in_flight,
                1024,
            ),
            (
                "limits.session_request_frames",
                l.session_request_frames,
                64,
            ),
            (
                "limits.session_response_frames",
                l.session_response_frames,
                64,
            ),
            (
                "limits.max_connections_awaiting_hello",
                l.max_connections_awaiting_hello,
                u32::MAX,
            ),
        ] {
            if v == 0 || v > max {
                return invalid(key, format!("must be 1..={max}, got {v}"));
            }
        }
        let share = u64::from(l.session_request_frames.max(l.session_response_frames))
            * u64::from(max_frame_for_blob_size(l.max_blob_size));
        if l.max_bytes_in_flight < share {
            return invalid(
                "limits.max_bytes_in_flight",
                format!(
                    "must be at least one session's share, {share} bytes \
                     (the larger of limits.session_request_frames and \
                     limits.session_response_frames, times max_frame = \
                     limits.max_blob_size + 65536), got {}",
                    l.max_bytes_in_flight
                ),
            );
        }
        if let Some(addr) = &self.network.public_addr
            && addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
        {
            return invalid(
                "network.public_addr",
                format!("must be HOST:PORT, got {addr:?}"),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid(
                "log.level",
                format!("not a valid log filter: {:?}", self.log.level),
            );
        }
        Ok(())
    }

    /// Path of the database file inside `data_dir`.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("relay.db")
    }

    /// The backend `storage.url` names (unset: SQLite at [`Config::db_path`]).
    /// Errors: [`ConfigError::Invalid`] naming `storage.url` for another
    /// scheme or an empty path.
    pub fn storage_url(&self) -> Result<StorageUrl, ConfigError> {
        let Some(url) = self.storage.url.as_deref() else {
            return Ok(StorageUrl::Sqlite(self.db_path()));
        };
        let invalid = |message: &str| ConfigError::Invalid {
            key: "storage.url",
            message: message.to_string(),
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid(
                    "sqlite:// needs a file path, e.g. sqlite:///data/relay.db",
                ));
            }
            return Ok(StorageUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StorageUrl::Postgres(url.to_string()));
        }
        Err(invalid(
            "must start with sqlite:// or postgres:// (e.g. postgres://relay@db.internal:5432/relay)",
        ))
    }
}

/// An environment value as TOML: integers and booleans as such, anything
/// else as a string.
fn parse_env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::String(_)),
            ) => v,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_example_file_parses_and_matches_the_defaults() {
        let text = include_str!("../../relay.toml.example");
        let config = parse(text).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn the_example_documents_every_key() {
        let text = include_str!("../../relay.toml.example");
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let mut missing = Vec::new();
        let mut check = |section: &str, key: &str| {
            let documented = text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
            });
            if !documented {
                missing.push(format!("{section}{key}"));
            }
        };
        for (key, value) in defaults.as_table().unwrap() {
            match value.as_table() {
                Some(section) => section.keys().for_each(|k| check(&format!("{key}."), k)),
                None => check("", key),
            }
        }
        check("network.", "metrics_bind");
        check("network.", "public_addr");
        assert!(missing.is_empty(), "undocumented keys: {missing:?}");
    }

    #[test]
    fn the_storage_url_picks_the_backend_and_bad_ones_are_named() {
        let c = Config::default();
        assert_eq!(
            c.storage_url().unwrap(),
            StorageUrl::Sqlite(PathBuf::from("relay-data/relay.db"))
        );
        let c = parse("[storage]\nurl = \"sqlite:///var/lib/relay.db\"\n").unwrap();
        assert_eq!(
            c.storage_url().unwrap(),
            StorageUrl::Sqlite(PathBuf::from("/var/lib/relay.db"))
        );
        let env = [(
            "SYNC_RELAY__STORAGE__URL".to_string(),
            "postgres://relay@127.0.0.1:5432/relay".to_string(),
        )];
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(
            c.storage_url().unwrap(),
            StorageUrl::Postgres("postgres://relay@127.0.0.1:5432/relay".into())
        );
        for bad in ["mysql://x/y", "sqlite://", "relay.db"] {
            let err = parse(&format!("[storage]\nurl = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("storage.url"), "{bad}: {err}");
        }
        let err = parse("[storage]\nmax_connections = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.max_connections"), "{err}");
        for bad in [0, 3601] {
            let err = parse(&format!("[storage]\nhead_poll_interval_s = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("storage.head_poll_interval_s"), "{err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[limits]\nmax_blob_sise = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_blob_sise"), "{err}");
        let err = parse("colour = 1\n").unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn environment_overrides_any_key_and_names_bad_ones() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let c = Config::load_with_env(
            None,
            env(&[
                ("SYNC_RELAY__LIMITS__MAX_BLOB_SIZE", "2048"),
                ("SYNC_RELAY__NETWORK__HTTP_BIND", "0.0.0.0:9000"),
                ("SYNC_RELAY__CLEANUP__DELETE_ACKED", "true"),
                ("SYNC_RELAY__DATA_DIR", "/data"),
                ("SYNC_RELAY_BIN", "ignored: not the prefix"),
            ]),
        )
        .unwrap();
        assert_eq!(c.limits.max_blob_size, 2048);
        assert_eq!(c.network.http_bind, "0.0.0.0:9000".parse().unwrap());
        assert!(c.cleanup.delete_acked);
        assert_eq!(c.data_dir, PathBuf::from("/data"));
        let err = Config::load_with_env(None, env(&[("SYNC_RELAY__LIMITS__MAX_BLOB", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SYNC_RELAY__LIMITS__MAX_BLOB") && err.contains("max_blob"),
            "{err}"
        );
        let err = Config::load_with_env(None, env(&[("SYNC_RELAY__LIMITS__MAX_BATCH", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.max_batch"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse("[limits]\nmax_blob_size = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.max_blob_size"), "{err}");
        let err = parse("[limits]\ndefault_ttl_s = 100\nmax_ttl_s = 10\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.default_ttl_s"), "{err}");
        let err = parse("[network]\nquic_bind = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("quic_bind"), "{err}");
        let err = parse("[log]\nformat = \"xml\"\n").unwrap_err().to_string();
        assert!(err.contains("format"), "{err}");
        let err = parse("[rate_limits]\nrequests_per_s = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rate_limits.requests_per_s"), "{err}");
        for key in [
            "min_transfer_rate",
            "max_requests_in_flight",
            "session_request_frames",
            "session_response_frames",
            "max_connections_awaiting_hello",
        ] {
            let err = parse(&format!("[limits]\n{key} = 0\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("limits.{key}")), "{err}");
        }
        let err = parse("[limits]\nmax_requests_in_flight = 1025\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("1..=1024"), "{err}");
        // 4 frames of 1 MiB + 64 KiB do not fit in 4 MiB.
        let err = parse("[limits]\nmax_bytes_in_flight = 4194304\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limits.max_bytes_in_flight") && err.contains("4456448"),
            "{err}"
        );
        parse("[limits]\nmax_bytes_in_flight = 4456448\n").unwrap();
        let err = parse("[cleanup]\nbatch_size = -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
        let err = parse("[cleanup]\nidle_group_days = 36501\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cleanup.idle_group_days"), "{err}");
        let c = parse("[cleanup]\nidle_group_days = 0\n").unwrap();
        assert_eq!(c.cleanup.idle_group_days, 0);
        let err = parse("[access]\nmode = \"public\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode"), "{err}");
        let err = parse("[access]\nmax_storage_per_address = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("access.max_storage_per_address"), "{err}");
        let err = parse("[access]\nnew_groups_per_address_per_hour = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("access.new_groups_per_address_per_hour"),
            "{err}"
        );
    }

    #[test]
    fn segmentation_offload_is_on_unless_switched_off() {
        assert!(Config::default().network.segmentation_offload);
        let c = parse("[network]\nsegmentation_offload = false\n").unwrap();
        assert!(!c.network.segmentation_offload);
    }

    #[test]
    fn token_mode_is_the_default_and_addresses_fit_the_relay() {
        let c = Config::default();
        assert_eq!(c.access.mode, AccessMode::Token);
        // 10 GiB / 1 GiB; 10000 / 256 = 39.
        assert_eq!(c.access.max_addresses(&c.limits), 10);
        let c = parse("[access]\nmode = \"open\"\nmax_sessions_per_address = 5000\n").unwrap();
        assert_eq!(c.access.mode, AccessMode::Open);
        assert_eq!(c.access.max_addresses(&c.limits), 2);
        let c = parse("[limits]\nmax_storage = 100\n").unwrap();
        assert_eq!(c.access.max_addresses(&c.limits), 1, "at least one");
    }
}
