//! `cargo xtask bench kernels`: klive-build by kernel name on both Debian 12 kernel lines.
//! The one-function fix `tests/build/10-cmdline.patch` is built for the two newest ABIs of
//! each line (6.1 and 6.12): cold (an empty cache: image, headers, kbuild, source and the
//! `-dbg` vmlinux fetched from Debian's archive, the tree prepared), then warm, one kernel at
//! a time, then for all four kernels in one command. The section is appended to
//! BENCHMARKS.md; the cache (several GB) is removed afterwards.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::build_tests;

pub fn run(root: &Path) -> Result<()> {
    build_tests::ensure_tools()?;
    let kernels = [newest("6.1")?, newest("6.12")?].concat();
    eprintln!("xtask: kernels: {}", kernels.join(" "));
    let tool = build_tests::build_tool(root)?;
    let bench = build_tests::target_dir(root).join("klive-build-kernels-bench");
    if bench.exists() {
        fs::remove_dir_all(&bench).with_context(|| format!("removing {}", bench.display()))?;
    }
    let cache = bench.join("cache");
    fs::create_dir_all(&cache)?;
    let patch = root.join("tests/build/10-cmdline.patch");
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for (runs, which) in [(&mut cold, "cold"), (&mut warm, "warm")] {
        for k in &kernels {
            eprintln!("xtask: klive-build {which} --kernel {k}");
            let out = bench.join(format!("{which}-{k}"));
            runs.push(time(&tool, &[k.as_str()], &patch, &out, &cache)?);
        }
    }
    eprintln!("xtask: klive-build warm, four kernels in one command");
    let refs: Vec<&str> = kernels.iter().map(String::as_str).collect();
    let all = time(&tool, &refs, &patch, &bench.join("all"), &cache)?;
    let sizes: Vec<u64> = kernels
        .iter()
        .map(|k| module_size(&bench.join(format!("warm-{k}"))))
        .collect();
    if let Err(e) = fs::remove_dir_all(&bench) {
        eprintln!("xtask: could not remove {}: {e}", bench.display());
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## klive-build by kernel name, both Debian 12 lines ({}, {}, `cargo xtask bench kernels`)\n",
        crate::bench_env::today(),
        crate::bench_env::machine()
    );
    md += "`tests/build/10-cmdline.patch` (one function), `klive-build --kernel ABI` without a \
           kallsyms dump. Cold: an empty cache, so the image, headers, kbuild, source and `-dbg` \
           packages are fetched from Debian's archive (about 1.3 GB) and the tree is unpacked and \
           prepared; warm: the same cache right after. Targets: cold <= 180 s, warm <= 30 s per \
           kernel.\n\n| kernel | cold | warm | module |\n|---|---|---|---|\n";
    for (i, k) in kernels.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {k} | {:.1} s | {:.1} s | {} bytes |",
            cold[i], warm[i], sizes[i]
        );
    }
    let _ = writeln!(
        md,
        "\nAll four kernels in one command (warm): **{all:.1} s** ({:.1} s per kernel; one module \
         per kernel under `OUT/<ABI>/`). Cold, the four cost the sum of their cold runs \
         ({:.0} s), fetching and preparing one kernel after the other.",
        all / kernels.len() as f64,
        cold.iter().sum::<f64>()
    );
    crate::bench_env::append_report(root, &md)
}

/// Seconds one klive-build run for `kernels` took; an error if it did not write modules.
fn time(tool: &Path, kernels: &[&str], patch: &Path, out: &Path, cache: &Path) -> Result<f64> {
    let mut cmd = Command::new(tool);
    for k in kernels {
        cmd.arg("--kernel").arg(k);
    }
    cmd.arg("--patch")
        .arg(patch)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .args(["--name", "klive_bench", "--fix", "CVE-0000-0000:low:bench"]);
    let started = Instant::now();
    let o = cmd.output().context("running klive-build")?;
    let secs = started.elapsed().as_secs_f64();
    if !o.status.success() {
        bail!(
            "klive-build {} failed ({}):\n{}",
            kernels.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(secs)
}

/// The size of the `.ko` under `out` (in `out` or one directory down).
fn module_size(out: &Path) -> u64 {
    let mut dirs = vec![out.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for p in fs::read_dir(&d)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
        {
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "ko") {
                return fs::metadata(&p).map_or(0, |m| m.len());
            }
        }
    }
    0
}

/// The two newest amd64 ABIs of kernel line `line` (`6.1`, `6.12`) in the archive, newest
/// first: `6.1.0-57-amd64`, `6.12.118+deb12-amd64`.
fn newest(line: &str) -> Result<Vec<String>> {
    let out = Command::new("apt-cache")
        .args(["pkgnames", &format!("linux-image-{line}.")])
        .output()
        .context("running apt-cache pkgnames")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut abis: Vec<(u64, String)> = text
        .lines()
        .filter_map(|p| p.strip_prefix("linux-image-"))
        .map(|p| p.trim_end_matches("-unsigned"))
        .filter(|abi| abi.ends_with("-amd64") && !abi.contains("cloud") && !abi.contains("-rt-"))
        .filter_map(|abi| Some((abi_number(abi, line)?, abi.to_owned())))
        .collect();
    abis.sort();
    abis.dedup();
    let newest: Vec<String> = abis.into_iter().rev().take(2).map(|(_, a)| a).collect();
    if newest.len() < 2 {
        bail!("fewer than two {line} kernels in the archive; run apt-get update");
    }
    Ok(newest)
}

/// The number that orders ABIs of one line: `57` of `6.1.0-57-amd64`, `118` of
/// `6.12.118+deb12-amd64`.
fn abi_number(abi: &str, line: &str) -> Option<u64> {
    let rest = abi.strip_prefix(&format!("{line}."))?;
    let digits = match line {
        "6.1" => rest.strip_prefix("0-")?,
        _ => rest,
    };
    let n: String = digits.chars().take_while(char::is_ascii_digit).collect();
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abis_order_by_their_number() {
        assert_eq!(abi_number("6.1.0-57-amd64", "6.1"), Some(57));
        assert_eq!(abi_number("6.12.118+deb12-amd64", "6.12"), Some(118));
        assert_eq!(abi_number("6.12.118+deb12-amd64", "6.1"), None);
    }
}
