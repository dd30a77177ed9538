//! Relay addresses: `NODE_ID@HOST:PORT` (docs/protocol.md), where `NODE_ID` is the
//! relay's 64-hex-character iroh node id and `HOST` an IP address or a DNS
//! name.

use crate::error::{ClientError, Result};
use iroh::EndpointId;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// A parsed relay address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddr {
    /// The relay's node id (authenticated by the QUIC handshake).
    pub node_id: EndpointId,
    /// `HOST:PORT` as given.
    pub host_port: String,
}

impl RelayAddr {
    /// Resolve `HOST:PORT` to socket addresses (DNS when needed).
    /// Errors: [`ClientError::Connect`] when nothing resolves.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&self.host_port)
            .await
            .map_err(|e| ClientError::Connect {
                addr: self.to_string(),
                reason: format!("cannot resolve {}: {e}", self.host_port),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ClientError::Connect {
                addr: self.to_string(),
                reason: format!("{} resolves to no address", self.host_port),
            });
        }
        Ok(addrs)
    }
}

impl FromStr for RelayAddr {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            ClientError::InvalidInput(format!(
                "invalid relay address {s:?}: {why}; expected NODE_ID@HOST:PORT as printed by the relay at start or by `sync-relay id`"
            ))
        };
        let (id, host_port) = s.trim().split_once('@').ok_or_else(|| bad("no '@'"))?;
        let node_id = id
            .parse::<EndpointId>()
            .map_err(|_| bad("the node id is not 64 hex characters"))?;
        let (host, port) = host_port
            .rsplit_once(':')
            .ok_or_else(|| bad("no ':PORT'"))?;
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        port.parse::<u16>()
            .map_err(|_| bad("the port is not a number"))?;
        Ok(RelayAddr {
            node_id,
            host_port: host_port.to_string(),
        })
    }
}

impl fmt::Display for RelayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node_id, self.host_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "1d3c2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65";

    #[test]
    fn parses_and_prints() {
        let a: RelayAddr = format!("{ID}@127.0.0.1:4433").parse().unwrap();
        assert_eq!(a.host_port, "127.0.0.1:4433");
        assert_eq!(a.to_string(), format!("{ID}@127.0.0.1:4433"));
        let b: RelayAddr = format!("{ID}@relay.example.org:4433").parse().unwrap();
        assert_eq!(b.host_port, "relay.example.org:4433");
        let c: RelayAddr = format!("{ID}@[::1]:4433").parse().unwrap();
        assert_eq!(c.host_port, "[::1]:4433");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "127.0.0.1:4433".to_string(),
            format!("{ID}@127.0.0.1"),
            format!("{ID}@:4433"),
            format!("{ID}@127.0.0.1:http"),
            "abc@127.0.0.1:4433".to_string(),
        ] {
            let err = bad.parse::<RelayAddr>().unwrap_err().to_string();
            assert!(err.contains("NODE_ID@HOST:PORT"), "{err}");
        }
    }

    #[tokio::test]
    async fn resolves_ip_literals() {
        let a: RelayAddr = format!("{ID}@127.0.0.1:4433").parse().unwrap();
        assert_eq!(
            a.resolve().await.unwrap(),
            vec!["127.0.0.1:4433".parse().unwrap()]
        );
    }
}
