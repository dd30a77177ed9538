//! `sync-relay backup` of a PostgreSQL store (docs/deploy.md "Backup"): the database is dumped
//! by `pg_dump` in its custom format (what operators restore with `pg_restore`), never by a
//! home-made export. The password never reaches the command line (where `ps` would show it):
//! it is taken out of the URL and given to `pg_dump` in `PGPASSWORD`.

use std::path::Path;
use std::process::Command;

/// The dump's file name inside the backup directory.
pub const PG_DUMP_FILE: &str = "relay.pgdump";

/// Failures preparing the dump.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// `storage.url` is not a URL `pg_dump` can take.
    #[error("storage.url is not a valid PostgreSQL URL: {0}")]
    Url(String),
}

/// The `pg_dump` command that writes the database `url` names to `file`
/// (custom format, no owners or privileges, so it restores into a
/// database owned by another role): `pg_dump --format=custom --no-owner
/// --no-privileges --file FILE --dbname URL-WITHOUT-PASSWORD`, with
/// `PGPASSWORD` set when the URL has one. `pg_dump` is looked up in
/// `PATH`. Errors: [`BackupError::Url`].
pub fn pg_dump_command(url: &str, file: &Path) -> Result<Command, BackupError> {
    let mut parsed = url::Url::parse(url).map_err(|e| BackupError::Url(e.to_string()))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(BackupError::Url(format!(
            "scheme {:?}, expected postgres",
            parsed.scheme()
        )));
    }
    let password = parsed
        .password()
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8()
                .map(|p| p.into_owned())
                .map_err(|_| BackupError::Url("password is not UTF-8".into()))
        })
        .transpose()?;
    parsed
        .set_password(None)
        .map_err(|()| BackupError::Url("cannot remove the password".into()))?;
    let mut cmd = Command::new("pg_dump");
    cmd.args(["--format=custom", "--no-owner", "--no-privileges", "--file"])
        .arg(file)
        .arg("--dbname")
        .arg(parsed.as_str());
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn env(cmd: &Command, key: &str) -> Option<String> {
        cmd.get_envs()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
    }

    #[test]
    fn the_password_goes_to_the_environment_never_to_the_command_line() {
        let cmd = pg_dump_command(
            "postgres://relay:s%40cr%3At@db.internal:5433/relay?sslmode=require",
            Path::new("/b/relay.pgdump"),
        )
        .unwrap();
        assert_eq!(cmd.get_program(), "pg_dump");
        let a = args(&cmd);
        assert_eq!(
            a,
            [
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                "--file",
                "/b/relay.pgdump",
                "--dbname",
                "postgres://relay@db.internal:5433/relay?sslmode=require"
            ]
        );
        assert!(!a.iter().any(|x| x.contains("cr")), "{a:?}");
        assert_eq!(env(&cmd, "PGPASSWORD").as_deref(), Some("s@cr:t"));
    }

    #[test]
    fn a_url_without_password_sets_none() {
        let cmd = pg_dump_command("postgresql://postgres@127.0.0.1/db", Path::new("d")).unwrap();
        assert_eq!(env(&cmd, "PGPASSWORD"), None);
        assert_eq!(args(&cmd)[6], "postgresql://postgres@127.0.0.1/db");
    }

    #[test]
    fn other_urls_are_refused() {
        for bad in ["sqlite:///x.db", "not a url"] {
            assert!(pg_dump_command(bad, Path::new("d")).is_err(), "{bad}");
        }
    }
}
