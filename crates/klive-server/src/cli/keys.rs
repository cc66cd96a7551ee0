//! `keys init` and `keys rotate`: the TUF root and online keys.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use klive_server::Service;
use klive_server::trust::tuf::{self, Signer};

use super::Ctx;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create root keys (any THRESHOLD of KEYS sign a new root) and the online targets,
    /// snapshot and timestamp keys, then sign every channel's metadata.
    Init {
        #[arg(long, default_value_t = 3)]
        root_keys: usize,
        #[arg(long, default_value_t = 2)]
        threshold: usize,
        /// Lifetime of the first root metadata.
        #[arg(long, default_value_t = 365)]
        root_expires_days: i64,
    },
    /// Sign the next root version with THRESHOLD of the offline root keys: renews the root's
    /// expiry and, with --new-online-keys, replaces the online keys (after a suspected leak).
    /// Run it with the servers stopped; then copy DATA/tuf and DATA/keys/online to every
    /// replica and start them. Agents follow to the new root by themselves.
    Rotate {
        /// An offline root key (`root-N.pk8` from keys init); give at least the threshold.
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        /// Replace the targets, snapshot and timestamp keys.
        #[arg(long)]
        new_online_keys: bool,
        /// Lifetime of the new root metadata.
        #[arg(long, default_value_t = 365)]
        root_expires_days: i64,
    },
}

/// Takes the context: the service is re-opened with the new keys.
pub async fn keys(ctx: Ctx, command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Init {
            root_keys,
            threshold,
            root_expires_days,
        } => init(ctx, root_keys, threshold, root_expires_days).await,
        KeysCommand::Rotate {
            root_keys,
            new_online_keys,
            root_expires_days,
        } => rotate(ctx, &root_keys, new_online_keys, root_expires_days).await,
    }
}

/// `keys init`.
async fn init(ctx: Ctx, root_keys: usize, threshold: usize, root_expires_days: i64) -> Result<()> {
    let done = tuf::init_keys(&ctx.data, root_keys, threshold, root_expires_days).await?;
    let channels = with_new_keys(ctx)?.tuf_refresh(true).await?;
    println!(
        "root metadata: {} (sha256 {})",
        done.root_json.display(),
        done.root_sha256
    );
    println!("signed metadata for channels: {}", channels.join(", "));
    println!(
        "move the {} root keys in {} to offline storage now: {} of them are needed to sign a new root, none to run the server",
        done.root_keys,
        done.offline_dir.display(),
        done.threshold
    );
    println!(
        "agents pin the root: klive register ... --root-sha256 {}",
        done.root_sha256
    );
    Ok(())
}

/// `keys rotate`.
async fn rotate(
    ctx: Ctx,
    root_keys: &[PathBuf],
    new_online_keys: bool,
    root_expires_days: i64,
) -> Result<()> {
    let done = tuf::rotate(&ctx.data, root_keys, new_online_keys, root_expires_days).await?;
    let service = with_new_keys(ctx)?;
    service
        .record_system_event(
            "tuf.root-rotated",
            &format!("root-v{}", done.version),
            serde_json::json!({
                "version": done.version,
                "expires": done.expires,
                "online_keys_replaced": done.online_keys_replaced,
            }),
        )
        .await?;
    let channels = service.tuf_refresh(true).await?;
    println!(
        "root version {} in force: {} (expires {})",
        done.version,
        done.root_json.display(),
        done.expires
    );
    if done.online_keys_replaced {
        println!(
            "new online keys signed the metadata of channels: {}",
            channels.join(", ")
        );
    } else {
        println!(
            "re-signed the metadata of channels: {}",
            channels.join(", ")
        );
    }
    println!(
        "copy DATA/tuf and DATA/keys/online to every replica, then start the servers; move the root keys offline again"
    );
    Ok(())
}

/// The service signing with the keys now in DATA/keys.
fn with_new_keys(ctx: Ctx) -> Result<Service> {
    let signer = Signer::load(&ctx.data)?;
    Ok(ctx.service.with_signer(signer))
}
