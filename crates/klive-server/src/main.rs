//! `klive-server`: the patch server and its admin commands. Admin commands act on the same
//! data directory or database as the server, as a named user (`--as`), with the same role
//! checks and audit records as the HTTP API.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use klive_format::api::{ChannelRequest, EnrollTokenRequest, PromoteRequest, Role};
use klive_format::release::ReleaseManifest;
use klive_format::{BuildId, PatchLevel};
use klive_server::Service;
use klive_server::domain::AuthUser;
use klive_server::store::audit::{self, Verdict};

#[derive(Parser)]
#[command(name = "klive-server", version, about = "klive patch server")]
struct Cli {
    /// Directory for the SQLite database and the blob store.
    #[arg(
        long,
        global = true,
        env = "KLIVE_DATA",
        default_value = "./klive-data"
    )]
    data: PathBuf,
    /// PostgreSQL URL (postgres://...) instead of DATA/klive.db.
    #[arg(long, global = true, env = "KLIVE_DATABASE_URL")]
    database_url: Option<String>,
    /// Blob storage in an S3-compatible bucket, s3://BUCKET[/PREFIX], instead of
    /// DATA/blobs/ (endpoint, region and credentials from the AWS_* variables).
    #[arg(long, global = true, env = "KLIVE_BLOB_URL")]
    blob_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        command: TlsCommand,
    },
    /// Create the TUF keys: root keys to keep offline, online keys for the server.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage channels.
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// Manage releases.
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
    /// Promote a release to the next channel.
    Promote {
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
    },
    /// Approve a pending or emergency promotion.
    Approve {
        promotion_id: String,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: String,
    },
    /// Withdraw a release from every channel.
    Withdraw {
        build_id: BuildId,
        level: PatchLevel,
        #[arg(long)]
        reason: String,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: String,
    },
    /// Manage enrollment tokens.
    EnrollToken {
        #[command(subcommand)]
        command: EnrollCommand,
    },
    /// Inspect the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Import CVE knowledge (Debian changelogs, OSV, CISA KEV).
    Cve {
        #[command(subcommand)]
        command: cli::evidence::CveCommand,
    },
    /// Show or change the SLA policy.
    Policy {
        #[command(subcommand)]
        command: cli::evidence::PolicyCommand,
    },
    /// Manage SLA exceptions (risk acceptances).
    Exception {
        #[command(subcommand)]
        command: cli::evidence::ExceptionCommand,
    },
    /// SOC 2 evidence packs: write one, verify one.
    Report {
        #[command(subcommand)]
        command: cli::evidence::ReportCommand,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Create DATA/tls/{ca.pem,ca.key,server.pem,server.key}; agents pin ca.pem.
    Init {
        /// DNS name or IP address agents use to reach the server (repeat for several).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Validity of the server certificate.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
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

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user and print its first API token.
    Add {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The admin doing this; omit only to create the first admin.
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: Option<String>,
    },
    List {
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token for a user (printed once).
    Create {
        user: String,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: Option<String>,
    },
    /// Revoke every API token of a user.
    Revoke {
        user: String,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: Option<String>,
    },
}

#[derive(Subcommand)]
enum ChannelCommand {
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

#[derive(Subcommand)]
enum ReleaseCommand {
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

#[derive(Subcommand)]
enum EnrollCommand {
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

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain; exit 1 and name the first broken record if any.
    Verify,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s)
        .ok_or_else(|| format!("{s:?} is not a role: viewer, publisher, approver or admin"))
}

pub(crate) fn parse_duration(s: &str) -> Result<u64, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{s:?} is not a duration like 90s, 30m, 24h or 7d: {e}"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KLIVE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    // Auditors verify packs without the server's database.
    if let Command::Report {
        command: cli::evidence::ReportCommand::Verify { dir, key },
    } = &cli.command
    {
        return cli::evidence::verify(&cli.data, dir, key.clone());
    }
    let service = klive_server::open_with(
        &cli.data,
        cli.database_url.as_deref(),
        cli.blob_url.as_deref(),
    )
    .await
    .with_context(|| format!("opening the server state in {}", cli.data.display()))?;
    let user = |name: String| {
        let service = service.clone();
        async move {
            service.users().user_by_name(&name).await.with_context(|| {
                format!("--as {name}: add the user first with `klive-server user add`")
            })
        }
    };
    match cli.command {
        Command::Serve { listen, plain_http } => {
            let tls = klive_server::trust::tls::TlsFiles::new(&cli.data);
            let tls = (!plain_http && tls.exist()).then_some(tls);
            serve(service, listen, tls, cli.data.clone()).await?
        }
        Command::Tls {
            command: TlsCommand::Init { names, days },
        } => {
            let files = klive_server::trust::tls::init(&cli.data, &names, days)?;
            println!(
                "CA certificate (agents pin this): {}",
                files.ca_cert.display()
            );
            println!(
                "server certificate for {}: {}",
                names.join(", "),
                files.cert.display()
            );
            println!(
                "move {} offline: it is needed only to issue the next server certificate",
                files.ca_key.display()
            );
        }
        Command::Keys {
            command:
                KeysCommand::Init {
                    root_keys,
                    threshold,
                    root_expires_days,
                },
        } => {
            let done = klive_server::trust::tuf::init_keys(
                &cli.data,
                root_keys,
                threshold,
                root_expires_days,
            )
            .await?;
            let signer = klive_server::trust::tuf::Signer::load(&cli.data)?;
            let channels = service.with_signer(signer).tuf_refresh(true).await?;
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
        }
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    root_keys,
                    new_online_keys,
                    root_expires_days,
                },
        } => {
            let done = klive_server::trust::tuf::rotate(
                &cli.data,
                &root_keys,
                new_online_keys,
                root_expires_days,
            )
            .await?;
            let signer = klive_server::trust::tuf::Signer::load(&cli.data)?;
            let service = service.with_signer(signer);
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
        }
        Command::User { command } => match command {
            UserCommand::Add { name, role, actor } => {
                let by = match actor {
                    Some(a) => Some(user(a).await?),
                    None => {
                        require_bootstrap(&service).await?;
                        None
                    }
                };
                service.users().add_user(by.as_ref(), &name, role).await?;
                let token = service.users().create_token(by.as_ref(), &name).await?;
                println!("added {name} ({})", role.as_str());
                println!("api token (shown once): {}", token.token);
            }
            UserCommand::List { actor } => {
                for u in service.users().list(&user(actor).await?).await? {
                    println!("{}\t{}\t{}", u.name, u.role.as_str(), u.created_at);
                }
            }
        },
        Command::Token {
            command: TokenCommand::Create { user: name, actor },
        } => {
            let by = match actor {
                Some(a) => Some(user(a).await?),
                None => None,
            };
            let token = service.users().create_token(by.as_ref(), &name).await?;
            println!("{}", token.token);
        }
        Command::Token {
            command: TokenCommand::Revoke { user: name, actor },
        } => {
            let by = match actor {
                Some(a) => Some(user(a).await?),
                None => None,
            };
            let n = service.users().revoke_tokens(by.as_ref(), &name).await?;
            println!("revoked {n} token(s) of {name}");
        }
        Command::Channel { command } => match command {
            ChannelCommand::List => {
                for c in service.channels().list().await? {
                    println!("{}\t{}\tmin soak {}s", c.position, c.name, c.min_soak_secs);
                }
            }
            ChannelCommand::Add {
                name,
                min_soak,
                actor,
            } => {
                let c = service
                    .channels()
                    .add_channel(
                        &user(actor).await?,
                        &ChannelRequest {
                            name,
                            min_soak_secs: min_soak,
                        },
                    )
                    .await?;
                println!("added channel {} at position {}", c.name, c.position);
            }
            ChannelCommand::SetSoak {
                name,
                min_soak,
                actor,
            } => {
                let c = service
                    .channels()
                    .set_channel_soak(&user(actor).await?, &name, min_soak)
                    .await?;
                println!("channel {} now needs {}s of soak", c.name, c.min_soak_secs);
            }
        },
        Command::Release { command } => match command {
            ReleaseCommand::Add {
                manifest,
                module,
                actor,
            } => {
                let by = user(actor).await?;
                let text = std::fs::read_to_string(&manifest)
                    .with_context(|| format!("reading {}", manifest.display()))?;
                let manifest: ReleaseManifest = serde_json::from_str(&text)
                    .with_context(|| format!("parsing the manifest {}", manifest.display()))?;
                let bytes = std::fs::read(&module)
                    .with_context(|| format!("reading {}", module.display()))?;
                let info = service
                    .releases()
                    .publish_with_module(&by, manifest, bytes.into())
                    .await?;
                println!(
                    "published level {} for {} into {}",
                    info.manifest.level,
                    info.manifest.kernel.build_id,
                    info.channels.first().map_or("?", |c| c.channel.as_str())
                );
            }
            ReleaseCommand::List => {
                for r in service.releases().list().await? {
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
                    println!(
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
                    );
                }
            }
        },
        Command::Promote {
            build_id,
            level,
            to,
            emergency,
            reason,
            actor,
        } => {
            let by = user(actor).await?;
            let p = service
                .promotions()
                .promote(
                    &by,
                    &build_id,
                    level,
                    &PromoteRequest {
                        to,
                        emergency,
                        reason,
                    },
                )
                .await?;
            println!("promotion {}: {:?} to {}", p.id, p.status, p.to);
        }
        Command::Approve {
            promotion_id,
            actor,
        } => {
            let p = service
                .promotions()
                .approve(&user(actor).await?, &promotion_id)
                .await?;
            println!("promotion {}: {:?} to {}", p.id, p.status, p.to);
        }
        Command::Withdraw {
            build_id,
            level,
            reason,
            actor,
        } => {
            service
                .releases()
                .withdraw(&user(actor).await?, &build_id, level, &reason)
                .await?;
            println!("withdrew level {level} for {build_id}");
        }
        Command::EnrollToken {
            command:
                EnrollCommand::Create {
                    channel,
                    expires,
                    max_uses,
                    actor,
                },
        } => {
            let t = service
                .enrollment()
                .create_enroll_token(
                    &user(actor).await?,
                    &EnrollTokenRequest {
                        channel,
                        expires_in_secs: expires,
                        max_uses,
                    },
                )
                .await?;
            println!("{}", t.token);
            eprintln!(
                "channel {}, {} use(s), expires {}",
                t.channel, t.max_uses, t.expires_at
            );
        }
        Command::Cve { command } => {
            let cli::evidence::CveCommand::Import { actor, .. } = &command;
            let by = user(actor.clone()).await?;
            cli::evidence::cve(&service, &by, command).await?
        }
        Command::Policy { command } => {
            let by = match &command {
                cli::evidence::PolicyCommand::Set { actor, .. } => Some(user(actor.clone()).await?),
                cli::evidence::PolicyCommand::Show => None,
            };
            cli::evidence::policy(&service, by.as_ref(), command).await?
        }
        Command::Exception { command } => {
            let by = match &command {
                cli::evidence::ExceptionCommand::Add { actor, .. } => {
                    Some(user(actor.clone()).await?)
                }
                cli::evidence::ExceptionCommand::List => None,
            };
            cli::evidence::exception(&service, by.as_ref(), command).await?
        }
        Command::Report { command } => match command {
            cli::evidence::ReportCommand::Soc2 {
                from,
                to,
                out,
                no_pdf,
                actor,
            } => {
                let by = user(actor).await?;
                cli::evidence::soc2(&service, &cli.data, &by, &from, &to, &out, no_pdf).await?
            }
            cli::evidence::ReportCommand::Verify { dir, key } => {
                cli::evidence::verify(&cli.data, &dir, key)?
            }
        },
        Command::Audit {
            command: AuditCommand::Verify,
        } => match audit::verify(&service.db).await? {
            Verdict::Intact { records, head } => {
                println!("audit log intact: {records} records, head {head}")
            }
            Verdict::Broken { seq, reason } => {
                bail!(
                    "audit log broken at record {seq}: {reason}; the log was altered after it was written"
                )
            }
        },
    }
    Ok(())
}

/// Creating a user without `--as` is only for the first admin.
async fn require_bootstrap(service: &Service) -> Result<()> {
    let admin = AuthUser {
        name: String::new(),
        role: Role::Admin,
    };
    if !service.users().list(&admin).await?.is_empty() {
        bail!("users exist already: pass --as ADMIN (or set KLIVE_USER)");
    }
    Ok(())
}

async fn serve(
    service: Service,
    listen: SocketAddr,
    tls: Option<klive_server::trust::tls::TlsFiles>,
    data: PathBuf,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}: is another server running there?"))?;
    if service.signer.is_none() {
        tracing::warn!("no TUF keys: agents cannot verify releases; run `klive-server keys init`");
    }
    service
        .tuf_refresh(false)
        .await
        .context("signing TUF metadata")?;
    let refresher = service.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            tick.tick().await;
            match refresher.tuf_refresh(false).await {
                Ok(done) if !done.is_empty() => tracing::info!(?done, "re-signed TUF timestamps"),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "re-signing TUF metadata failed; agents will refuse expired timestamps")
                }
            }
        }
    });
    // The API under /api/v1, the dashboard under /ui/ and Prometheus at /metrics.
    let dashboard = klive_server::http::dashboard::Dashboard::new(service.clone(), data);
    let router = klive_server::http::api::router(service).merge(
        klive_server::http::dashboard::dashboard_router(dashboard.over_https(tls.is_some())),
    );
    match tls {
        Some(files) => {
            let config = klive_server::trust::tls::server_config(&files.cert, &files.key)?;
            let listener = klive_server::trust::tls::TlsListener::new(listener, config)
                .context("starting the TLS listener")?;
            tracing::info!(%listen, cert = %files.cert.display(), "klive-server listening (https)");
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .context("serving HTTPS")?;
        }
        None => {
            tracing::warn!(%listen, "serving plain HTTP: run `klive-server tls init` for HTTPS");
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .context("serving HTTP")?;
        }
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM, so systemd and Ctrl-C stop the server cleanly.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stop the server with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
