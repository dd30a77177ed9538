//! The address the relay announces to devices (`NODE_ID@HOST:PORT`,
//! docs/deploy.md "The relay address"), and the warning when it cannot know
//! one that devices elsewhere can use.
//!
//! With `network.public_addr` set, that is the address. Without it, a relay
//! bound to a concrete IP announces that IP. A relay bound to an unspecified
//! address (`0.0.0.0`, `[::]`, as in the Docker image) cannot tell which of
//! its addresses devices reach it on — inside a container none of them may be
//! — so it announces `127.0.0.1:PORT` (right for devices on the same host
//! only), logs a warning at start and reports it in `/health`, listing the
//! host's non-loopback addresses as candidates for `public_addr`.

use std::net::{IpAddr, SocketAddr};

/// What the relay announces, and why it may be wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// `HOST:PORT` devices are told to dial.
    pub addr: String,
    /// Set when `addr` is a guess that only works on this host: the text
    /// of the warning (names `network.public_addr` and the candidates).
    pub warning: Option<String>,
}

/// Decide the announced address for a relay bound to `quic` (the bound UDP
/// socket), with `public_addr` from the configuration and `host_ips` the
/// host's interface addresses (see [`host_ips`]).
pub fn advertised(quic: SocketAddr, public_addr: Option<&str>, host_ips: &[IpAddr]) -> Advertised {
    if let Some(addr) = public_addr {
        return Advertised {
            addr: addr.to_string(),
            warning: None,
        };
    }
    if !quic.ip().is_unspecified() {
        return Advertised {
            addr: quic.to_string(),
            warning: None,
        };
    }
    let shown = SocketAddr::new([127, 0, 0, 1].into(), quic.port());
    // An IPv4 wildcard socket takes IPv4 only; an IPv6 one takes both.
    let candidates: Vec<String> = host_ips
        .iter()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .filter(|ip| quic.is_ipv6() || ip.is_ipv4())
        .filter(|ip| !is_ipv6_link_local(ip))
        .map(|ip| SocketAddr::new(*ip, quic.port()).to_string())
        .collect();
    let listed = if candidates.is_empty() {
        "none found on this host's interfaces".to_string()
    } else {
        candidates.join(", ")
    };
    Advertised {
        addr: shown.to_string(),
        warning: Some(format!(
            "QUIC is bound to {quic} and network.public_addr is not set: the announced address \
             {shown} works only for devices on this host. Set network.public_addr (or \
             SYNC_RELAY__NETWORK__PUBLIC_ADDR) to the HOST:PORT devices reach; this host's \
             addresses: {listed}"
        )),
    }
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The addresses of this host's interfaces that are up (loopback included;
/// [`advertised`] filters). Empty when they cannot be read.
pub fn host_ips() -> Vec<IpAddr> {
    netdev::get_interfaces()
        .into_iter()
        .filter(|i| i.is_up())
        .flat_map(|i| {
            let v4 = i.ipv4.iter().map(|n| IpAddr::V4(n.addr()));
            let v6 = i.ipv6.iter().map(|n| IpAddr::V6(n.addr()));
            v4.chain(v6).collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn public_addr_wins_without_warning() {
        let a = advertised(
            "0.0.0.0:4433".parse().unwrap(),
            Some("relay.example.org:4433"),
            &ips(&["10.0.0.5"]),
        );
        assert_eq!(a.addr, "relay.example.org:4433");
        assert_eq!(a.warning, None);
    }

    #[test]
    fn a_concrete_bind_is_announced_as_is() {
        let a = advertised("192.0.2.7:4433".parse().unwrap(), None, &[]);
        assert_eq!(a.addr, "192.0.2.7:4433");
        assert_eq!(a.warning, None);
    }

    #[test]
    fn an_unspecified_v4_bind_warns_and_lists_v4_candidates() {
        let a = advertised(
            "0.0.0.0:4433".parse().unwrap(),
            None,
            &ips(&["127.0.0.1", "10.0.0.5", "::1", "2001:db8::9", "172.17.0.2"]),
        );
        assert_eq!(a.addr, "127.0.0.1:4433");
        let w = a.warning.expect("a warning");
        assert!(w.contains("network.public_addr"), "{w}");
        assert!(w.contains("10.0.0.5:4433, 172.17.0.2:4433"), "{w}");
        assert!(!w.contains("2001:db8"), "v6 listed for a v4 socket: {w}");
        assert!(!w.contains("127.0.0.1:4433,"), "loopback listed: {w}");
    }

    #[test]
    fn an_unspecified_v6_bind_lists_both_families_but_not_link_local() {
        let a = advertised(
            "[::]:4433".parse().unwrap(),
            None,
            &ips(&["10.0.0.5", "2001:db8::9", "fe80::1"]),
        );
        let w = a.warning.expect("a warning");
        assert!(w.contains("10.0.0.5:4433, [2001:db8::9]:4433"), "{w}");
        assert!(!w.contains("fe80"), "{w}");
    }

    #[test]
    fn no_candidates_is_said_plainly() {
        let a = advertised("0.0.0.0:4433".parse().unwrap(), None, &ips(&["127.0.0.1"]));
        assert!(a.warning.unwrap().contains("none found"));
    }
}
