//! Idempotent installation of what the project's commands need on a Debian 12 machine.
//!
//! Every function checks first and only then installs, saying what it does, so running
//! `cargo xtask test` twice costs nothing the second time.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Installs the Debian packages that are not installed yet.
pub fn ensure_apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let sudo = if is_root() { None } else { Some("sudo") };
    let run = |args: &[&str]| -> Result<()> {
        let mut cmd = match sudo {
            Some(s) => {
                let mut c = Command::new(s);
                c.arg("env");
                c
            }
            None => Command::new("env"),
        };
        cmd.arg("DEBIAN_FRONTEND=noninteractive").args(args);
        let status = cmd
            .status()
            .with_context(|| format!("running {}", args.join(" ")))?;
        if !status.success() {
            bail!(
                "`{}` failed ({status}); fix apt and run again",
                args.join(" ")
            );
        }
        Ok(())
    };
    run(&["apt-get", "update", "-q"])?;
    // Another apt on the machine (a concurrent run, another user) is waited for, not failed on.
    let mut args = vec![
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=600",
    ];
    args.extend(&missing);
    run(&args)
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

/// Whether this process runs as root (apt then needs no sudo).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The rustup target for the static agent.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Adds the musl target to the toolchain when it is missing.
pub fn ensure_musl_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup: the musl target is installed with rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == MUSL_TARGET)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the Rust target {MUSL_TARGET}");
    let status = Command::new("rustup")
        .args(["target", "add", MUSL_TARGET])
        .status()
        .context("running rustup target add")?;
    if !status.success() {
        bail!("`rustup target add {MUSL_TARGET}` failed; the static agent cannot be built");
    }
    Ok(())
}
