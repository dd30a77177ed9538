//! One module per command.

mod init;
mod pull;
mod push;
mod status;

use crate::cli::{Args, Command};
use anyhow::{Context, Result};
use sync_client::Home;

pub async fn run(args: Args) -> Result<()> {
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
        } => init::init(&home, &relay, name, &expires),
        Command::Invite { expires } => init::invite(&home, &expires),
        Command::Join { invite } => init::join(&home, &invite),
        Command::Push {
            files,
            name,
            ttl,
            json,
        } => push::push(&home, files, name, ttl, json).await,
        Command::Pull { out, follow, json } => pull::pull(&home, &out, follow, json).await,
        Command::Status { json } => status::status(&home, json).await,
    }
}
