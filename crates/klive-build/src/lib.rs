//! `klive-build`: builds a livepatch module from kernel source diffs by compiling only the
//! translation units the diffs touch, diffing the objects (klive-elf) and linking the result
//! through the target's kbuild.
//!
//! [`build`] is a pipeline of steps, one module each: [`resolve`] the inputs, [`tree::prepare`]
//! the kernel tree, [`compile`] the touched units before and after the diffs, [`units::diff`]
//! and [`units::emit`] the objects, [`link`] the module, write the [`manifest`] and report.

mod compile;
pub mod debian;
mod headers;
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

pub use series::{PATCH_DIR, RECORD};

/// Where the target kernel's vmlinux symbols come from.
#[derive(Debug, Clone)]
pub enum Symbols {
    /// A `/proc/kallsyms` dump taken as root on a host running the kernel.
    Kallsyms(PathBuf),
    /// The unstripped vmlinux (the `-dbg` package's), its `.symtab` in kallsyms order.
    Vmlinux(PathBuf),
    /// The `-dbg` vmlinux of a Debian kernel, fetched into the cache when a patch to vmlinux
    /// needs it (not for patches to modules).
    DebianDbg(Box<debian::Kernel>),
}

/// Everything klive-build needs of one target kernel.
#[derive(Debug, Clone)]
pub struct Target {
    /// `uname -r`.
    pub release: String,
    /// The distribution's package version, when known.
    pub version: Option<String>,
    /// GNU build-id (hex).
    pub build_id: String,
    /// Kernel source: a directory or a tarball.
    pub source: PathBuf,
    /// SHA-256 of the source tarball when already known (saves hashing it again).
    pub source_sha256: Option<String>,
    /// The exact `.config` the kernel was built with (its headers package's).
    pub config: PathBuf,
    /// The kbuild directory for external modules, with `Module.symvers`.
    pub kbuild: PathBuf,
    pub symbols: Symbols,
    /// Where the kernel's own modules are (`lib/modules/RELEASE`), for patches to modules.
    pub modules_dir: PathBuf,
}

/// One build: a target kernel and what to build for it.
#[derive(Debug, Clone)]
pub struct Job {
    pub target: Target,
    /// Unified diffs (-p1), applied in order after the series'.
    pub patches: Vec<PathBuf>,
    /// A series file: one diff per line with its fix.
    pub series: Option<PathBuf>,
    /// The previous level's `manifest.json`: this level carries its fixes too.
    pub base: Option<PathBuf>,
    /// Fixes (CVE ids) whose diffs the base or series carries and this level leaves out.
    pub drops: Vec<String>,
    /// Module name (`klive_...`).
    pub name: String,
    /// Patch level; `None`: the base level + 1 with a base, else 1.
    pub level: Option<u32>,
    /// The fix of the `patches`, as `CVE-ID:severity:summary`: one for all, or one each.
    pub fixes: Vec<String>,
    /// Where the module, `manifest.json`, `report.txt`, the series record ([`PATCH_DIR`])
    /// and the work directories are written.
    pub out: PathBuf,
    /// Where the results end up (`out` is a staging directory that is moved there).
    pub dest: PathBuf,
    /// The cache (prepared trees under `trees/`).
    pub cache: PathBuf,
    pub jobs: u32,
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
    pub fn exit_code(&self) -> i32 {
        match self {
            Stop::Refused(_) => EXIT_REFUSED,
            Stop::NothingToPatch(_) => EXIT_NOTHING_TO_PATCH,
        }
    }
}

/// Builds the livepatch module of `job` and writes it, its manifest and the report to
/// `job.out`; a [`Stop`] error when the diffs cannot become a livepatch.
pub fn build(job: &Job) -> Result<()> {
    let start = Instant::now();
    let plan = resolve::resolve(job)?;
    let work = tree::prepare(job)?;
    let touched = headers::units(&work.tree.root, &plan.tus, &plan.headers)?;
    let via_header = &touched.via_header;
    if touched.tus.is_empty()
        && let Some(stop) = touched.refusal()
    {
        return Err(stop.into());
    }
    let compiled = compile::compile(&work, &touched.tus, via_header, &plan.series.patches())?;
    let diff_start = Instant::now();
    let diffs = units::diff(&compiled.units, &work)?;
    let mut targets = units::Targets::new(job);
    let emitted = units::emit(diffs, via_header, &mut targets);
    // A refusal of the compared units (a layout change in the header) says more than the
    // header's width does.
    if let Some(stop) = touched.refusal()
        && emitted.is_ok()
    {
        return Err(stop.into());
    }
    let mut patch = emitted?;
    for tu in &compiled.not_built {
        patch.report =
            format!("== {tu}: does not build in this kernel's config; left out\n") + &patch.report;
    }
    let diff_emit = diff_start.elapsed().as_secs_f64();
    let linked = link::link(job, &plan, &work, &patch)?;
    let timings = manifest::Timings {
        start,
        prepare: work.tree.prepare_secs,
        compile_orig: compiled.orig_secs,
        compile_patched: compiled.patched_secs,
        diff_emit,
        link: linked.secs,
    };
    manifest::write(job, plan, patch, &linked, &timings)
}
