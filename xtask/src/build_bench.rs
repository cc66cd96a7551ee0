//! `cargo xtask bench build`: klive-build's wall time for a one-function fix
//! (`tests/build/10-cmdline.patch`), cold (an empty klive-build cache: the kernel's packages
//! fetched from Debian's archive, the tree prepared) and warm (the same cache, prepared), beside a measured sample of what a full kernel
//! build (kpatch-build, klp-build) costs on the same machine and config, extrapolated to the
//! config's compile-unit count. The Markdown section is appended to BENCHMARKS.md.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::build_tests::{self, CASES, Expect, Target};

/// Compile units of Debian's 6.1 amd64 config for `vmlinux modules`, counted with
/// `make -k -n` (docs/full-kernel-build.md). Counting them takes minutes; the figure is per config.
const FULL_BUILD_UNITS: u64 = 13_658;

/// Directories compiled whole for the sample: ordinary C code of vmlinux.
const SAMPLE_DIRS: &[&str] = &["fs/proc/", "kernel/time/"];

pub fn run(root: &Path, target: &Target<'_>) -> Result<()> {
    build_tests::ensure_tools()?;
    let case = CASES
        .iter()
        .find(|c| c.name == "cmdline" && c.expect == Expect::Module)
        .context("the cmdline case is missing from build_tests::CASES")?;
    let bench = build_tests::target_dir(root).join("klive-build-bench");
    let cache = bench.join("cache");
    if cache.exists() {
        fs::remove_dir_all(&cache).with_context(|| format!("removing {}", cache.display()))?;
    }
    fs::create_dir_all(&bench)?;
    let tool = build_tests::build_tool(root)?;
    let _lock = build_tests::lock_cache(root)?;
    let mut runs = Vec::new();
    for which in ["cold", "warm"] {
        eprintln!("xtask: klive-build {which} run");
        let run = build_tests::build_once(root, &tool, target, case, &bench.join(which), &cache)?;
        if !run.status.success() {
            bail!("the {which} klive-build run failed:\n{}", run.text);
        }
        runs.push(run);
    }
    let (cold, warm) = (&runs[0], &runs[1]);
    let tree = fs::read_dir(cache.join("trees"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("linux"))
        .find(|p| p.join("Makefile").is_file())
        .context("the cold build left no prepared tree")?;
    let (units, sample_secs) = sample_full_build(&tree)?;
    let result = fs::remove_dir_all(&cache);
    if let Err(e) = result {
        eprintln!("xtask: could not remove {}: {e}", cache.display());
    }
    let per_unit = sample_secs / units as f64;
    let full = per_unit * FULL_BUILD_UNITS as f64;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## klive-build vs a full kernel build ({}, {}, `cargo xtask bench build`)\n",
        crate::bench_env::today(),
        crate::bench_env::machine()
    );
    let _ = writeln!(
        md,
        "Patch `tests/build/10-cmdline.patch` for {} (one function of `fs/proc/cmdline.c`), \
         klive-build's own timings; cold = empty cache (`--kernel {}`: packages fetched from \
         Debian's archive, source unpacked, tree prepared), warm = the same cache right after.\n",
        target.release, target.release
    );
    md += "| step | cold | warm |\n|---|---|---|\n";
    for (label, key) in [
        ("unpack + olddefconfig + prepare (-j2)", "prepare tree"),
        ("compile original", "compile original"),
        ("compile patched", "compile patched"),
        ("diff + emit", "diff+emit"),
        ("kbuild link", "kbuild link"),
    ] {
        let _ = writeln!(
            md,
            "| {label} | {} | {} |",
            cold.timing(key),
            warm.timing(key)
        );
    }
    let _ = writeln!(
        md,
        "| **wall time of the klive-build run** | **{:.1} s** | **{:.1} s** |",
        cold.seconds, warm.seconds
    );
    let _ = writeln!(
        md,
        "\nFull build, same run and config: `make -j2` with kpatch's `-ffunction-sections \
         -fdata-sections` compiled the {units} units of {} in {sample_secs:.0} s \
         ({per_unit:.2} s per unit); x {FULL_BUILD_UNITS} units of `vmlinux modules` \
         (counted with `make -k -n`, docs/full-kernel-build.md) = **{full:.0} s ({:.1} h)** before linking, \
         which kpatch-build and klp-build need (twice: original and patched; the second \
         build is incremental). klive-build warm is {:.0}x faster than one full build.",
        SAMPLE_DIRS.join(" "),
        full / 3600.0,
        full / warm.seconds.max(0.1)
    );
    crate::bench_env::append_report(root, &md)
}

/// Compiles every unit of [`SAMPLE_DIRS`] from scratch; returns (units, seconds).
fn sample_full_build(tree: &Path) -> Result<(u64, f64)> {
    for d in SAMPLE_DIRS {
        for o in objects(&tree.join(d))? {
            let _ = fs::remove_file(o);
        }
    }
    let started = Instant::now();
    let out = Command::new("make")
        .current_dir(tree)
        .args(["-s", "-j2", "CC=gcc-12"])
        .arg("KCFLAGS=-ffunction-sections -fdata-sections")
        .args(SAMPLE_DIRS)
        .output()
        .context("running make for the full-build sample")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "make {} failed: {}",
            SAMPLE_DIRS.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut units = 0;
    for d in SAMPLE_DIRS {
        units += objects(&tree.join(d))?.len() as u64;
    }
    if units == 0 {
        bail!("the full-build sample compiled nothing");
    }
    Ok((units, secs))
}

/// Compiled C units of a directory tree (`*.o` with a `.c` beside them).
fn objects(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "o") && p.with_extension("c").is_file() {
                out.push(p);
            }
        }
    }
    Ok(out)
}
