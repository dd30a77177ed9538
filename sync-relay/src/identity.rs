//! The relay's persistent node key (docs/protocol.md): `relay.key` in the data dir,
//! 64 hex characters, mode 0600, created on first start so the node id never
//! changes.

use iroh::SecretKey;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File name of the key inside the data dir.
pub const KEY_FILE: &str = "relay.key";

/// Failures reading or creating the key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Filesystem failure.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("{path}: not a relay key (expected 64 hex characters)")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |error| IdentityError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Create `dir` (and parents) with mode 0700 if it does not exist.
pub fn ensure_data_dir(dir: &Path) -> Result<(), IdentityError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Load the key from `data_dir/relay.key`, creating the directory and a new
/// random key if missing. Errors: [`IdentityError`].
pub fn load_or_create(data_dir: &Path) -> Result<SecretKey, IdentityError> {
    ensure_data_dir(data_dir)?;
    let path = data_dir.join(KEY_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => parse(&text).ok_or(IdentityError::Malformed { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_new(&path, &SecretKey::generate())?;
            // Read back what is on disk: a concurrent first start may have
            // linked its key first, and that one is the identity.
            let text = fs::read_to_string(&path).map_err(io(&path))?;
            parse(&text).ok_or(IdentityError::Malformed { path })
        }
        Err(e) => Err(io(&path)(e)),
    }
}

fn parse(text: &str) -> Option<SecretKey> {
    let bytes: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
    Some(SecretKey::from_bytes(&bytes))
}

/// Write the key to a temp file (0600), fsync, then link it into place
/// without replacing an existing key (a concurrent first start keeps one).
fn write_new(path: &Path, key: &SecretKey) -> Result<(), IdentityError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        let first = load_or_create(&data).unwrap();
        let second = load_or_create(&data).unwrap();
        assert_eq!(first.public(), second.public());
        let mode = fs::metadata(data.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn malformed_key_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), "not hex").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(IdentityError::Malformed { .. })
        ));
    }
}
