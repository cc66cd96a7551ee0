//! `channel list|add|set-soak`.

use anyhow::Result;
use clap::Subcommand;

use klive_format::api::ChannelRequest;

use super::{Ctx, parse_duration};

#[derive(Subcommand)]
pub enum ChannelCommand {
    List,
    /// Append a channel after the last one.
    Add {
        name: String,
        /// Time a release must spend in the previous channel first, e.g. 24h.
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        min_soak: u64,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: String,
    },
    /// Change a channel's minimum soak time.
    SetSoak {
        name: String,
        #[arg(value_parser = parse_duration)]
        min_soak: u64,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: String,
    },
}

pub async fn channel(ctx: &Ctx, command: ChannelCommand) -> Result<()> {
    match command {
        ChannelCommand::List => list(ctx).await,
        ChannelCommand::Add {
            name,
            min_soak,
            actor,
        } => add(ctx, name, min_soak, &actor).await,
        ChannelCommand::SetSoak {
            name,
            min_soak,
            actor,
        } => set_soak(ctx, &name, min_soak, &actor).await,
    }
}

/// `channel list`.
async fn list(ctx: &Ctx) -> Result<()> {
    for c in ctx.service.channels().list().await? {
        println!("{}\t{}\tmin soak {}s", c.position, c.name, c.min_soak_secs);
    }
    Ok(())
}

/// `channel add`.
async fn add(ctx: &Ctx, name: String, min_soak_secs: u64, actor: &str) -> Result<()> {
    let by = ctx.user(actor).await?;
    let c = ctx
        .service
        .channels()
        .add_channel(
            &by,
            &ChannelRequest {
                name,
                min_soak_secs,
            },
        )
        .await?;
    println!("added channel {} at position {}", c.name, c.position);
    Ok(())
}

/// `channel set-soak`.
async fn set_soak(ctx: &Ctx, name: &str, min_soak_secs: u64, actor: &str) -> Result<()> {
    let by = ctx.user(actor).await?;
    let c = ctx
        .service
        .channels()
        .set_channel_soak(&by, name, min_soak_secs)
        .await?;
    println!("channel {} now needs {}s of soak", c.name, c.min_soak_secs);
    Ok(())
}
