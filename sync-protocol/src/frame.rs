//! Length-prefixed frames on a QUIC stream (`docs/protocol.md` §Framing).
//!
//! A frame is a `u32` big-endian body length followed by the body. The length
//! is checked against the caller's limit before any buffer is sized, and the
//! body is read incrementally, so memory follows the bytes that actually
//! arrive, never the bytes a peer claims.

use crate::codec::{DecodeError, decode_body};
use crate::limits::{FRAME_HEADER_LEN, MAX_FRAME_CEILING};
use crate::message::Message;
use crate::segments::{FrameSegments, Part, encode_frame_segments, encode_push_segments};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Initial buffer for a body; it grows as bytes arrive.
const INITIAL_BODY_CAPACITY: usize = 16 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream failed (reset, connection lost, local I/O).
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is over the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The claimed body length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: got {got} of {expected} bytes")]
    Truncated {
        /// Bytes the frame needed (header or body).
        expected: u64,
        /// Bytes that arrived.
        got: u64,
    },
    /// The body is not a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl FrameError {
    /// True when the peer broke the protocol (as opposed to a lost stream).
    pub fn is_protocol_violation(&self) -> bool {
        !matches!(self, FrameError::Io(_))
    }
}

/// Read one frame body of at most `max` bytes.
///
/// Returns `Ok(None)` when the stream ends cleanly before a frame starts.
/// Errors: [`FrameError::TooLarge`] (checked before allocating),
/// [`FrameError::Truncated`], [`FrameError::Io`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut body = Vec::new();
    Ok(read_frame_into(r, max, &mut body).await?.then_some(body))
}

/// As [`read_frame`], into `body` (cleared first), so a reader of many
/// frames reuses one buffer. Returns `Ok(false)` on a clean end of stream.
pub async fn read_frame_into<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
    body: &mut Vec<u8>,
) -> Result<bool, FrameError> {
    match read_frame_header(r, max).await? {
        None => {
            body.clear();
            Ok(false)
        }
        Some(len) => {
            read_frame_body(r, len, body).await?;
            Ok(true)
        }
    }
}

/// The first half of [`read_frame`]: the length prefix, checked against
/// `max` (nothing is allocated). `Ok(None)` on a clean end of stream.
/// Lets a caller set a deadline that depends on the announced length.
/// Errors: [`FrameError::TooLarge`], [`FrameError::Truncated`], [`FrameError::Io`].
pub async fn read_frame_header<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
) -> Result<Option<u32>, FrameError> {
    let max = max.min(MAX_FRAME_CEILING);
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut got = 0;
    while got < FRAME_HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                expected: FRAME_HEADER_LEN as u64,
                got: got as u64,
            });
        }
        got += n;
    }
    let len = u32::from_be_bytes(header);
    if len > max {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max,
        });
    }
    Ok(Some(len))
}

/// The second half of [`read_frame`]: exactly `len` body bytes into `body`
/// (cleared first), read incrementally. Errors: [`FrameError::Truncated`],
/// [`FrameError::Io`].
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u32,
    body: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let len = len as usize;
    body.clear();
    body.reserve(len.min(INITIAL_BODY_CAPACITY));
    r.take(len as u64).read_to_end(body).await?;
    if body.len() < len {
        return Err(FrameError::Truncated {
            expected: len as u64,
            got: body.len() as u64,
        });
    }
    Ok(())
}

/// Read and decode one message from a frame of at most `max` bytes.
/// `Ok(None)` on a clean end of stream. Errors: as [`read_frame`], plus
/// [`FrameError::Decode`].
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
) -> Result<Option<Message>, FrameError> {
    match read_frame(r, max).await? {
        None => Ok(None),
        Some(body) => Ok(Some(decode_body(&body)?)),
    }
}

/// Encode `msg` and write it as one frame, refusing bodies over `max`.
/// Errors: [`FrameError::TooLarge`] (nothing written), [`FrameError::Io`].
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
    max: u32,
) -> Result<(), FrameError> {
    let body_len = crate::codec::encoded_len(msg) as u64;
    if body_len > u64::from(max.min(MAX_FRAME_CEILING)) {
        return Err(FrameError::TooLarge { len: body_len, max });
    }
    write_segments(w, &encode_frame_segments(msg)).await?;
    Ok(())
}

/// Write a `Push` of `items` as one frame without copying the items
/// ([`crate::segments::encode_push_segments`]), refusing bodies over `max`.
/// Errors: [`FrameError::TooLarge`] (nothing written), [`FrameError::Io`].
pub async fn write_push<W: AsyncWrite + Unpin>(
    w: &mut W,
    items: &[crate::message::PushItem],
    max: u32,
) -> Result<(), FrameError> {
    let frame = encode_push_segments(items);
    let body_len = (frame.len() - FRAME_HEADER_LEN) as u64;
    if body_len > u64::from(max.min(MAX_FRAME_CEILING)) {
        return Err(FrameError::TooLarge { len: body_len, max });
    }
    write_segments(w, &frame).await?;
    Ok(())
}

/// Write an encoded frame part by part: its payloads go to `w` straight
/// from the message they belong to (see [`crate::segments`]).
/// Errors: the writer's.
pub async fn write_segments<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &FrameSegments<'_>,
) -> std::io::Result<()> {
    for part in frame.parts() {
        match part {
            Part::Run(bytes) | Part::Payload(bytes) => w.write_all(bytes).await?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Ack, Notify};

    #[tokio::test]
    async fn reads_back_what_it_writes() {
        let mut buf = Vec::new();
        write_message(&mut buf, &Message::Ack(Ack { cursor: 9 }), 1024)
            .await
            .unwrap();
        write_message(&mut buf, &Message::Notify(Notify { head: 10 }), 1024)
            .await
            .unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_message(&mut r, 1024).await.unwrap(),
            Some(Message::Ack(Ack { cursor: 9 }))
        );
        assert_eq!(
            read_message(&mut r, 1024).await.unwrap(),
            Some(Message::Notify(Notify { head: 10 }))
        );
        assert_eq!(read_message(&mut r, 1024).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading_the_body() {
        // 4 GiB - 1 claimed, nothing behind it.
        let mut r = &[0xffu8, 0xff, 0xff, 0xff][..];
        match read_frame(&mut r, 1024).await {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u64::from(u32::MAX));
                assert_eq!(max, 1024);
            }
            other => panic!("{other:?}"),
        }
        // One byte over the limit.
        let mut r = &[0u8, 0, 4, 1][..];
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(FrameError::TooLarge { len: 1025, .. })
        ));
    }

    #[tokio::test]
    async fn truncated_header_and_body_are_errors() {
        let mut r = &[0u8, 0][..];
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let mut r = &[0u8, 0, 0, 10, 1, 2, 3][..];
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(FrameError::Truncated {
                expected: 10,
                got: 3
            })
        ));
    }

    #[tokio::test]
    async fn zero_length_frame_is_an_empty_body_error() {
        let mut r = &[0u8, 0, 0, 0][..];
        assert!(matches!(
            read_message(&mut r, 1024).await,
            Err(FrameError::Decode(DecodeError::Empty))
        ));
    }

    #[tokio::test]
    async fn write_refuses_a_body_over_the_limit() {
        let mut buf = Vec::new();
        let msg = Message::Notify(Notify { head: u64::MAX });
        assert!(matches!(
            write_message(&mut buf, &msg, 2).await,
            Err(FrameError::TooLarge { .. })
        ));
        assert!(buf.is_empty());
    }
}
