//! `user add|list` and `token create|revoke`.

use anyhow::{Result, bail};
use clap::Subcommand;

use klive_format::api::Role;
use klive_server::domain::AuthUser;

use super::Ctx;

#[derive(Subcommand)]
pub enum UserCommand {
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
pub enum TokenCommand {
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

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s)
        .ok_or_else(|| format!("{s:?} is not a role: viewer, publisher, approver or admin"))
}

pub async fn user(ctx: &Ctx, command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Add { name, role, actor } => add(ctx, &name, role, actor.as_deref()).await,
        UserCommand::List { actor } => list(ctx, &actor).await,
    }
}

pub async fn token(ctx: &Ctx, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create { user, actor } => create_token(ctx, &user, actor.as_deref()).await,
        TokenCommand::Revoke { user, actor } => revoke_tokens(ctx, &user, actor.as_deref()).await,
    }
}

/// `user add`: without `--as` only for the first admin.
async fn add(ctx: &Ctx, name: &str, role: Role, actor: Option<&str>) -> Result<()> {
    let by = ctx.optional_user(actor).await?;
    if by.is_none() {
        require_bootstrap(ctx).await?;
    }
    ctx.service
        .users()
        .add_user(by.as_ref(), name, role)
        .await?;
    let token = ctx.service.users().create_token(by.as_ref(), name).await?;
    println!("added {name} ({})", role.as_str());
    println!("api token (shown once): {}", token.token);
    Ok(())
}

/// Creating a user without `--as` is only for the first admin.
async fn require_bootstrap(ctx: &Ctx) -> Result<()> {
    let admin = AuthUser {
        name: String::new(),
        role: Role::Admin,
    };
    if !ctx.service.users().list(&admin).await?.is_empty() {
        bail!("users exist already: pass --as ADMIN (or set KLIVE_USER)");
    }
    Ok(())
}

/// `user list`.
async fn list(ctx: &Ctx, actor: &str) -> Result<()> {
    for u in ctx.service.users().list(&ctx.user(actor).await?).await? {
        println!("{}\t{}\t{}", u.name, u.role.as_str(), u.created_at);
    }
    Ok(())
}

/// `token create`.
async fn create_token(ctx: &Ctx, name: &str, actor: Option<&str>) -> Result<()> {
    let by = ctx.optional_user(actor).await?;
    let token = ctx.service.users().create_token(by.as_ref(), name).await?;
    println!("{}", token.token);
    Ok(())
}

/// `token revoke`.
async fn revoke_tokens(ctx: &Ctx, name: &str, actor: Option<&str>) -> Result<()> {
    let by = ctx.optional_user(actor).await?;
    let n = ctx.service.users().revoke_tokens(by.as_ref(), name).await?;
    println!("revoked {n} token(s) of {name}");
    Ok(())
}
