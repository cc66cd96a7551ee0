//! `promote` and `approve`.

use anyhow::Result;
use clap::Args;

use klive_format::api::{PromoteRequest, Promotion};
use klive_format::{BuildId, PatchLevel};

use super::Ctx;

#[derive(Args)]
pub struct PromoteArgs {
    build_id: BuildId,
    level: PatchLevel,
    #[arg(long)]
    to: String,
    /// Effective at once, without approval or soak time; needs --reason.
    #[arg(long)]
    emergency: bool,
    #[arg(long)]
    reason: Option<String>,
    /// The user doing this.
    #[arg(long = "as", env = "KLIVE_USER")]
    actor: String,
}

#[derive(Args)]
pub struct ApproveArgs {
    promotion_id: String,
    #[arg(long = "as", env = "KLIVE_USER")]
    actor: String,
}

/// `promote`: to the next channel.
pub async fn promote(ctx: &Ctx, args: PromoteArgs) -> Result<()> {
    let PromoteArgs {
        build_id,
        level,
        to,
        emergency,
        reason,
        actor,
    } = args;
    let by = ctx.user(&actor).await?;
    let request = PromoteRequest {
        to,
        emergency,
        reason,
    };
    let p = ctx
        .service
        .promotions()
        .promote(&by, &build_id, level, &request)
        .await?;
    print_promotion(&p);
    Ok(())
}

/// `approve`: a pending or emergency promotion.
pub async fn approve(ctx: &Ctx, args: ApproveArgs) -> Result<()> {
    let by = ctx.user(&args.actor).await?;
    let p = ctx
        .service
        .promotions()
        .approve(&by, &args.promotion_id)
        .await?;
    print_promotion(&p);
    Ok(())
}

fn print_promotion(p: &Promotion) {
    println!("promotion {}: {:?} to {}", p.id, p.status, p.to);
}
