//! The admin commands of `klive-server`: the command line ([`Cli`]), the state every command
//! but `report verify` works on ([`Ctx`]), and one module per group of commands.

pub mod audit;
pub mod channels;
pub mod enroll;
pub mod evidence;
pub mod keys;
pub mod promotions;
pub mod releases;
pub mod serve;
pub mod tls;
pub mod users;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use klive_server::Service;
use klive_server::domain::AuthUser;

#[derive(Parser)]
#[command(name = "klive-server", version, about = "klive patch server")]
pub struct Cli {
    /// Directory for the SQLite database and the blob store.
    #[arg(
        long,
        global = true,
        env = "KLIVE_DATA",
        default_value = "./klive-data"
    )]
    pub data: PathBuf,
    /// PostgreSQL URL (postgres://...) instead of DATA/klive.db.
    #[arg(long, global = true, env = "KLIVE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Blob storage in an S3-compatible bucket, s3://BUCKET[/PREFIX], instead of
    /// DATA/blobs/ (endpoint, region and credentials from the AWS_* variables).
    #[arg(long, global = true, env = "KLIVE_BLOB_URL")]
    pub blob_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the API: HTTPS with DATA/tls/server.pem when it exists (see `tls init`).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8750")]
        listen: SocketAddr,
        /// Serve plain HTTP even though a certificate exists (behind a TLS-terminating proxy).
        #[arg(long)]
        plain_http: bool,
    },
    /// Create a CA and server certificate for HTTPS.
    Tls {
        #[command(subcommand)]
        command: tls::TlsCommand,
    },
    /// Create the TUF keys: root keys to keep offline, online keys for the server.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: users::UserCommand,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: users::TokenCommand,
    },
    /// Manage channels.
    Channel {
        #[command(subcommand)]
        command: channels::ChannelCommand,
    },
    /// Manage releases.
    Release {
        #[command(subcommand)]
        command: releases::ReleaseCommand,
    },
    /// Promote a release to the next channel.
    Promote(promotions::PromoteArgs),
    /// Approve a pending or emergency promotion.
    Approve(promotions::ApproveArgs),
    /// Withdraw a release from every channel.
    Withdraw(releases::WithdrawArgs),
    /// Manage enrollment tokens.
    EnrollToken {
        #[command(subcommand)]
        command: enroll::EnrollCommand,
    },
    /// Inspect the audit log.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Import CVE knowledge (Debian changelogs, OSV, CISA KEV).
    Cve {
        #[command(subcommand)]
        command: evidence::CveCommand,
    },
    /// Show or change the SLA policy.
    Policy {
        #[command(subcommand)]
        command: evidence::PolicyCommand,
    },
    /// Manage SLA exceptions (risk acceptances).
    Exception {
        #[command(subcommand)]
        command: evidence::ExceptionCommand,
    },
    /// SOC 2 evidence packs: write one, verify one.
    Report {
        #[command(subcommand)]
        command: evidence::ReportCommand,
    },
}

/// A duration in seconds: a plain number or `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{s:?} is not a duration like 90s, 30m, 24h or 7d: {e}"))
}

/// The opened server state (same data directory or database as the server) the commands act on.
pub struct Ctx {
    pub service: Service,
    pub data: PathBuf,
}

impl Ctx {
    /// Opens the state named by `--data`, `--database-url` and `--blob-url`.
    pub async fn open(cli: &Cli) -> Result<Ctx> {
        let service = klive_server::open_with(
            &cli.data,
            cli.database_url.as_deref(),
            cli.blob_url.as_deref(),
        )
        .await
        .with_context(|| format!("opening the server state in {}", cli.data.display()))?;
        Ok(Ctx {
            service,
            data: cli.data.clone(),
        })
    }

    /// The user named by `--as`, who must exist.
    pub async fn user(&self, name: &str) -> Result<AuthUser> {
        self.service
            .users()
            .user_by_name(name)
            .await
            .with_context(|| {
                format!("--as {name}: add the user first with `klive-server user add`")
            })
    }

    /// The user named by an optional `--as`, when given.
    pub async fn optional_user(&self, name: Option<&str>) -> Result<Option<AuthUser>> {
        match name {
            Some(name) => Ok(Some(self.user(name).await?)),
            None => Ok(None),
        }
    }
}
