//! The relays of a group (docs/client.md "Several relays"): an ordered,
//! non-empty list of [`RelayAddr`]s that are instances of **one relay
//! cluster** (they share one database, so a group has the same id, blobs
//! and cursors on each), first preferred. The client talks to one at a time
//! and fails over to the next when it is unreachable; the order in which it
//! tries them is [`RelayList::rotation`].

use crate::error::{ClientError, Result};
use crate::relay_addr::RelayAddr;

/// Most relays a device keeps for its group (and an invite may carry).
pub const MAX_RELAYS: usize = 8;

/// An ordered, non-empty list of at most [`MAX_RELAYS`] distinct relay
/// addresses, first preferred.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayList {
    relays: Vec<RelayAddr>,
}

impl RelayList {
    /// The list `relays`, in that order.
    /// Errors: [`ClientError::InvalidInput`] when it is empty, longer than
    /// [`MAX_RELAYS`], or names one address twice.
    pub fn new(relays: Vec<RelayAddr>) -> Result<RelayList> {
        if relays.is_empty() {
            return Err(ClientError::InvalidInput(
                "no relay given; give at least one NODE_ID@HOST:PORT".into(),
            ));
        }
        if relays.len() > MAX_RELAYS {
            return Err(ClientError::InvalidInput(format!(
                "{} relays given; at most {MAX_RELAYS}",
                relays.len()
            )));
        }
        for (i, r) in relays.iter().enumerate() {
            if relays[..i].contains(r) {
                return Err(ClientError::InvalidInput(format!(
                    "relay {r} is given twice"
                )));
            }
        }
        Ok(RelayList { relays })
    }

    /// Parse each `NODE_ID@HOST:PORT` and make the list.
    /// Errors: [`ClientError::InvalidInput`] naming the bad address, or as
    /// [`RelayList::new`].
    pub fn parse<S: AsRef<str>>(relays: &[S]) -> Result<RelayList> {
        if relays.len() > MAX_RELAYS {
            return Err(ClientError::InvalidInput(format!(
                "{} relays given; at most {MAX_RELAYS}",
                relays.len()
            )));
        }
        let parsed = relays
            .iter()
            .map(|r| r.as_ref().parse())
            .collect::<Result<Vec<RelayAddr>>>()?;
        RelayList::new(parsed)
    }

    /// A list of one relay.
    pub fn one(relay: RelayAddr) -> RelayList {
        RelayList {
            relays: vec![relay],
        }
    }

    /// The relays, first preferred.
    pub fn as_slice(&self) -> &[RelayAddr] {
        &self.relays
    }

    /// How many (at least 1).
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// Never true (the list is never empty); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// The relay at `index` (taken modulo the length).
    pub fn get(&self, index: usize) -> &RelayAddr {
        &self.relays[index % self.relays.len()]
    }

    /// The position of `relay` in the list.
    pub fn position(&self, relay: &RelayAddr) -> Option<usize> {
        self.relays.iter().position(|r| r == relay)
    }

    /// The addresses as strings (`NODE_ID@HOST:PORT`), in order.
    pub fn to_strings(&self) -> Vec<String> {
        self.relays.iter().map(ToString::to_string).collect()
    }

    /// The order of one failover round starting at `start`: `start`,
    /// `start + 1`, … wrapping around, each index once.
    pub fn rotation(&self, start: usize) -> impl Iterator<Item = usize> + use<> {
        let n = self.relays.len();
        (0..n).map(move |i| (start + i) % n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID1: &str = "1d3c2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65";
    const ID2: &str = "2d3c2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65";

    fn addrs(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{ID1}@127.0.0.1:{}", 4000 + i))
            .collect()
    }

    #[test]
    fn keeps_the_order_given() {
        let list = RelayList::parse(&[
            format!("{ID2}@b.example:4433"),
            format!("{ID1}@a.example:4433"),
        ])
        .unwrap();
        assert_eq!(
            list.to_strings(),
            [
                format!("{ID2}@b.example:4433"),
                format!("{ID1}@a.example:4433")
            ]
        );
        assert_eq!(list.get(0).host_port, "b.example:4433");
        assert_eq!(list.position(list.get(1)), Some(1));
    }

    #[test]
    fn rejects_empty_duplicate_too_many_and_malformed() {
        let err = |r: &[String]| RelayList::parse(r).unwrap_err().to_string();
        assert!(err(&[]).contains("no relay"), "{}", err(&[]));
        let twice = [addrs(1)[0].clone(), addrs(1)[0].clone()];
        assert!(err(&twice).contains("twice"), "{}", err(&twice));
        assert!(RelayList::parse(&addrs(MAX_RELAYS)).is_ok());
        let many = addrs(MAX_RELAYS + 1);
        assert!(err(&many).contains("at most 8"), "{}", err(&many));
        let bad = [addrs(1)[0].clone(), "nonsense".to_string()];
        assert!(err(&bad).contains("\"nonsense\""), "{}", err(&bad));
        // The same node at two addresses is two entries (e.g. IPv4 and IPv6).
        RelayList::parse(&[format!("{ID1}@127.0.0.1:1"), format!("{ID1}@[::1]:1")]).unwrap();
    }

    #[test]
    fn a_rotation_visits_each_relay_once_from_its_start() {
        let list = RelayList::parse(&addrs(3)).unwrap();
        assert_eq!(list.rotation(0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(list.rotation(1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(list.rotation(2).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(list.rotation(4).collect::<Vec<_>>(), [1, 2, 0]);
        let one = RelayList::parse(&addrs(1)).unwrap();
        assert_eq!(one.rotation(1).collect::<Vec<_>>(), [0]);
    }
}
