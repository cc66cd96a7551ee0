//! Cumulative levels: the ordered list of fixes a level carries, each with its diffs.
//!
//! A level is one replace-mode module holding every fix of the series, so level N+1 is built
//! from level N's series plus the new fixes, minus the ones dropped. The series comes from a
//! series file (`--series`), from the record a previous build left beside its manifest
//! (`--base PREVIOUS/manifest.json`), and from `--patch`/`--fix` on the command line.
//!
//! A series file has one diff per line, in the order the diffs apply, with the fix it
//! belongs to (`-` for a diff that carries no CVE of its own); paths are relative to the file:
//!
//! ```text
//! # PATCH                         CVE             SEVERITY  SUMMARY
//! 0001-act_mirred-retval.patch    CVE-2024-26739  high      net/sched: act_mirred: ...
//! 0002-act_mirred-followup.patch  CVE-2024-26739  high      net/sched: act_mirred: ...
//! 0003-typo.patch                 -
//! ```
//!
//! Every build writes its series as `series` with copies of the diffs under `patches/` next to
//! the module, so the output directory alone is the base of the next level.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use klive_format::PatchLevel;
use klive_format::digest::sha256_hex;
use klive_format::release::{Fix, ReleaseManifest, Severity};

/// The record's file name beside the manifest, and the directory of its diffs.
pub const RECORD: &str = "series";
pub const PATCH_DIR: &str = "patches";

/// One diff of the series and the fix it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub patch: PathBuf,
    /// `None` for a diff that carries no CVE of its own (a prerequisite, a follow-up).
    pub fix: Option<Fix>,
}

/// The diffs of one level, in the order they apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub entries: Vec<Entry>,
}

impl Series {
    /// Reads a series file; paths are taken relative to its directory.
    pub fn read(path: &Path) -> Result<Series> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the series file {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = parse_line(line, dir)
                .with_context(|| format!("{}:{}: {line:?}", path.display(), n + 1))?;
            entries.push(entry);
        }
        if entries.is_empty() {
            bail!(
                "the series file {} lists no diff; write one line per diff: PATCH CVE SEVERITY SUMMARY",
                path.display()
            );
        }
        Ok(Series { entries })
    }

    /// The series a previous build recorded beside `manifest` (its `series` and `patches/`),
    /// checked against the manifest, and the manifest's level.
    pub fn of_base(manifest: &Path) -> Result<(Series, ReleaseManifest)> {
        let text = std::fs::read_to_string(manifest)
            .with_context(|| format!("reading the base manifest {}", manifest.display()))?;
        let base: ReleaseManifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a klive release manifest", manifest.display()))?;
        let dir = manifest.parent().unwrap_or(Path::new("."));
        let record = dir.join(RECORD);
        if !record.exists() {
            bail!(
                "{} has no series record beside it ({}); rebuild the base level with this klive-build, or pass the earlier fixes with --series",
                manifest.display(),
                record.display()
            );
        }
        let series = Series::read(&record)?;
        let fixes = series.fixes();
        if fixes != base.fixes {
            bail!(
                "the series record {} lists fixes {:?} but its manifest lists {:?}; the directory was edited: rebuild the base level",
                record.display(),
                cves(&fixes),
                cves(&base.fixes)
            );
        }
        Ok((series, base))
    }

    /// Appends `patches` with the fixes of `--fix`: one fix for all of them, or one per diff.
    pub fn push_patches(&mut self, patches: &[PathBuf], fixes: &[Fix]) -> Result<()> {
        match (patches.len(), fixes.len()) {
            (_, 0) => self.entries.extend(patches.iter().map(|p| Entry {
                patch: p.clone(),
                fix: None,
            })),
            (_, 1) => self.entries.extend(patches.iter().map(|p| Entry {
                patch: p.clone(),
                fix: Some(fixes[0].clone()),
            })),
            (n, m) if n == m => {
                self.entries
                    .extend(patches.iter().zip(fixes).map(|(p, f)| Entry {
                        patch: p.clone(),
                        fix: Some(f.clone()),
                    }))
            }
            (n, m) => bail!(
                "{n} --patch and {m} --fix: give one --fix for all the diffs, or one per diff in the same order (or use --series)"
            ),
        }
        Ok(())
    }

    /// Drops every diff of fix `cve`; an error if the series has none.
    pub fn drop_fix(&mut self, cve: &str) -> Result<()> {
        let before = self.entries.len();
        self.entries
            .retain(|e| e.fix.as_ref().is_none_or(|f| f.cve != cve));
        if self.entries.len() == before {
            bail!(
                "--drop {cve}: the series has no such fix (it has {:?})",
                cves(&self.fixes())
            );
        }
        Ok(())
    }

    /// The fixes, each once, in the order they first appear.
    pub fn fixes(&self) -> Vec<Fix> {
        let mut out: Vec<Fix> = Vec::new();
        for f in self.entries.iter().filter_map(|e| e.fix.as_ref()) {
            if !out.iter().any(|o| o.cve == f.cve) {
                out.push(f.clone());
            }
        }
        out
    }

    pub fn patches(&self) -> Vec<PathBuf> {
        self.entries.iter().map(|e| e.patch.clone()).collect()
    }

    /// Refuses a series that names one diff twice (by content) or gives one CVE two
    /// different descriptions.
    pub fn check(&self) -> Result<()> {
        let mut seen: Vec<(String, &Path)> = Vec::new();
        for e in &self.entries {
            let bytes = std::fs::read(&e.patch)
                .with_context(|| format!("reading {}", e.patch.display()))?;
            let digest = sha256_hex(&bytes);
            if let Some((_, first)) = seen.iter().find(|(d, _)| *d == digest) {
                bail!(
                    "{} and {} are the same diff; a series lists each diff once",
                    first.display(),
                    e.patch.display()
                );
            }
            seen.push((digest, &e.patch));
        }
        for f in self.entries.iter().filter_map(|e| e.fix.as_ref()) {
            if let Some(g) = self
                .entries
                .iter()
                .filter_map(|e| e.fix.as_ref())
                .find(|g| g.cve == f.cve && *g != f)
            {
                bail!(
                    "{} is described twice ({:?} and {:?}); give every diff of a fix the same severity and summary",
                    f.cve,
                    f.summary,
                    g.summary
                );
            }
        }
        Ok(())
    }

    /// Writes the record of this series into `out`: `series` and the diffs under `patches/`
    /// (numbered, so two diffs with one file name stay apart).
    pub fn write_record(&self, out: &Path) -> Result<()> {
        let dir = out.join(PATCH_DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut text = String::from(
            "# klive-build series: one diff per line, in the order they apply.\n# PATCH\tCVE\tSEVERITY\tSUMMARY\n",
        );
        for (n, e) in self.entries.iter().enumerate() {
            let base = e
                .patch
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "fix.patch".into());
            let name = format!(
                "{:04}-{}",
                n + 1,
                base.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-')
            );
            std::fs::copy(&e.patch, dir.join(&name))
                .with_context(|| format!("copying {} into {}", e.patch.display(), dir.display()))?;
            text += &format!("{PATCH_DIR}/{name}");
            match &e.fix {
                Some(f) => {
                    text += &format!(
                        "\t{}\t{}\t{}\n",
                        f.cve,
                        severity_name(f.severity),
                        f.summary
                    )
                }
                None => text += "\t-\n",
            }
        }
        std::fs::write(out.join(RECORD), text)
            .with_context(|| format!("writing {}", out.join(RECORD).display()))
    }
}

/// The level after `base`, or `wanted` when given (which must then be higher).
pub fn next_level(base: PatchLevel, wanted: Option<u32>) -> Result<PatchLevel> {
    let n = match wanted {
        Some(n) if n <= base.get() => bail!(
            "--level {n} is not above the base level {}; a cumulative level replaces the one before it",
            base.get()
        ),
        Some(n) => n,
        None => base.get() + 1,
    };
    PatchLevel::new(n).map_err(|e| anyhow::anyhow!("{e}"))
}

fn parse_line(line: &str, dir: &Path) -> Result<Entry> {
    let mut it = line.split_whitespace();
    let patch = it.next().context("no diff named")?;
    let patch = dir.join(patch);
    if !patch.is_file() {
        bail!("{} does not exist", patch.display());
    }
    let Some(cve) = it.next() else {
        bail!("no CVE: write the fix's CVE id, severity and summary after the diff, or - for none");
    };
    if cve == "-" {
        return Ok(Entry { patch, fix: None });
    }
    let severity = it
        .next()
        .context("no severity after the CVE: low, medium, high or critical")?;
    let summary: Vec<&str> = it.collect();
    if summary.is_empty() {
        bail!("no summary after the severity");
    }
    let fix = parse_fix(&format!("{cve}:{severity}:{}", summary.join(" ")))?;
    Ok(Entry {
        patch,
        fix: Some(fix),
    })
}

/// A fix given as `CVE-ID:severity:summary` (`--fix`, and series lines).
pub fn parse_fix(s: &str) -> Result<Fix> {
    let mut it = s.splitn(3, ':');
    let (Some(cve), Some(sev), Some(summary)) = (it.next(), it.next(), it.next()) else {
        bail!("--fix {s:?}: want CVE-ID:severity:summary");
    };
    let severity = match sev {
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => bail!("--fix {s:?}: severity must be low, medium, high or critical"),
    };
    if !klive_format::release::is_cve_id(cve) {
        bail!("--fix {s:?}: {cve:?} is not a CVE id (CVE-YYYY-NNNN)");
    }
    Ok(Fix {
        cve: cve.to_owned(),
        severity,
        cvss: None,
        summary: summary.trim().to_owned(),
        reference: None,
    })
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

fn cves(fixes: &[Fix]) -> Vec<&str> {
    fixes.iter().map(|f| f.cve.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn fixes_parse_and_bad_input_is_named() {
        let f = parse_fix("CVE-2024-1234:high:proc: fix cmdline").unwrap();
        assert_eq!(f.summary, "proc: fix cmdline");
        assert!(parse_fix("CVE-2024-1234:urgent:x").is_err());
        assert!(parse_fix("CVE-24:high:x").is_err());
    }

    #[test]
    fn a_series_file_reads_in_order_and_names_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.patch", "+++ b/a.c\n");
        write(d.path(), "b.patch", "+++ b/b.c\n");
        let s = write(
            d.path(),
            "series",
            "# comment\na.patch CVE-2024-0001 high net: fix a\n\nb.patch -\n",
        );
        let series = Series::read(&s).unwrap();
        assert_eq!(series.entries.len(), 2);
        assert_eq!(series.fixes().len(), 1);
        assert_eq!(series.fixes()[0].summary, "net: fix a");
        assert!(series.entries[1].fix.is_none());
        let bad = write(d.path(), "bad", "a.patch CVE-2024-0001 urgent x\n");
        let err = format!("{:#}", Series::read(&bad).unwrap_err());
        assert!(err.contains("bad:1") && err.contains("severity"), "{err}");
        let missing = write(d.path(), "missing", "nope.patch -\n");
        let err = format!("{:#}", Series::read(&missing).unwrap_err());
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn the_record_is_the_base_of_the_next_level_and_drops_are_absent() {
        let d = tempfile::tempdir().unwrap();
        let a = write(d.path(), "a.patch", "+++ b/a.c\n");
        let b = write(d.path(), "b.patch", "+++ b/b.c\n");
        let fa = parse_fix("CVE-2024-0001:high:fix a").unwrap();
        let fb = parse_fix("CVE-2024-0002:low:fix b").unwrap();
        let mut s = Series::default();
        s.push_patches(std::slice::from_ref(&a), std::slice::from_ref(&fa))
            .unwrap();
        s.push_patches(std::slice::from_ref(&b), std::slice::from_ref(&fb))
            .unwrap();
        s.check().unwrap();
        let out = d.path().join("level1");
        std::fs::create_dir_all(&out).unwrap();
        s.write_record(&out).unwrap();
        let manifest = serde_json::json!({
            "format": klive_format::release::MANIFEST_FORMAT,
            "module_name": "klive_t",
            "level": 1,
            "kernel": {"build_id": "0123456789abcdef0123456789abcdef01234567", "release": "r", "arch": "x86_64"},
            "module": {"file": "klive_t.ko", "sha256": "00", "size": 1},
            "fixes": [fa, fb],
        });
        std::fs::write(out.join("manifest.json"), manifest.to_string()).unwrap();
        let (mut base, m) = Series::of_base(&out.join("manifest.json")).unwrap();
        assert_eq!(base.fixes(), vec![fa.clone(), fb.clone()]);
        assert_eq!(
            std::fs::read(&base.entries[1].patch).unwrap(),
            b"+++ b/b.c\n"
        );
        assert_eq!(next_level(m.level, None).unwrap().get(), 2);
        assert!(next_level(m.level, Some(1)).is_err());
        base.drop_fix("CVE-2024-0001").unwrap();
        assert_eq!(base.fixes(), vec![fb]);
        assert!(base.drop_fix("CVE-2024-0001").is_err());
        // An edited record no longer matches its manifest.
        std::fs::write(out.join(RECORD), "patches/0001-a.patch -\n").unwrap();
        let err = format!(
            "{:#}",
            Series::of_base(&out.join("manifest.json")).unwrap_err()
        );
        assert!(err.contains("edited"), "{err}");
    }

    #[test]
    fn the_same_diff_twice_and_two_descriptions_of_one_cve_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let a = write(d.path(), "a.patch", "+++ b/a.c\n");
        let a2 = write(d.path(), "a2.patch", "+++ b/a.c\n");
        let mut s = Series::default();
        s.push_patches(&[a.clone(), a2], &[]).unwrap();
        assert!(s.check().is_err());
        let b = write(d.path(), "b.patch", "+++ b/b.c\n");
        let mut s = Series::default();
        s.push_patches(
            &[a, b],
            &[
                parse_fix("CVE-2024-0001:high:one").unwrap(),
                parse_fix("CVE-2024-0001:high:other").unwrap(),
            ],
        )
        .unwrap();
        assert!(s.check().is_err());
    }
}
