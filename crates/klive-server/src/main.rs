//! `klive-server`: the patch server and its admin commands. Admin commands act on the same
//! data directory or database as the server, as a named user (`--as`), with the same role
//! checks and audit records as the HTTP API. This file parses and dispatches; each group of
//! commands is a module of [`cli`].

mod cli;

use anyhow::{Context, Result};
use clap::Parser;

use cli::evidence::ReportCommand;
use cli::{Cli, Command, Ctx};

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
        command: ReportCommand::Verify { dir, key },
    } = &cli.command
    {
        return cli::evidence::verify(&cli.data, dir, key.clone());
    }
    // Every other command opens the state first, even those that do not read it (`tls`).
    let ctx = Ctx::open(&cli).await?;
    match cli.command {
        Command::Serve { listen, plain_http } => cli::serve::serve(ctx, listen, plain_http).await,
        Command::Tls { command } => cli::tls::tls(&ctx, command),
        Command::Keys { command } => cli::keys::keys(ctx, command).await,
        Command::User { command } => cli::users::user(&ctx, command).await,
        Command::Token { command } => cli::users::token(&ctx, command).await,
        Command::Channel { command } => cli::channels::channel(&ctx, command).await,
        Command::Release { command } => cli::releases::release(&ctx, command).await,
        Command::Promote(args) => cli::promotions::promote(&ctx, args).await,
        Command::Approve(args) => cli::promotions::approve(&ctx, args).await,
        Command::Withdraw(args) => cli::releases::withdraw(&ctx, args).await,
        Command::EnrollToken { command } => cli::enroll::enroll_token(&ctx, command).await,
        Command::Audit { command } => cli::audit::audit(&ctx, command).await,
        Command::Cve { command } => cli::evidence::cve(&ctx, command).await,
        Command::Policy { command } => cli::evidence::policy(&ctx, command).await,
        Command::Exception { command } => cli::evidence::exception(&ctx, command).await,
        Command::Report { command } => cli::evidence::report(&ctx, command).await,
    }
}
