//! Relay configuration (DESIGN §5.9): embedded defaults, `relay.toml`, and
//! command-line/environment overrides, in that order of precedence (lowest
//! first). Every key is documented in `relay.toml.example`; unknown keys and
//! invalid values are rejected at start with the key's name.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use sync_protocol::limits::{DEFAULT_MAX_BATCH, DEFAULT_MAX_BLOB_SIZE, MAX_FRAME_CEILING};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the node key (`relay.key`) and the database
    /// (`relay.db`). Default `./relay-data`. Created (mode 0700) if missing.
    pub data_dir: PathBuf,
    /// Listening addresses and iroh services.
    pub network: NetworkConfig,
    /// Sizes, counts and times the relay enforces.
    pub limits: LimitsConfig,
    /// Log output.
    pub log: LogConfig,
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// UDP address of the iroh QUIC endpoint. Default `0.0.0.0:4433`.
    pub quic_bind: SocketAddr,
    /// TCP address of the HTTP server (`/health`). Default `127.0.0.1:8080`.
    pub http_bind: SocketAddr,
    /// `HOST:PORT` clients should dial, printed in the relay address line.
    /// Default: the bound QUIC address (an unspecified IP shown as 127.0.0.1).
    pub public_addr: Option<String>,
    /// Use n0's public iroh relay servers for hole punching. Default false
    /// (clients dial the relay's direct address; no internet needed).
    pub public_relays: bool,
    /// Publish and resolve node addresses with n0's DNS/pkarr servers.
    /// Default false.
    pub address_lookup: bool,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest blob payload in bytes. Default 1048576 (1 MiB); 1..=16 MiB.
    pub max_blob_size: u32,
    /// Most items in one push. Default 256; 1..=4096.
    pub max_batch: u32,
    /// Payload bytes one group may store. Default 1073741824 (1 GiB).
    pub max_group_storage: u64,
    /// TTL in seconds of a blob pushed without one. Default 604800 (7 days).
    pub default_ttl_s: u32,
    /// Largest TTL in seconds a push may ask for. Default 2592000 (30 days).
    pub max_ttl_s: u32,
    /// Most blobs one pull answers. Default 10000.
    pub max_pull_limit: u32,
    /// Seconds a new connection has to send its Hello. Default 10.
    pub hello_timeout_s: u32,
    /// Seconds a stream has to deliver its request frame. Default 30.
    pub request_timeout_s: u32,
    /// Seconds in-flight requests get to finish on shutdown. Default 10.
    pub shutdown_grace_s: u32,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `sync_relay=debug,info`.
    /// Default `info`. `RUST_LOG`, when set, wins.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
            log: LogConfig::default(),
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            quic_bind: SocketAddr::from(([0, 0, 0, 0], 4433)),
            http_bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_addr: None,
            public_relays: false,
            address_lookup: false,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            max_batch: DEFAULT_MAX_BATCH,
            max_group_storage: 1 << 30,
            default_ttl_s: 7 * 24 * 3600,
            max_ttl_s: 30 * 24 * 3600,
            max_pull_limit: 10_000,
            hello_timeout_s: 10,
            request_timeout_s: 30,
            shutdown_grace_s: 10,
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

impl Config {
    /// Parse a TOML document (missing keys take their defaults) and validate.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::from_toml(&text, path)
    }

    /// Check every value's range; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
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
    fn unknown_key_is_named() {
        let err = parse("[limits]\nmax_blob_sise = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_blob_sise"), "{err}");
        let err = parse("colour = 1\n").unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
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
    }
}
