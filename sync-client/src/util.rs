//! Small helpers: time, human-readable sizes and durations, and durable
//! file writes.

use crate::error::{ClientError, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Now as Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now as Unix seconds.
pub fn now_s() -> u64 {
    now_ms() / 1000
}

/// `90061` → `"1d1h1m1s"`; `0` → `"0s"`.
pub fn human_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

/// Parse `30s`, `15m`, `24h`, `7d`, `2w` or plain seconds.
/// Errors: [`ClientError::InvalidInput`].
pub fn parse_duration(text: &str) -> Result<u64> {
    let t = text.trim();
    let bad = || {
        ClientError::InvalidInput(format!(
            "invalid duration {text:?}: use a number with s, m, h, d or w (e.g. 7d)"
        ))
    };
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3_600),
        Some((i, 'd')) => (&t[..i], 86_400),
        Some((i, 'w')) => (&t[..i], 604_800),
        Some(_) => (t, 1),
        None => return Err(bad()),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

/// This machine's host name (its first label, at most 32 bytes), when it
/// is usable as a device name in file names
/// ([`crate::crypto::envelope::validate_device_name`]).
pub fn host_name() -> Option<String> {
    let text = fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let label = text.trim().split('.').next()?;
    let mut cut = label
        .len()
        .min(crate::crypto::envelope::MAX_DEVICE_NAME_LEN);
    while !label.is_char_boundary(cut) {
        cut -= 1;
    }
    let name = &label[..cut];
    crate::crypto::envelope::validate_device_name(name)
        .ok()
        .map(|()| name.to_string())
}

/// A Unix time in ms as `2026-11-27 09:30 UTC` (the number itself when
/// out of range).
pub fn human_time_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// `1536` → `"1.5 KiB"`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Create `dir` with mode 0700 if missing (parents too), and tighten an
/// existing one to 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(ClientError::io(dir))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(ClientError::io(dir))
}

/// Replace `path` atomically with `bytes` (mode 0600): write a temp file in
/// the same directory, fsync it, rename it over `path`, fsync the directory.
/// A crash leaves either the old or the new content, never a mix. The temp
/// file's name is unique to the call (process id and a counter), so two
/// writers of one path at once (`sync --watch`'s head session and a run
/// both recording the relay in use) never truncate or rename each other's.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static TEMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        TEMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(ClientError::io(&tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(ClientError::io(&tmp))?;
    drop(f);
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(ClientError::io(path)(e));
    }
    sync_dir(dir)
}

/// fsync a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ClientError::io(dir))
}

#[cfg(test)]
mod tests {
    /// Two writers of one path at once both succeed and leave one whole
    /// content (a shared temp name made one fail, or renamed a temp file
    /// the other was still writing).
    #[test]
    fn concurrent_atomic_writes_of_one_path_succeed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("current-relay");
        let writers: Vec<_> = [b'a', b'b']
            .into_iter()
            .map(|c| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        write_atomic(&path, &[c; 4096]).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let got = fs::read(&path).unwrap();
        assert!(got == [b'a'; 4096] || got == [b'b'; 4096]);
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "temp files left"
        );
    }

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("24h").unwrap(), 86_400);
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert!(parse_duration("7x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(human_duration(90_061), "1d1h1m1s");
        assert_eq!(human_duration(7200), "2h");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(100 << 20), "100.0 MiB");
    }

    #[test]
    fn atomic_write_replaces_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
