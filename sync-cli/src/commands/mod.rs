//! One module per command.

mod close_old;
mod devices;
mod epochs;
mod init;
mod invite_answer;
mod invites;
mod join;
mod notices;
mod pull;
mod push;
mod revoke;
mod status;
mod sync;
mod sync_watch;

use crate::cli::{Args, Command};
use crate::output::Out;
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::time::Duration;
use sync_client::{Home, RetryPolicy};

/// A retry policy giving up once the relay has been unreachable for
/// `retry_for` (`None`: never), however many attempts that is.
fn policy(retry_for: Option<&str>, stall_timeout: &str) -> Result<RetryPolicy> {
    let stall = sync_client::util::parse_duration(stall_timeout)?;
    anyhow::ensure!(stall >= 1, "--stall-timeout must be at least 1s");
    let give_up_after = retry_for
        .map(sync_client::util::parse_duration)
        .transpose()?
        .map(Duration::from_secs);
    Ok(RetryPolicy {
        max_attempts: None,
        give_up_after,
        stall_timeout: Duration::from_secs(stall),
        ..RetryPolicy::default()
    })
}

pub async fn run(args: Args) -> Result<()> {
    let out = Out {
        json: args.json,
        quiet: args.quiet,
    };
    let home = match &args.home {
        Some(dir) => Home::at(dir),
        None => Home::at(
            Home::default_dir().context("no config directory on this system; pass --home DIR")?,
        ),
    };
    match args.command {
        Command::Init {
            relay,
            name,
            expires,
            qr,
            token,
            device_name,
        } => {
            init::init(
                &home,
                &relay,
                name,
                &expires,
                qr,
                token.as_deref(),
                device_name,
                out,
            )
            .await
        }
        Command::Invite {
            expires,
            qr,
            token,
            list,
            cancel,
            answer,
        } => {
            if list {
                invites::list(&home, out)
            } else if answer {
                invite_answer::answer(&home, policy(Some("30s"), "15s")?, out).await
            } else if let Some(id) = cancel {
                invites::cancel(&home, &id, out).await
            } else {
                let token = token
                    .map(|t| {
                        sync_protocol::AccessToken::parse(&t)
                            .context("invalid --token (or SYNC_TOKEN)")
                    })
                    .transpose()?;
                invites::create(&home, &expires, qr, token, out).await
            }
        }
        Command::Join {
            invite,
            file,
            device_name,
            timeout,
        } => {
            join::join(
                &home,
                invite.as_deref(),
                file.as_deref(),
                device_name,
                &timeout,
                out,
            )
            .await
        }
        Command::Devices => devices::devices(&home, out),
        Command::Revoke { device, retry_for } => {
            let policy = policy(Some(&retry_for), "15s")?;
            revoke::revoke(&home, &device, policy, out).await
        }
        Command::Push {
            files,
            name,
            ttl,
            force,
            retry_for,
            stall_timeout,
        } => {
            let policy = policy(Some(&retry_for), &stall_timeout)?;
            push::push(&home, files, name, ttl, force, policy, out).await
        }
        Command::Pull {
            out: dir,
            follow,
            retry_for,
            stall_timeout,
        } => {
            let retry_for = match (&retry_for, follow) {
                (Some(d), _) => Some(d.as_str()),
                (None, true) => None,
                (None, false) => Some("30s"),
            };
            let policy = policy(retry_for, &stall_timeout)?;
            pull::pull(&home, &dir, follow, policy, out).await
        }
        Command::Status { retry_for, dir } => match dir {
            Some(dir) => sync::status(&home, &dir, out).await,
            None => {
                let policy = policy(Some(&retry_for), "15s")?;
                status::status(&home, policy, out).await
            }
        },
        Command::Sync {
            dir,
            watch,
            rescan_every,
            ttl,
            retry_for,
            stall_timeout,
        } => {
            let policy = policy(Some(&retry_for), &stall_timeout)?;
            let watch = if watch {
                let rescan = sync_client::util::parse_duration(&rescan_every)?;
                anyhow::ensure!(rescan >= 1, "--rescan-every must be at least 1s");
                Some(sync_folder::watch::WatchOptions {
                    rescan: Duration::from_secs(rescan),
                    ..Default::default()
                })
            } else {
                None
            };
            sync::sync(&home, &dir, ttl, policy, out, watch).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Args::command(),
                "sync-cli",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    //! The `--json` output schemas, snapshotted: a change to what scripts
    //! parse must show up as a reviewed snapshot change.

    #[test]
    fn json_schemas_are_stable() {
        insta::assert_json_snapshot!("schema_push", schemars::schema_for!(super::push::PushOut));
        insta::assert_json_snapshot!(
            "schema_pull_event",
            schemars::schema_for!(sync_client::PullEvent)
        );
        insta::assert_json_snapshot!("schema_pull_done", schemars::schema_for!(super::pull::Done));
        insta::assert_json_snapshot!(
            "schema_status",
            schemars::schema_for!(super::status::StatusOut)
        );
        insta::assert_json_snapshot!(
            "schema_invite",
            schemars::schema_for!(super::invites::InviteOut)
        );
        insta::assert_json_snapshot!(
            "schema_invite_list",
            schemars::schema_for!(super::invites::InviteList)
        );
        insta::assert_json_snapshot!("schema_join", schemars::schema_for!(super::join::JoinOut));
        insta::assert_json_snapshot!(
            "schema_notice",
            schemars::schema_for!(super::notices::Notice)
        );
    }
}
