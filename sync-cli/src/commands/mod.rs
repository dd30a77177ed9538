//! One module per command.

mod init;
mod pull;
mod push;
mod status;

use crate::cli::{Args, Command};
use crate::output::Out;
use anyhow::{Context, Result};
use clap::CommandFactory;
use sync_client::{Home, RetryPolicy};

/// A retry policy giving up after `retries` reconnects (`None`: never).
fn policy(retries: Option<u32>) -> RetryPolicy {
    RetryPolicy {
        max_attempts: retries,
        ..RetryPolicy::default()
    }
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
        } => init::init(&home, &relay, name, &expires, qr, out),
        Command::Invite { expires, qr } => init::invite(&home, &expires, qr, out),
        Command::Join { invite } => init::join(&home, &invite, out),
        Command::Push {
            files,
            name,
            ttl,
            force,
            retries,
        } => push::push(&home, files, name, ttl, force, policy(Some(retries)), out).await,
        Command::Pull {
            out: dir,
            follow,
            retries,
        } => {
            let retries = if follow {
                retries
            } else {
                Some(retries.unwrap_or(12))
            };
            pull::pull(&home, &dir, follow, policy(retries), out).await
        }
        Command::Status => status::status(&home, out).await,
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
