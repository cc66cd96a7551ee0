//! The symbol source for klive-build's tests: `/proc/kallsyms` of the booted guest kernel,
//! taken as root by `tests/vm/scenarios/kallsyms/70-build-kallsyms.sh` onto the state disk and
//! read back from the disk image with `debugfs`. Cached per kernel build-id in
//! `target/vm/kallsyms-<build-id>.txt`; the line count the guest printed must match, so a
//! truncated copy is never used.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{Guest, boot, boot_limit, fresh_disk};

/// Fewer lines than this is not a vmlinux symbol table (6.1 has about 150,000).
const MIN_LINES: usize = 20_000;

/// Returns the cached dump for the guest's kernel, taking it with one boot when missing.
pub fn dump(guest: &Guest) -> Result<PathBuf> {
    let cache = guest.work.join(format!("kallsyms-{}.txt", guest.build_id));
    if let Ok(text) = fs::read_to_string(&cache)
        && valid(&text).is_ok()
    {
        return Ok(cache);
    }
    let disk = fresh_disk(&guest.work, "kallsyms-disk.img")?;
    let limit = boot_limit()?;
    let b = boot(guest, &disk, "kallsyms", "quiet", limit);
    eprintln!(
        "xtask: == boot to take /proc/kallsyms (console log: {})",
        b.log.display()
    );
    let outcome = b.run(|line| println!("[vm kallsyms] {line}"))?;
    guest.require_passed("kallsyms", &outcome, limit, &b.log)?;
    let want: usize = outcome
        .lines
        .iter()
        .find_map(|l| l.split("KLIVE-KALLSYMS-LINES ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| {
            format!(
                "the guest printed no KLIVE-KALLSYMS-LINES line; see {}",
                b.log.display()
            )
        })?;
    let tmp = guest.work.join("kallsyms.tmp");
    let _ = fs::remove_file(&tmp);
    let debugfs = ["/usr/sbin/debugfs", "/sbin/debugfs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("debugfs");
    let output = Command::new(debugfs)
        .arg("-R")
        .arg(format!("dump /harness/kallsyms.txt {}", tmp.display()))
        .arg(&disk)
        .output()
        .context("running debugfs: install e2fsprogs")?;
    let text = fs::read_to_string(&tmp).with_context(|| {
        format!(
            "debugfs did not copy /harness/kallsyms.txt out of {}: {}",
            disk.display(),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let got = valid(&text)?;
    if got != want {
        bail!(
            "the kallsyms dump read from {} has {got} lines but the guest wrote {want}",
            disk.display()
        );
    }
    fs::rename(&tmp, &cache).with_context(|| format!("moving the dump to {}", cache.display()))?;
    eprintln!(
        "xtask: kallsyms of build {} ({got} lines) cached in {}",
        guest.build_id,
        cache.display()
    );
    Ok(cache)
}

/// A root dump of a whole kernel: enough lines, real addresses. Returns the line count.
fn valid(text: &str) -> Result<usize> {
    let lines = text.lines().count();
    if lines < MIN_LINES {
        bail!("only {lines} lines");
    }
    // Per-CPU symbols start at 0; without root every address is 0.
    let zero = text
        .lines()
        .filter(|l| l.starts_with("0000000000000000 "))
        .count();
    if zero > lines / 2 {
        bail!("the addresses are zero: not taken as root");
    }
    if !text.ends_with('\n') {
        bail!("the last line is cut");
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn short_or_zeroed_dumps_are_rejected() {
        assert!(valid("ffffffff81000000 T _stext\n").is_err());
        let zeros = "0000000000000000 T x\n".repeat(30_000);
        assert!(valid(&zeros).is_err());
        let good = "ffffffff81000000 T x\n".repeat(30_000);
        assert_eq!(valid(&good).unwrap(), 30_000);
        assert!(valid(&good[..good.len() - 1]).is_err());
    }
}
