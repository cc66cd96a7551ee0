//! The `cargo deny` step of `cargo xtask test` (configuration: `deny.toml`): installs a pinned
//! cargo-deny once into `target/tools/` and runs `cargo deny check`.
//!
//! The advisory check needs the RustSec database (a git clone from GitHub). When it cannot be
//! fetched (this workplace's machines, CI included, reach no GitHub), the licence, ban and
//! source checks still run and the output says in capitals, here and in the run's last line,
//! that advisories were NOT checked, and why. `KLIVE_REQUIRE_ADVISORIES=1` makes that a
//! failure, for a machine that can reach the database.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The cargo-deny release the configuration is written for.
const VERSION: &str = "0.20.2";
const ADVISORY_DB: &str = "https://github.com/rustsec/advisory-db";

/// What the step could check.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Advisories, bans, licences and sources.
    Everything,
    /// Everything but advisories: the database could not be fetched (the reason).
    NoAdvisories(String),
}

pub fn check(root: &Path) -> Result<Outcome> {
    let deny = ensure_installed(root)?;
    eprintln!("xtask: fetching the RustSec advisory database ({ADVISORY_DB})");
    let fetch = Command::new(&deny)
        .args(["fetch", "db"])
        .output()
        .with_context(|| format!("running {}", deny.display()))?;
    if fetch.status.success() {
        crate::run(checked(&deny, &[]))
            .context("cargo deny check failed: see the findings above and deny.toml")?;
        return Ok(Outcome::Everything);
    }
    let why = fetch_failure(&String::from_utf8_lossy(&fetch.stderr));
    if advisories_required() {
        bail!(
            "the RustSec advisory database could not be fetched ({why}); KLIVE_REQUIRE_ADVISORIES \
             is set: give this machine access to {ADVISORY_DB}"
        );
    }
    eprintln!("xtask: !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("xtask: ADVISORIES NOT CHECKED: the RustSec advisory database could not be");
    eprintln!("xtask: fetched from {ADVISORY_DB}: {why}");
    eprintln!(
        "xtask: checking licences, bans and sources only (KLIVE_REQUIRE_ADVISORIES=1 fails here)."
    );
    eprintln!("xtask: !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    crate::run(checked(&deny, &["licenses", "bans", "sources"]))
        .context("cargo deny check failed: see the findings above and deny.toml")?;
    Ok(Outcome::NoAdvisories(why))
}

/// `cargo-deny check [WHICH...]` of the workspace (the current directory).
fn checked(deny: &Path, which: &[&str]) -> Command {
    let mut cmd = Command::new(deny);
    cmd.arg("check").args(which);
    cmd
}

/// `target/tools/bin/cargo-deny` at [`VERSION`], installed with `cargo install --locked`
/// (about 4 minutes on two cores) when it is missing or another version.
fn ensure_installed(root: &Path) -> Result<PathBuf> {
    let tools = crate::vm::target_dir(root).join("tools");
    let bin = tools.join("bin/cargo-deny");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if installed.as_deref() == Some(&format!("cargo-deny {VERSION}")) {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing cargo-deny {VERSION} into {} (once; a few minutes)",
        tools.display()
    );
    let mut install = crate::cargo(&["install", "--locked", &format!("cargo-deny@{VERSION}")]);
    install.arg("--root").arg(&tools);
    crate::run(install).context("installing cargo-deny from crates.io failed")?;
    Ok(bin)
}

/// The line of cargo-deny's complaint that says why, e.g. git's `Could not resolve host`.
fn fetch_failure(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
    lines
        .iter()
        .find(|l| l.starts_with("fatal:"))
        .or_else(|| lines.iter().find(|l| l.contains("ERROR")))
        .or_else(|| lines.iter().rev().find(|l| !l.is_empty()))
        .map_or_else(|| "no reason given".to_owned(), |l| (*l).to_owned())
}

fn advisories_required() -> bool {
    std::env::var("KLIVE_REQUIRE_ADVISORIES")
        .is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

#[cfg(test)]
mod tests {
    use super::fetch_failure;

    #[test]
    fn the_reason_is_git_s_fatal_line() {
        let stderr = "2026-12-02 [ERROR] failed to fetch database: failed to clone\n\
                      Cloning into '/root/.cargo/advisory-dbs/advisory-db-1'...\n\
                      fatal: unable to access 'https://github.com/RustSec/advisory-db/': \
                      Could not resolve host: github.com\n";
        assert_eq!(
            fetch_failure(stderr),
            "fatal: unable to access 'https://github.com/RustSec/advisory-db/': Could not \
             resolve host: github.com"
        );
        assert_eq!(fetch_failure(""), "no reason given");
    }
}
