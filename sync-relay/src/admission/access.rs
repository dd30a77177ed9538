//! Who may create a group and hold sessions on its groups (docs/deploy.md
//! §Access): the decisions of the access mode.
//!
//! - A `Hello` for a group that does not exist asks to create it. What it
//!   may do ([`Admission::new_group`]) depends on `[access] mode` and on the
//!   token it presents; the storage backend then decides inside the
//!   transaction that would create the group ([`NewGroup`]), so a revoked
//!   token is seen at once and racing Hellos cannot overshoot a limit.
//! - Every group created after this feature has an owner (its token, or in
//!   open mode the address that created it). Its pushes count against the
//!   owner's storage budget inside the push transaction ([`Quotas`]).
//! - Live sessions on the groups of one address are capped
//!   ([`Admission::owner_session`]) so strangers on many addresses can hold
//!   at most what the relay promised each of them.
//!
//! Storage refusals become wire codes in `crate::handlers` (one `From`).

use crate::config::{AccessConfig, AccessMode, Config};
use crate::storage::{AddressKey, AddressQuotas, NewGroup, Owner, Quotas, TokenHash};
use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::Arc;
use sync_protocol::AccessToken;

/// One hour in ms: the window of `new_groups_per_address_per_hour`.
pub const HOUR_MS: i64 = 3_600_000;

/// The relay's admission state: the access config and the live sessions of
/// each address's groups.
pub struct Admission {
    access: AccessConfig,
    /// Live sessions per address owner; an entry is removed at zero, so
    /// memory follows the addresses with live sessions.
    address_sessions: DashMap<AddressKey, u32>,
}

/// The storage quotas of `config`: per group, relay-wide, and per address.
pub fn quotas(config: &Config) -> Quotas {
    let a = &config.access;
    Quotas {
        max_group_storage: config.limits.max_group_storage,
        max_group_blobs: config.limits.max_group_blobs,
        max_storage: config.limits.max_storage,
        address: AddressQuotas {
            max_storage: a.max_storage_per_address,
            new_groups_per_window: u64::from(a.new_groups_per_address_per_hour),
            window_ms: HOUR_MS,
            max_addresses: a.max_addresses(&config.limits),
        },
    }
}

impl Admission {
    /// Admission per `config`'s `[access]`.
    pub fn new(config: &Config) -> Arc<Admission> {
        Arc::new(Admission {
            access: config.access.clone(),
            address_sessions: DashMap::new(),
        })
    }

    /// What a `Hello` from `remote` (`None`: no IP, e.g. through an iroh
    /// relay server) with `token` may do if its group does not exist: a
    /// token always asks for a token-owned group (in either mode); without
    /// one, token mode refuses and open mode creates an address-owned group.
    pub fn new_group(&self, token: Option<&AccessToken>, remote: Option<IpAddr>) -> NewGroup {
        match (token, self.access.mode) {
            (Some(t), _) => NewGroup::Token(TokenHash::of(t)),
            (None, AccessMode::Token) => NewGroup::Refuse,
            (None, AccessMode::Open) => {
                NewGroup::Address(remote.map_or(AddressKey::RELAYED, AddressKey::of))
            }
        }
    }

    /// Count a live session on a group of `owner` until the guard drops.
    /// `Err(limit)` when the owner is an address whose groups already have
    /// `max_sessions_per_address` live sessions (answer RATE_LIMITED).
    /// Token-owned and unowned groups are limited only per group and
    /// relay-wide.
    pub fn owner_session(
        self: &Arc<Self>,
        owner: Option<Owner>,
    ) -> Result<Option<OwnerSessionGuard>, u32> {
        let Some(Owner::Address(key)) = owner else {
            return Ok(None);
        };
        let limit = self.access.max_sessions_per_address;
        let mut n = self.address_sessions.entry(key).or_insert(0);
        if *n >= limit {
            return Err(limit);
        }
        *n += 1;
        Ok(Some(OwnerSessionGuard {
            admission: Arc::clone(self),
            key,
        }))
    }

    /// Live sessions on the groups of the address `key`.
    pub fn address_sessions(&self, key: &AddressKey) -> u32 {
        self.address_sessions.get(key).map_or(0, |n| *n)
    }
}

/// Releases a session counted by [`Admission::owner_session`].
pub struct OwnerSessionGuard {
    admission: Arc<Admission>,
    key: AddressKey,
}

impl Drop for OwnerSessionGuard {
    fn drop(&mut self) {
        self.admission
            .address_sessions
            .remove_if_mut(&self.key, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(mode: AccessMode, per_address: u32) -> Arc<Admission> {
        let mut config = Config::default();
        config.access.mode = mode;
        config.access.max_sessions_per_address = per_address;
        Admission::new(&config)
    }

    #[test]
    fn the_mode_and_the_token_decide_what_a_new_group_may_be() {
        let t = AccessToken([9; 32]);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let token = admission(AccessMode::Token, 1);
        assert_eq!(token.new_group(None, Some(ip)), NewGroup::Refuse);
        assert_eq!(
            token.new_group(Some(&t), Some(ip)),
            NewGroup::Token(TokenHash::of(&t))
        );
        let open = admission(AccessMode::Open, 1);
        assert_eq!(
            open.new_group(None, Some(ip)),
            NewGroup::Address(AddressKey::of(ip))
        );
        assert_eq!(
            open.new_group(Some(&t), Some(ip)),
            NewGroup::Token(TokenHash::of(&t))
        );
        assert_eq!(
            open.new_group(None, None),
            NewGroup::Address(AddressKey::RELAYED)
        );
    }

    #[test]
    fn addresses_are_ipv4_hosts_and_ipv6_slash_64s() {
        let key = |s: &str| AddressKey::of(s.parse().unwrap());
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("192.0.2.1"), key("::ffff:192.0.2.1"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("0.0.0.0"), AddressKey::RELAYED);
    }

    #[test]
    fn sessions_of_one_address_are_capped_and_released() {
        let a = admission(AccessMode::Open, 2);
        let key = AddressKey::of("192.0.2.1".parse().unwrap());
        let owner = Some(Owner::Address(key));
        let g1 = a.owner_session(owner).unwrap();
        let g2 = a.owner_session(owner).unwrap();
        assert_eq!(a.owner_session(owner).err(), Some(2));
        // Another address, token-owned and unowned groups are not counted.
        let other = Some(Owner::Address(AddressKey::of("192.0.2.2".parse().unwrap())));
        assert!(a.owner_session(other).unwrap().is_some());
        assert!(a.owner_session(None).unwrap().is_none());
        drop(g1);
        let g3 = a.owner_session(owner).unwrap();
        drop((g2, g3));
        assert_eq!(a.address_sessions(&key), 0);
        assert!(a.address_sessions.is_empty(), "no entry left behind");
    }
}
