//! The `klive-server` binary as the xtask drives it (the fleet VM boot, the server
//! benchmark): its admin CLI, a free loopback port, waiting until it listens, and killing it.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// `klive-server --data DATA [--database-url URL]`, ready for its subcommand.
pub fn command(bin: &Path, data: &Path, db: Option<&str>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--data").arg(data);
    if let Some(url) = db {
        cmd.args(["--database-url", url]);
    }
    cmd
}

/// Runs an admin command of the server CLI; its stdout.
pub fn cli(bin: &Path, data: &Path, db: Option<&str>, args: &[&str]) -> Result<String> {
    let out = command(bin, data, db)
        .args(args)
        .env("KLIVE_LOG", "warn")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "klive-server {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The API token `klive-server user add` printed.
pub fn api_token(user_add_output: &str) -> Result<String> {
    user_add_output
        .lines()
        .find(|l| l.contains("api token"))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_owned)
        .context("`klive-server user add` printed no api token")
}

pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// Waits up to a minute for a server to listen on `127.0.0.1:port`.
pub fn wait_listening(port: u16, log: &Path) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "klive-server did not listen on 127.0.0.1:{port} within 60 s; see {}",
        log.display()
    )
}

/// Kills a server (SIGKILL) and reaps it; one that already exited is fine.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A server process, killed on drop.
#[derive(Debug)]
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}
