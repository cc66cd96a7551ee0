//! `tls init`: the CA and server certificate for HTTPS.

use anyhow::Result;
use clap::Subcommand;

use super::Ctx;

#[derive(Subcommand)]
pub enum TlsCommand {
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

pub fn tls(ctx: &Ctx, command: TlsCommand) -> Result<()> {
    let TlsCommand::Init { names, days } = command;
    init(ctx, &names, days)
}

/// `tls init`.
fn init(ctx: &Ctx, names: &[String], days: i64) -> Result<()> {
    let files = klive_server::trust::tls::init(&ctx.data, names, days)?;
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
    Ok(())
}
