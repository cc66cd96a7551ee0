//! `audit verify`.

use anyhow::{Result, bail};
use clap::Subcommand;

use klive_server::store::audit::{self, Verdict};

use super::Ctx;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain; exit 1 and name the first broken record if any.
    Verify,
}

pub async fn audit(ctx: &Ctx, command: AuditCommand) -> Result<()> {
    let AuditCommand::Verify = command;
    verify(ctx).await
}

/// `audit verify`.
async fn verify(ctx: &Ctx) -> Result<()> {
    match audit::verify(ctx.service.db()).await? {
        Verdict::Intact { records, head } => {
            println!("audit log intact: {records} records, head {head}")
        }
        Verdict::Broken { seq, reason } => {
            bail!(
                "audit log broken at record {seq}: {reason}; the log was altered after it was written"
            )
        }
    }
    Ok(())
}
