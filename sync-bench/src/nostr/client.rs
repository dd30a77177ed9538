//! One Nostr WebSocket connection publishing events (NIP-01 `EVENT`) and
//! counting the relay's acknowledgements (`["OK", id, true, msg]`).

use super::event::Event;
use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one answer may take before the run fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// An event serialized ahead of time (signing and JSON encoding stay out
/// of the measured time).
pub struct Outgoing {
    /// The event id (hex), as the relay's `OK` names it.
    pub id: String,
    /// `["EVENT", {…}]`.
    pub text: String,
}

impl From<&Event> for Outgoing {
    fn from(e: &Event) -> Outgoing {
        Outgoing {
            id: e.id.clone(),
            text: e.message(),
        }
    }
}

/// What a relay said.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `["OK", id, accepted, message]` (NIP-01).
    Ok {
        /// Event id.
        id: String,
        /// Stored (or a duplicate of a stored one).
        accepted: bool,
        /// The relay's reason, often empty.
        message: String,
    },
    /// `["NOTICE", text]`.
    Notice(String),
    /// Anything else (EOSE, EVENT, AUTH…): not expected here.
    Other(String),
}

/// Parse a relay message. Errors: not JSON, or an `OK` of the wrong shape.
pub fn parse_reply(text: &str) -> Result<Reply> {
    let v: serde_json::Value = serde_json::from_str(text).context("relay message is not JSON")?;
    let a = v.as_array().context("relay message is not a JSON array")?;
    match a.first().and_then(|k| k.as_str()) {
        Some("OK") => {
            let (Some(id), Some(accepted)) = (
                a.get(1).and_then(|x| x.as_str()),
                a.get(2).and_then(|x| x.as_bool()),
            ) else {
                bail!("malformed OK: {text}");
            };
            Ok(Reply::Ok {
                id: id.to_string(),
                accepted,
                message: a
                    .get(3)
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_string(),
            })
        }
        Some("NOTICE") => Ok(Reply::Notice(
            a.get(1)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string(),
        )),
        _ => Ok(Reply::Other(text.to_string())),
    }
}

/// A WebSocket connection to a Nostr relay.
pub struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Connection {
    /// Open `url` (`ws://HOST:PORT/`).
    pub async fn connect(url: &str) -> Result<Connection> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("WebSocket connect to {url}"))?;
        Ok(Connection { ws })
    }

    /// Send `events` in order, at most `window` unacknowledged at a time,
    /// starting no new one after `deadline`; return when every event sent
    /// is acknowledged, with the number acknowledged. Errors: an event
    /// refused (`OK … false`), a `NOTICE`, an `OK` for an event not in
    /// flight, the connection closing, or no answer for 30 s.
    pub async fn publish(
        &mut self,
        events: &[Outgoing],
        window: usize,
        deadline: Instant,
    ) -> Result<u64> {
        let window = window.max(1);
        let mut in_flight: HashSet<&str> = HashSet::with_capacity(window);
        let mut next = 0;
        let mut acked = 0u64;
        loop {
            let mut sent = false;
            while in_flight.len() < window && next < events.len() && Instant::now() < deadline {
                let e = &events[next];
                self.ws.feed(Message::text(e.text.as_str())).await?;
                in_flight.insert(&e.id);
                next += 1;
                sent = true;
            }
            if sent {
                self.ws.flush().await?;
            }
            if in_flight.is_empty() {
                return Ok(acked);
            }
            let msg = tokio::time::timeout(ANSWER_TIMEOUT, self.ws.next())
                .await
                .context("no answer from the Nostr relay in 30 s")?
                .context("the Nostr relay closed the connection")??;
            let Message::Text(text) = msg else {
                continue; // pings are answered by tungstenite
            };
            match parse_reply(text.as_str())? {
                Reply::Ok {
                    id, accepted: true, ..
                } => {
                    if !in_flight.remove(id.as_str()) {
                        bail!("OK for an event not in flight: {id}");
                    }
                    acked += 1;
                }
                Reply::Ok { id, message, .. } => bail!("event {id} refused: {message}"),
                Reply::Notice(n) => bail!("Nostr relay NOTICE: {n}"),
                Reply::Other(_) => {}
            }
        }
    }

    /// Close the connection (a WebSocket close frame).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_parsed_by_shape() {
        assert_eq!(
            parse_reply(r#"["OK","ab",true,""]"#).unwrap(),
            Reply::Ok {
                id: "ab".into(),
                accepted: true,
                message: String::new()
            }
        );
        assert_eq!(
            parse_reply(r#"["OK","ab",false,"blocked: no"]"#).unwrap(),
            Reply::Ok {
                id: "ab".into(),
                accepted: false,
                message: "blocked: no".into()
            }
        );
        assert_eq!(
            parse_reply(r#"["NOTICE","slow down"]"#).unwrap(),
            Reply::Notice("slow down".into())
        );
        assert!(parse_reply(r#"["OK","ab","true"]"#).is_err());
        assert!(parse_reply(r#"{"OK":1}"#).is_err());
        assert!(parse_reply("not json").is_err());
    }
}
