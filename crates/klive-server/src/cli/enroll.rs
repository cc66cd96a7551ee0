//! `enroll-token create`.

use anyhow::Result;
use clap::Subcommand;

use klive_format::api::EnrollTokenRequest;

use super::{Ctx, parse_duration};

#[derive(Subcommand)]
pub enum EnrollCommand {
    /// Create an enrollment token for `klive register --token`.
    Create {
        #[arg(long)]
        channel: String,
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        expires: u64,
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: String,
    },
}

pub async fn enroll_token(ctx: &Ctx, command: EnrollCommand) -> Result<()> {
    let EnrollCommand::Create {
        channel,
        expires,
        max_uses,
        actor,
    } = command;
    let request = EnrollTokenRequest {
        channel,
        expires_in_secs: expires,
        max_uses,
    };
    create(ctx, &actor, &request).await
}

/// `enroll-token create`: the token on stdout, what it allows on stderr.
async fn create(ctx: &Ctx, actor: &str, request: &EnrollTokenRequest) -> Result<()> {
    let by = ctx.user(actor).await?;
    let t = ctx
        .service
        .enrollment()
        .create_enroll_token(&by, request)
        .await?;
    println!("{}", t.token);
    eprintln!(
        "channel {}, {} use(s), expires {}",
        t.channel, t.max_uses, t.expires_at
    );
    Ok(())
}
