//! The canonical binary encoding of roster entries (docs/security.md
//! "Devices, roster and key epochs"): fixed-width big-endian integers,
//! fixed-size byte arrays, and short strings and lists prefixed by a one-byte
//! count. One value has exactly one encoding, so an entry's id (a hash of its
//! bytes) is well defined.
//!
//! [`Reader`] checks every claimed count against its limit **and** against
//! the bytes actually left before allocating anything, and never panics.

use super::RosterError;

/// Appends canonical fields to a byte vector.
#[derive(Debug, Default)]
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }

    /// A string of at most 255 bytes (callers validate names first).
    pub(crate) fn short_str(&mut self, v: &str) {
        debug_assert!(v.len() <= u8::MAX as usize);
        self.0.push(v.len() as u8);
        self.0.extend_from_slice(v.as_bytes());
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads canonical fields from a byte slice; every read is bounds-checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RosterError> {
        if self.rest.len() < n {
            return Err(RosterError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, RosterError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, RosterError> {
        let mut out = [0u8; 8];
        out.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(out))
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], RosterError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// A string of at most `max` bytes: the length byte is checked against
    /// `max` before the bytes are read; the bytes must be UTF-8.
    pub(crate) fn short_str(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<String, RosterError> {
        let len = self.u8(what)? as usize;
        if len > max {
            return Err(RosterError::TooLong { what, len, max });
        }
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| RosterError::Malformed(format!("{what} is not UTF-8")))
    }

    /// A list count (one byte) for items of `item_len` bytes each: checked
    /// against `max` and against the bytes left, so a caller may then
    /// allocate `count` items.
    pub(crate) fn count(
        &mut self,
        max: usize,
        item_len: usize,
        what: &'static str,
    ) -> Result<usize, RosterError> {
        let count = self.u8(what)? as usize;
        if count > max {
            return Err(RosterError::TooLong {
                what,
                len: count,
                max,
            });
        }
        if self.rest.len() < count * item_len {
            return Err(RosterError::Truncated(what));
        }
        Ok(count)
    }

    /// Errors with [`RosterError::TrailingBytes`] unless everything was read.
    pub(crate) fn end(self) -> Result<(), RosterError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(RosterError::TrailingBytes(self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_count_is_checked_against_the_limit_and_the_bytes_left() {
        // 200 items claimed, limit 64.
        let err = Reader::new(&[200]).count(64, 32, "wraps").unwrap_err();
        assert!(
            matches!(err, RosterError::TooLong { len: 200, .. }),
            "{err}"
        );
        // 2 items of 32 bytes claimed, 40 bytes present.
        let mut bytes = vec![2u8];
        bytes.extend([0; 40]);
        let err = Reader::new(&bytes).count(64, 32, "wraps").unwrap_err();
        assert!(matches!(err, RosterError::Truncated("wraps")), "{err}");
        bytes.extend([0; 24]);
        assert_eq!(Reader::new(&bytes).count(64, 32, "wraps").unwrap(), 2);
    }

    #[test]
    fn strings_are_bounded_and_utf8() {
        let err = Reader::new(&[40]).short_str(32, "name").unwrap_err();
        assert!(matches!(err, RosterError::TooLong { len: 40, .. }));
        let err = Reader::new(&[3, b'a']).short_str(32, "name").unwrap_err();
        assert!(matches!(err, RosterError::Truncated("name")));
        let err = Reader::new(&[1, 0xff]).short_str(32, "name").unwrap_err();
        assert!(err.to_string().contains("UTF-8"));
        let mut r = Reader::new(&[2, b'h', b'i', 9]);
        assert_eq!(r.short_str(32, "name").unwrap(), "hi");
        assert!(matches!(r.end(), Err(RosterError::TrailingBytes(1))));
    }
}
