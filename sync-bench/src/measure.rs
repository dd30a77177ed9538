//! Running a command to completion and measuring it: wall time and the
//! child's peak resident memory (`ru_maxrss` from `wait4(2)`).

use anyhow::{Context, Result, bail};
use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one command run cost.
#[derive(Debug)]
pub struct Measured {
    /// Spawn to exit.
    pub elapsed: Duration,
    /// Peak resident set size of the process, KiB (Linux `ru_maxrss`).
    pub peak_rss_kib: u64,
    /// Its standard output.
    pub stdout: Vec<u8>,
}

/// Run `cmd` (stdin null, stdout and stderr captured in temp files) and
/// wait for it with `wait4`, which reports its peak RSS. Errors: it could
/// not start, or exited unsuccessfully (with its stderr).
pub fn measure(cmd: &mut Command) -> Result<Measured> {
    let mut out = tempfile::tempfile()?;
    let mut err = tempfile::tempfile()?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?);
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain old data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own unwaited child (`Child` never waited on
        // it; dropping a `Child` neither waits nor kills); the pointers are
        // to live locals of the right types.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    let elapsed = started.elapsed();
    drop(child);
    let mut stdout = Vec::new();
    out.rewind()?;
    out.read_to_end(&mut stdout)?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut stderr = String::new();
        err.rewind()?;
        err.read_to_string(&mut stderr)?;
        bail!("{cmd:?} failed (wait status {status}): {stderr}");
    }
    Ok(Measured {
        elapsed,
        peak_rss_kib: usage.ru_maxrss.max(0) as u64,
        stdout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_and_output_are_the_childs() {
        // A shell that holds ~64 MiB in a variable peaks above that.
        let m = measure(Command::new("sh").args([
            "-c",
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}",
        ]))
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&m.stdout).trim(), "67108864");
        assert!(m.peak_rss_kib > 64 * 1024, "{} KiB", m.peak_rss_kib);
        let small = measure(&mut Command::new("true")).unwrap();
        assert!(small.peak_rss_kib < 32 * 1024, "{} KiB", small.peak_rss_kib);
    }

    #[test]
    fn a_failing_command_is_an_error_with_its_stderr() {
        let e = measure(Command::new("sh").args(["-c", "echo nope >&2; exit 3"])).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
    }
}
