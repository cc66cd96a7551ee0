//! Step 1, resolve: the command line checked and turned into what the build needs: module
//! identity, fixes and the translation units the diffs touch.

use anyhow::{Context, Result, bail};
use klive_format::release::Fix;
use klive_format::{BuildId, PatchLevel};

use crate::series::{self, Series};
use crate::{Job, patches};

/// The checked inputs of one build.
#[derive(Debug)]
pub struct Plan {
    pub level: PatchLevel,
    pub build_id: BuildId,
    /// Every diff of the level, with its fix, in the order they apply.
    pub series: Series,
    pub fixes: Vec<Fix>,
    /// Objects to compile (`fs/proc/cmdline.o`), sorted.
    pub tus: Vec<String>,
    /// Touched headers (`include/net/sock.h`), sorted.
    pub headers: Vec<String>,
}

/// Takes the command line and gives the plan, or says which argument is wrong; a diff that
/// touches something a livepatch cannot carry stops here ([`crate::Stop`]).
pub fn resolve(job: &Job) -> Result<Plan> {
    if !klive_format::release::is_module_name(&job.name) {
        bail!(
            "module name {:?} must start with klive_ and use [a-z0-9_]",
            job.name
        );
    }
    let build_id: BuildId = job
        .target
        .build_id
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (series, level) = series_of(job, &build_id)?;
    let mut files = Vec::new();
    for p in series.patches() {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        files.extend(patches::touched_files(&text));
    }
    files.sort();
    files.dedup();
    let (tus, headers) = patches::translation_units(&files)?;
    Ok(Plan {
        level,
        build_id,
        fixes: series.fixes(),
        series,
        tus,
        headers,
    })
}

/// The level's series: the base level's, then the series file's, then `--patch`/`--fix`,
/// without the dropped fixes; and its level.
fn series_of(job: &Job, build_id: &BuildId) -> Result<(Series, PatchLevel)> {
    let mut series = Series::default();
    let mut level = None;
    if let Some(base) = &job.base {
        let base_dir = base.parent().unwrap_or(std::path::Path::new("."));
        if base_dir.canonicalize().ok() == job.dest.canonicalize().ok() {
            bail!(
                "--out {} is the base level's directory; write the new level to a directory of its own",
                job.dest.display()
            );
        }
        let (s, manifest) = Series::of_base(base)?;
        if manifest.kernel.build_id != *build_id {
            bail!(
                "the base level {} is for kernel {} (build-id {}), not this one ({build_id}); a cumulative level builds on a level of the same kernel",
                base.display(),
                manifest.kernel.release,
                manifest.kernel.build_id
            );
        }
        if manifest.module_name == job.name {
            bail!(
                "the base level's module is also named {:?}; give the new level a --name of its own: the kernel cannot load two modules of one name, and the new replace-mode module takes over from the old one",
                job.name
            );
        }
        level = Some(series::next_level(manifest.level, job.level)?);
        series = s;
    }
    if let Some(file) = &job.series {
        series.entries.extend(Series::read(file)?.entries);
    }
    let fixes: Vec<Fix> = job
        .fixes
        .iter()
        .map(|f| series::parse_fix(f))
        .collect::<Result<_>>()?;
    series.push_patches(&job.patches, &fixes)?;
    for cve in &job.drops {
        series.drop_fix(cve)?;
    }
    if series.entries.is_empty() {
        return Err(crate::Stop::NothingToPatch(
            "the series is empty once the dropped fixes are left out; withdraw the release instead"
                .into(),
        )
        .into());
    }
    series.check()?;
    let level = match level {
        Some(l) => l,
        None => PatchLevel::new(job.level.unwrap_or(1)).map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    Ok((series, level))
}
