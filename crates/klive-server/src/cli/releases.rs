//! `release add|list` and `withdraw`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use klive_format::api::ReleaseInfo;
use klive_format::release::ReleaseManifest;
use klive_format::{BuildId, PatchLevel};

use super::Ctx;

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Publish a module with its manifest into the first channel.
    Add {
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long)]
        module: PathBuf,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: String,
    },
    List,
}

#[derive(Args)]
pub struct WithdrawArgs {
    build_id: BuildId,
    level: PatchLevel,
    #[arg(long)]
    reason: String,
    #[arg(long = "as", env = "KLIVE_USER")]
    actor: String,
}

pub async fn release(ctx: &Ctx, command: ReleaseCommand) -> Result<()> {
    match command {
        ReleaseCommand::Add {
            manifest,
            module,
            actor,
        } => add(ctx, &manifest, &module, &actor).await,
        ReleaseCommand::List => list(ctx).await,
    }
}

/// `release add`.
async fn add(ctx: &Ctx, manifest: &Path, module: &Path, actor: &str) -> Result<()> {
    let by = ctx.user(actor).await?;
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let parsed: ReleaseManifest = serde_json::from_str(&text)
        .with_context(|| format!("parsing the manifest {}", manifest.display()))?;
    let bytes = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let info = ctx
        .service
        .releases()
        .publish_with_module(&by, parsed, bytes.into())
        .await?;
    println!(
        "published level {} for {} into {}",
        info.manifest.level,
        info.manifest.kernel.build_id,
        info.channels.first().map_or("?", |c| c.channel.as_str())
    );
    Ok(())
}

/// `release list`: one line per release.
async fn list(ctx: &Ctx) -> Result<()> {
    for r in ctx.service.releases().list().await? {
        // Rows stored before text was checked on the way in never reach a terminal raw.
        println!("{}", klive_format::text::escape(&list_line(&r)));
    }
    Ok(())
}

fn list_line(r: &ReleaseInfo) -> String {
    let channels: Vec<String> = r
        .channels
        .iter()
        .map(|c| {
            if c.awaiting_approval {
                format!("{}(emergency, unapproved)", c.channel)
            } else {
                c.channel.clone()
            }
        })
        .collect();
    format!(
        "{}\t{}\t{}\t{}{}",
        r.manifest.kernel.build_id.short(),
        r.manifest.level,
        r.manifest.kernel.release,
        channels.join(","),
        if r.withdrawn.is_some() {
            "\tWITHDRAWN"
        } else {
            ""
        }
    )
}

/// `withdraw`: from every channel.
pub async fn withdraw(ctx: &Ctx, args: WithdrawArgs) -> Result<()> {
    let WithdrawArgs {
        build_id,
        level,
        reason,
        actor,
    } = args;
    let by = ctx.user(&actor).await?;
    ctx.service
        .releases()
        .withdraw(&by, &build_id, level, &reason)
        .await?;
    println!("withdrew level {level} for {build_id}");
    Ok(())
}
