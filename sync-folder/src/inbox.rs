//! The inbox: folder records as they arrive during a pull, appended to
//! `<home>/folder/inbox.bin` and fsynced before the pull records its
//! cursor (the pull's event callback runs before the state that moves the
//! cursor past the blob is saved), so a crash never loses a record the
//! relay will not deliver again. Each frame: a 4-byte little-endian length
//! then `postcard(InboxItem)`. Records already folded are recognized by
//! (sender, sequence number) and skipped, so a frame read twice is
//! harmless.

use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Largest frame read back (a record fits one blob, at most 32 MiB).
const MAX_FRAME: usize = 33 * 1024 * 1024;

/// One received record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxItem {
    /// Cursor it arrived at.
    pub cursor: u64,
    /// Sender's node id (hex).
    pub sender: String,
    /// Sender's sequence number.
    pub seq: u64,
    /// The record's body.
    pub body: Vec<u8>,
}

/// The inbox file.
#[derive(Debug, Clone)]
pub struct Inbox {
    path: PathBuf,
}

impl Inbox {
    /// The inbox at `path`.
    pub fn at(path: &Path) -> Inbox {
        Inbox {
            path: path.to_path_buf(),
        }
    }

    /// Append one item durably (write, fsync).
    pub fn append(&self, item: &InboxItem) -> io::Result<()> {
        let body = postcard::to_allocvec(item).map_err(io::Error::other)?;
        let len = u32::try_from(body.len()).map_err(io::Error::other)?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut frame = len.to_le_bytes().to_vec();
        frame.extend(body);
        f.write_all(&frame)?;
        f.sync_all()
    }

    /// Every item, in arrival order. A torn last frame (a crash while
    /// appending, before the fsync returned) is dropped: its blob was not
    /// yet recorded as delivered, so the next pull brings it again.
    pub fn read(&self) -> io::Result<Vec<InboxItem>> {
        let mut bytes = Vec::new();
        match fs::File::open(&self.path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let mut items = Vec::new();
        let mut rest = bytes.as_slice();
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len > MAX_FRAME || rest.len() < 4 + len {
                break;
            }
            match postcard::from_bytes(&rest[4..4 + len]) {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
            rest = &rest[4 + len..];
        }
        Ok(items)
    }

    /// Empty the inbox (after its items were folded and committed).
    pub fn clear(&self) -> io::Result<()> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::at(&dir.path().join("inbox.bin"));
        assert!(inbox.read().unwrap().is_empty());
        let a = InboxItem {
            cursor: 5,
            sender: "ab".into(),
            seq: 2,
            body: vec![1, 2, 3],
        };
        inbox.append(&a).unwrap();
        inbox.append(&a).unwrap();
        // A torn frame at the end is dropped.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("inbox.bin"))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1]).unwrap();
        assert_eq!(inbox.read().unwrap(), vec![a.clone(), a]);
        inbox.clear().unwrap();
        assert!(inbox.read().unwrap().is_empty());
    }
}
