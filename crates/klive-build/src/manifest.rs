//! Step 7, manifest: the release manifest next to the module, then the build report
//! (`report.txt`, also printed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;
use klive_elf::emit::PatchFunc;
use klive_format::release::{ModuleDigest, ReleaseManifest, TargetKernel};

use crate::Job;
use crate::link::Linked;
use crate::resolve::Plan;
use crate::units::Patch;

/// How long the steps took, for the report.
#[derive(Debug)]
pub struct Timings {
    /// When the build started.
    pub start: Instant,
    /// `None` when the prepared tree came from the cache.
    pub prepare: Option<f64>,
    pub compile_orig: f64,
    pub compile_patched: f64,
    pub diff_emit: f64,
    pub link: f64,
}

/// Takes the plan, the patch and the linked module; writes the series record (the base of
/// the next level), `manifest.json` (validated) and `report.txt` to the output directory and prints the report.
pub fn write(
    job: &Job,
    plan: Plan,
    patch: Patch,
    linked: &Linked,
    timings: &Timings,
) -> Result<()> {
    let manifest = ReleaseManifest {
        format: klive_format::release::MANIFEST_FORMAT,
        module_name: job.name.clone(),
        level: plan.level,
        kernel: TargetKernel {
            build_id: plan.build_id,
            release: job.target.release.clone(),
            version: job.target.version.clone(),
            distro: None,
            arch: "x86_64".into(),
        },
        module: ModuleDigest {
            file: linked.file.clone(),
            sha256: klive_format::digest::sha256_hex(&linked.bytes),
            size: linked.bytes.len() as u64,
        },
        fixes: plan.fixes,
    };
    manifest.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    plan.series.write_record(&job.out)?;
    std::fs::write(
        job.out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    let report = patch.report + &module_report(&patch.funcs, linked) + &timings_report(timings);
    std::fs::write(job.out.join("report.txt"), &report)?;
    print!("{report}");
    Ok(())
}

/// The report's section on the module: the functions it replaces and its klp relocations.
fn module_report(funcs: &BTreeMap<String, Vec<PatchFunc>>, linked: &Linked) -> String {
    let mut report = String::new();
    let _ = writeln!(
        report,
        "== module {} ({} bytes)",
        linked.file,
        linked.bytes.len()
    );
    for (object, fs) in funcs {
        for f in fs {
            let _ = writeln!(
                report,
                "  patches {object}:{},{} -> {}",
                f.old_name, f.sympos, f.new_symbol
            );
        }
    }
    for (s, n) in &linked.fix.sections {
        let _ = writeln!(report, "  {s}: {n} relocations");
    }
    report
}

/// The report's last section; the total runs until now.
fn timings_report(t: &Timings) -> String {
    let mut report = String::from("== timings\n");
    match t.prepare {
        Some(s) => {
            let _ = writeln!(report, "  prepare tree: {s:.1} s (cold)");
        }
        None => {
            let _ = writeln!(report, "  prepare tree: cached");
        }
    }
    let _ = writeln!(
        report,
        "  compile original: {:.1} s\n  compile patched: {:.1} s\n  diff+emit: {:.2} s\n  kbuild link: {:.1} s\n  total: {:.1} s",
        t.compile_orig,
        t.compile_patched,
        t.diff_emit,
        t.link,
        t.start.elapsed().as_secs_f64()
    );
    report
}
