//! Encoding and decoding of frame bodies (`docs/protocol.md` §Encoding).
//!
//! A body is one postcard-encoded [`Message`]. Decoding is strict: an
//! unknown tag, a malformed field, or bytes left over after the message are
//! errors, so one message has exactly one encoding.

use crate::limits::{FRAME_HEADER_LEN, MAX_DEVICE_NAME};
use crate::message::{Hello, HelloWithToken, Message, MessageKind};

/// Why a frame body is not a valid message. Maps to INVALID_MESSAGE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body has no bytes.
    #[error("empty frame body")]
    Empty,
    /// The body's first varint is not a known message tag.
    #[error("unknown message tag {0}")]
    UnknownTag(u32),
    /// The body starts with a known tag but its fields do not decode.
    #[error("malformed {kind} message: {reason}")]
    Malformed {
        /// The message the tag announced.
        kind: MessageKind,
        /// postcard's description of the failure.
        reason: String,
    },
    /// The message decoded but bytes are left over.
    #[error("{kind} message followed by {extra} trailing bytes")]
    TrailingBytes {
        /// The message that decoded.
        kind: MessageKind,
        /// Number of bytes after it.
        extra: usize,
    },
    /// The message decoded but is not in its one canonical encoding (an
    /// overlong varint): refused so every message has exactly one encoding.
    #[error("{kind} message is not canonically encoded")]
    NonCanonical {
        /// The message that decoded.
        kind: MessageKind,
    },
    /// A field is over a static protocol limit.
    #[error("{0}")]
    OverLimit(String),
}

const KINDS: [MessageKind; MessageKind::COUNT as usize] = [
    MessageKind::Hello,
    MessageKind::Welcome,
    MessageKind::Push,
    MessageKind::PushOk,
    MessageKind::Pull,
    MessageKind::PullBatch,
    MessageKind::Ack,
    MessageKind::AckOk,
    MessageKind::Notify,
    MessageKind::Error,
    MessageKind::HelloWithToken,
    MessageKind::CloseGroup,
    MessageKind::CloseGroupOk,
    MessageKind::Deliver,
];

/// The encoded body of `msg` (no length prefix).
pub fn encode_body(msg: &Message) -> Vec<u8> {
    // Serializing these plain types into a Vec cannot fail.
    postcard::to_allocvec(msg).unwrap_or_default()
}

/// The whole frame for `msg`: `u32` big-endian body length, then the body.
pub fn encode_frame(msg: &Message) -> Vec<u8> {
    let body_len = encoded_len(msg);
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body_len);
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    let out = postcard::to_extend(msg, out).unwrap_or_default();
    debug_assert_eq!(out.len(), FRAME_HEADER_LEN + body_len);
    out
}

/// Exact length (bytes) of `msg`'s body, without encoding it.
pub fn encoded_len(msg: &Message) -> usize {
    postcard::experimental::serialized_size(msg).unwrap_or(0)
}

/// Decode one message from a whole frame body.
///
/// Errors: [`DecodeError::Empty`], [`DecodeError::UnknownTag`],
/// [`DecodeError::Malformed`], [`DecodeError::TrailingBytes`],
/// [`DecodeError::NonCanonical`],
/// [`DecodeError::OverLimit`] (a `Hello` device name over 64 bytes).
pub fn decode_body(body: &[u8]) -> Result<Message, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::Empty);
    }
    let kind = match postcard::take_from_bytes::<u32>(body) {
        Ok((tag, _)) if tag < MessageKind::COUNT => KINDS[tag as usize],
        Ok((tag, _)) => return Err(DecodeError::UnknownTag(tag)),
        Err(_) => return Err(DecodeError::UnknownTag(u32::MAX)),
    };
    let (msg, rest) =
        postcard::take_from_bytes::<Message>(body).map_err(|e| DecodeError::Malformed {
            kind,
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            kind,
            extra: rest.len(),
        });
    }
    // postcard accepts overlong varints (e.g. `ef 00` for 111); the canonical
    // encoding is strictly shorter, so comparing lengths finds them without
    // encoding the message again.
    if encoded_len(&msg) != body.len() {
        return Err(DecodeError::NonCanonical { kind });
    }
    let hello = match &msg {
        Message::Hello(h) | Message::HelloWithToken(HelloWithToken { hello: h, .. }) => Some(h),
        _ => None,
    };
    if let Some(Hello {
        device_name: Some(name),
        ..
    }) = hello
        && name.len() > MAX_DEVICE_NAME
    {
        return Err(DecodeError::OverLimit(format!(
            "device_name is {} bytes, at most {MAX_DEVICE_NAME} allowed",
            name.len()
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;

    fn ack(cursor: u64) -> Message {
        Message::Ack(Ack { cursor })
    }

    #[test]
    fn round_trip_and_exact_length() {
        let msg = Message::Push(Push {
            items: vec![PushItem {
                blob_id: BlobId([7; 16]),
                payload: vec![1, 2, 3],
                ttl_s: Some(60),
            }],
        });
        let frame = encode_frame(&msg);
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(len, encoded_len(&msg));
        assert_eq!(decode_body(&frame[4..]).unwrap(), msg);
    }

    #[test]
    fn empty_body_is_rejected() {
        assert_eq!(decode_body(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn unknown_tag_is_rejected() {
        assert_eq!(decode_body(&[14]), Err(DecodeError::UnknownTag(14)));
        assert_eq!(
            decode_body(&[0x80, 0x01]),
            Err(DecodeError::UnknownTag(128))
        );
        // A varint that never ends is not a tag either.
        assert!(matches!(
            decode_body(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::UnknownTag(_))
        ));
    }

    #[test]
    fn truncated_body_is_malformed() {
        let body = encode_body(&Message::Hello(Hello {
            version: 1,
            group_id: GroupId([1; 32]),
            proof: Proof([2; 64]),
            device_name: Some("laptop".into()),
        }));
        for cut in 1..body.len() {
            match decode_body(&body[..cut]) {
                Err(DecodeError::Malformed { kind, .. }) => assert_eq!(kind, MessageKind::Hello),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut body = encode_body(&ack(5));
        body.push(0);
        assert_eq!(
            decode_body(&body),
            Err(DecodeError::TrailingBytes {
                kind: MessageKind::Ack,
                extra: 1
            })
        );
    }

    #[test]
    fn overlong_varints_are_rejected() {
        // Found by the `messages` fuzz target: `ef 00` is an overlong 111.
        assert_eq!(
            decode_body(&[4, 0xef, 0x00, 0x01]),
            Err(DecodeError::NonCanonical {
                kind: MessageKind::Pull
            })
        );
        assert_eq!(
            decode_body(&[4, 0x6f, 0x01]).unwrap(),
            Message::Pull(Pull {
                after: 111,
                limit: 1
            })
        );
        // An overlong tag too.
        assert!(matches!(
            decode_body(&[0x86, 0x00, 0x05]),
            Err(DecodeError::NonCanonical { .. })
        ));
    }

    #[test]
    fn oversized_device_name_is_rejected() {
        let body = encode_body(&Message::Hello(Hello {
            version: 1,
            group_id: GroupId([1; 32]),
            proof: Proof([2; 64]),
            device_name: Some("x".repeat(MAX_DEVICE_NAME + 1)),
        }));
        assert!(matches!(decode_body(&body), Err(DecodeError::OverLimit(_))));
        let body = encode_body(&Message::HelloWithToken(HelloWithToken {
            hello: Hello {
                version: 1,
                group_id: GroupId([1; 32]),
                proof: Proof([2; 64]),
                device_name: Some("x".repeat(MAX_DEVICE_NAME + 1)),
            },
            access_token: AccessToken([3; 32]),
        }));
        assert!(matches!(decode_body(&body), Err(DecodeError::OverLimit(_))));
    }

    #[test]
    fn access_tokens_parse_print_and_never_debug() {
        let t = AccessToken([0xab; 32]);
        let text = t.to_text();
        assert_eq!(text, format!("0ksync-token-{}", "ab".repeat(32)));
        assert_eq!(AccessToken::parse(&format!(" {text}\n")), Ok(t));
        assert_eq!(
            AccessToken::parse(
                &text
                    .to_uppercase()
                    .replace("0KSYNC-TOKEN-", "0ksync-token-")
            ),
            Ok(t)
        );
        for bad in [
            "",
            "ab".repeat(32).as_str(),
            &text[..text.len() - 1],
            &format!("{text}00"),
            "0ksync-token-zz",
        ] {
            assert_eq!(AccessToken::parse(bad), Err(ParseTokenError), "{bad:?}");
        }
        assert_eq!(
            AccessToken::parse(&format!("0ksync-token-{}é", "a".repeat(62))),
            Err(ParseTokenError)
        );
        assert!(
            !format!("{t:?}").contains("ab"),
            "Debug shows no token byte"
        );
        let hello = HelloWithToken {
            hello: Hello {
                version: 1,
                group_id: GroupId([1; 32]),
                proof: Proof([2; 64]),
                device_name: None,
            },
            access_token: t,
        };
        assert!(!format!("{hello:?}").contains("abab"), "{hello:?}");
    }

    #[test]
    fn huge_claimed_vec_length_fails_without_allocating_it() {
        // Push with an item count of 2^32-1 and no items behind it.
        let body = [2u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            decode_body(&body),
            Err(DecodeError::Malformed {
                kind: MessageKind::Push,
                ..
            })
        ));
        // A payload claiming 4 GiB inside a 10-byte body.
        let mut body = vec![2u8, 1];
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode_body(&body).is_err());
    }

    #[test]
    fn invalid_utf8_name_is_malformed() {
        let mut body = encode_body(&Message::Hello(Hello {
            version: 1,
            group_id: GroupId([1; 32]),
            proof: Proof([2; 64]),
            device_name: Some("ab".into()),
        }));
        let n = body.len();
        body[n - 1] = 0xff;
        assert!(matches!(
            decode_body(&body),
            Err(DecodeError::Malformed { .. })
        ));
    }
}
