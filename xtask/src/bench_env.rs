//! What every benchmark report says about when and where it ran, and where it goes.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// Today's date (UTC), `YYYY-MM-DD`.
pub fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// `2 cores AMD EPYC ..., 23 GiB, 1-minute load average 0.52 at the end of the run`: cores,
/// CPU model, memory, and how busy the machine was (reports are written after their run, so
/// the load includes the benchmark's own last minute).
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(0, |k| k / 1024 / 1024);
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    format!(
        "{cpus} cores {model}, {mem_gib} GiB, 1-minute load average {load} at the end of the run"
    )
}

/// Prints a benchmark's Markdown section and appends it to BENCHMARKS.md.
pub fn append_report(root: &Path, md: &str) -> Result<()> {
    println!("{md}");
    let path = root.join("BENCHMARKS.md");
    let mut text = fs::read_to_string(&path).unwrap_or_default();
    text.push_str(md);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: appended to {}", path.display());
    Ok(())
}
