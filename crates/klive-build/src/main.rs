//! `klive-build`: builds a livepatch module from kernel source diffs by compiling only the
//! translation units the diffs touch, diffing the objects (klive-elf) and linking the result
//! through the target's kbuild.
//!
//! [`build`] is a pipeline of steps, one module each: [`resolve`] the inputs, [`tree::prepare`]
//! the kernel tree, [`compile`] the touched units before and after the diffs, [`units::diff`]
//! and [`units::emit`] the objects, [`link`] the module, write the [`manifest`] and report.

mod compile;
mod link;
mod manifest;
mod patches;
mod resolve;
mod series;
mod tree;
mod units;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Build a klive livepatch module from kernel source diffs")]
struct Cli {
    /// Kernel source: a directory or a tarball such as /usr/src/linux-source-6.1.tar.xz.
    #[arg(long)]
    source: PathBuf,
    /// The target kernel's exact config (/usr/src/linux-headers-<release>/.config).
    #[arg(long)]
    config: PathBuf,
    /// The target's kbuild directory (/lib/modules/<release>/build) with Module.symvers.
    #[arg(long)]
    kbuild: PathBuf,
    /// A /proc/kallsyms dump taken as root on a host running the target kernel.
    #[arg(long)]
    kallsyms: PathBuf,
    /// Unified diffs (-p1 with a/ and b/ prefixes), applied in order after the series'.
    #[arg(long = "patch", required_unless_present_any = ["series", "base"])]
    patches: Vec<PathBuf>,
    /// A series file: one diff per line with its fix (PATCH CVE SEVERITY SUMMARY, or
    /// PATCH - for none), in the order they apply; the level carries all of them.
    #[arg(long)]
    series: Option<PathBuf>,
    /// The previous level's manifest.json: this level carries every fix of that level
    /// (from the series record beside it) plus the new ones, as one replace-mode module.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Leaves out every diff of this fix (CVE id) that the base or series carries.
    #[arg(long = "drop", value_name = "CVE")]
    drops: Vec<String>,
    /// Module name (klive_...).
    #[arg(long)]
    name: String,
    /// Patch level; defaults to the base level + 1 with --base, else 1.
    #[arg(long)]
    level: Option<u32>,
    /// GNU build-id of the target kernel (hex).
    #[arg(long)]
    build_id: String,
    /// `uname -r` of the target.
    #[arg(long)]
    release: String,
    /// The fix the --patch diffs carry, as CVE-ID:severity:summary: one for all of them, or
    /// one per --patch in the same order.
    #[arg(long = "fix")]
    fixes: Vec<String>,
    /// Output directory for the .ko, manifest.json and report.txt.
    #[arg(long)]
    out: PathBuf,
    /// Cache for prepared trees.
    #[arg(long, default_value = "/var/cache/klive-build")]
    cache: PathBuf,
    #[arg(long, default_value_t = 2)]
    jobs: u32,
}

/// Exit status when the diffs change something a livepatch must not carry.
pub const EXIT_REFUSED: i32 = 2;
/// Exit status when the diffs change no function (comments, whitespace, line shifts).
pub const EXIT_NOTHING_TO_PATCH: i32 = 3;

/// Ends of a build that are not failures of the tool: the input cannot become a livepatch.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    #[error("refused: {0}")]
    Refused(String),
    #[error("nothing to patch: {0}")]
    NothingToPatch(String),
}

impl Stop {
    fn exit_code(&self) -> i32 {
        match self {
            Stop::Refused(_) => EXIT_REFUSED,
            Stop::NothingToPatch(_) => EXIT_NOTHING_TO_PATCH,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = build(&cli) {
        eprintln!("klive-build: error: {e:#}");
        let code = e.downcast_ref::<Stop>().map_or(1, Stop::exit_code);
        std::process::exit(code);
    }
}

/// Builds the livepatch module of `cli` and writes it, its manifest and the report to
/// `cli.out`; a [`Stop`] error when the diffs cannot become a livepatch.
fn build(cli: &Cli) -> Result<()> {
    let start = Instant::now();
    let plan = resolve::resolve(cli)?;
    let work = tree::prepare(cli)?;
    let compiled = compile::compile(&work, &plan.tus, &plan.series.patches())?;
    let target = units::TargetSymbols::load(cli, &compiled.gate)?;
    let diff_start = Instant::now();
    let diffs = units::diff(&plan.tus, &work, &compiled.gate)?;
    let patch = units::emit(diffs, &target.resolver())?;
    let diff_emit = diff_start.elapsed().as_secs_f64();
    let linked = link::link(cli, &plan, &work, &compiled.gate, &patch)?;
    let timings = manifest::Timings {
        start,
        prepare: work.tree.prepare_secs,
        compile_orig: compiled.orig_secs,
        compile_patched: compiled.patched_secs,
        diff_emit,
        link: linked.secs,
    };
    manifest::write(cli, plan, patch, &linked, &timings)
}
