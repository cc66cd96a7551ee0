//! `cargo xtask bench corpus`: klive-build on real kernel fixes (`tests/build/real/`).
//!
//! Each case is a fix taken from two consecutive Debian kernel security updates, with a
//! `case.toml` saying which kernel (ABI) it applies to and what klive-build should do with
//! it. The runner builds klive-build, runs it once per case, times it, classifies the exit
//! status (0 module written, 1 error, 2 refused, 3 nothing to patch) against `expect`, and
//! writes its section of BENCHMARKS.md with the coverage: cases built / cases expected to
//! build.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::bench_env;
use crate::build_tests;

/// The heading of this benchmark's section in BENCHMARKS.md; a new run replaces it.
const SECTION: &str = "## klive-build on real kernel fixes (`cargo xtask bench corpus`)";

/// A case that runs longer than this is stopped and counted as failed.
const CASE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The category names a case may use (`tests/build/real/README.md` explains them).
const CATEGORIES: &[&str] = &[
    "inlined-static",
    "gcc-clone",
    "tracepoint",
    "jump-label",
    "static-call",
    "warn-bug",
    "line-shift",
    "netlink-extack",
    "netlink-policy",
    "rodata",
    "module",
    "multi-object-module",
    "non-exported-call",
    "data-layout",
    "changed-data",
    "init",
    "header",
    "new-static-data",
    "no-code-change",
    "function-pointer-table",
    "exported-function",
    "multi-file",
    "syscall-visible",
    "vmlinux",
    "lib",
    "mm",
    "fs",
    "bpf",
    "net-driver",
];

/// `tests/build/real/NN-slug/case.toml`. `notes` (what a person does when refused) and `check`
/// (a guest snippet showing the fix from userspace) are for people and the VM harness; the
/// runner only checks they are not empty.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub subject: String,
    pub cve: Option<String>,
    pub kernel: String,
    pub debian_from: String,
    pub debian_to: String,
    pub files: Vec<String>,
    pub categories: Vec<String>,
    pub expect: Expect,
    pub refusal: Option<String>,
    pub object: String,
    pub notes: Option<String>,
    pub check: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Build,
    Refuse,
    Nothing,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Expect::Build => "build",
            Expect::Refuse => "refuse",
            Expect::Nothing => "nothing",
        }
    }
}

/// What klive-build did, from its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Built,
    Error,
    Refused,
    Nothing,
    /// Another status, a signal, or stopped after [`CASE_TIMEOUT`].
    Abnormal,
}

impl Outcome {
    fn from_status(code: Option<i32>) -> Self {
        match code {
            Some(0) => Outcome::Built,
            Some(1) => Outcome::Error,
            Some(2) => Outcome::Refused,
            Some(3) => Outcome::Nothing,
            _ => Outcome::Abnormal,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Built => "module written",
            Outcome::Error => "error",
            Outcome::Refused => "refused",
            Outcome::Nothing => "nothing to patch",
            Outcome::Abnormal => "killed or unknown status",
        }
    }
}

/// The verdict of one case: what it did compared with what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    BuiltAsExpected,
    RefusedCorrectly,
    NothingAsExpected,
    Failed,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::BuiltAsExpected => "built as expected",
            Verdict::RefusedCorrectly => "refused correctly",
            Verdict::NothingAsExpected => "nothing to patch, as expected",
            Verdict::Failed => "failed",
        }
    }
}

struct Run {
    dir: String,
    case: Case,
    outcome: Outcome,
    verdict: Verdict,
    secs: f64,
    /// Why it failed, or the reason line of a refusal.
    detail: String,
}

/// The case directories under `tests/build/real/`, sorted by name.
fn case_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let base = root.join("tests/build/real");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&base)
        .with_context(|| format!("reading {}", base.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.toml").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

pub fn load_case(dir: &Path) -> Result<Case> {
    let path = dir.join("case.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let case: Case =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if case.expect == Expect::Refuse && case.refusal.as_deref().is_none_or(str::is_empty) {
        bail!(
            "{}: expect = \"refuse\" needs a `refusal` substring",
            path.display()
        );
    }
    let patch = dir.join("fix.patch");
    let diff =
        fs::read_to_string(&patch).with_context(|| format!("reading {}", patch.display()))?;
    let mut touched: Vec<&str> = diff
        .lines()
        .filter_map(|l| l.strip_prefix("+++ b/"))
        .map(|p| p.split('\t').next().unwrap_or(p).trim())
        .collect();
    touched.sort_unstable();
    let mut listed: Vec<&str> = case.files.iter().map(String::as_str).collect();
    listed.sort_unstable();
    if touched != listed {
        bail!(
            "{}: `files` {listed:?} is not what fix.patch changes {touched:?}",
            path.display()
        );
    }
    if let Some(c) = case
        .categories
        .iter()
        .find(|c| !CATEGORIES.contains(&c.as_str()))
    {
        bail!("{}: unknown category {c:?}", path.display());
    }
    let empty = |s: &Option<String>| s.as_deref().is_some_and(|s| s.trim().is_empty());
    if case.subject.trim().is_empty()
        || case.kernel.trim().is_empty()
        || case.debian_from == case.debian_to
        || case.categories.is_empty()
        || empty(&case.notes)
        || empty(&case.check)
        || empty(&case.cve)
    {
        bail!(
            "{}: subject, kernel, two different Debian versions and categories are required; notes, check and cve are absent or not empty",
            path.display()
        );
    }
    Ok(case)
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `case` matches a directory by its number (`07`, `7`) or its whole name.
fn matches(dir_name: &str, case: &str) -> bool {
    if dir_name == case {
        return true;
    }
    let num = dir_name.split('-').next().unwrap_or("");
    match (num.parse::<u32>(), case.parse::<u32>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Runs the corpus (or the one case `only`), with `tool` or a freshly built klive-build.
pub fn run(root: &Path, only: Option<&str>, tool: Option<&Path>) -> Result<()> {
    let (runs, bin) = run_cases(root, |name| only.is_none_or(|c| matches(name, c)), tool)?;
    if runs.is_empty()
        && let Some(c) = only
    {
        bail!("no case {c} in tests/build/real/");
    }
    let md = report(&runs, &bin, only.is_some());
    if only.is_some() {
        // One case is not the corpus: printed, not kept.
        println!("{md}");
    } else {
        replace_section(root, &md)?;
    }
    Ok(())
}

/// The representative subset `cargo xtask test` runs: every case in `cases` must end as
/// its case.toml expects (the whole corpus is `cargo xtask bench corpus`).
pub fn check(root: &Path, cases: &[&str]) -> Result<()> {
    let (runs, _) = run_cases(root, |name| cases.iter().any(|c| matches(name, c)), None)?;
    if runs.len() != cases.len() {
        bail!(
            "the corpus subset names {} cases but {} are in tests/build/real/",
            cases.len(),
            runs.len()
        );
    }
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r.verdict == Verdict::Failed)
        .map(|r| format!("{}: {}", r.dir, r.detail))
        .collect();
    if !failed.is_empty() {
        bail!("real-fix corpus cases failed:\n{}", failed.join("\n"));
    }
    eprintln!("xtask: corpus subset: {} cases as expected", runs.len());
    Ok(())
}

/// Runs the cases whose directory name `wanted` accepts; gives the runs and the binary.
fn run_cases(
    root: &Path,
    wanted: impl Fn(&str) -> bool,
    tool: Option<&Path>,
) -> Result<(Vec<Run>, PathBuf)> {
    let mut dirs = case_dirs(root)?;
    dirs.retain(|d| wanted(&name_of(d)));
    // Every case.toml is checked before anything runs.
    let cases: Vec<(PathBuf, Case)> = dirs
        .into_iter()
        .map(|d| load_case(&d).map(|c| (d, c)))
        .collect::<Result<_>>()?;
    let bin = match tool {
        Some(t) => t
            .canonicalize()
            .with_context(|| format!("{}", t.display()))?,
        None => build_tests::build_tool(root)?,
    };
    let target = build_tests::target_dir(root);
    let cache = target.join("klive-build-cache");
    let mut runs = Vec::new();
    for (dir, case) in cases {
        let name = name_of(&dir);
        eprintln!(
            "xtask: == corpus {name}: {} ({}, {}, {} -> {})",
            case.subject, case.kernel, case.object, case.debian_from, case.debian_to
        );
        let out = target.join("corpus").join(&name);
        let r = run_case(&bin, &dir, &out, &cache, name, case)?;
        eprintln!(
            "xtask: {}: {} ({}) in {:.1} s{}",
            r.dir,
            r.verdict.as_str(),
            r.outcome.as_str(),
            r.secs,
            if r.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", r.detail)
            }
        );
        runs.push(r);
    }
    Ok((runs, bin))
}

fn run_case(
    bin: &Path,
    dir: &Path,
    out: &Path,
    cache: &Path,
    name: String,
    case: Case,
) -> Result<Run> {
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let log_path = out.with_extension("log");
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let patch = dir.join("fix.patch").canonicalize()?;
    let start = Instant::now();
    let mut child = Command::new(bin)
        .arg("--kernel")
        .arg(&case.kernel)
        .arg("--patch")
        .arg(&patch)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > CASE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let secs = start.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let outcome = Outcome::from_status(status.and_then(|s| s.code()));
    let (verdict, detail) = judge(&case, outcome, status.is_none(), &text);
    Ok(Run {
        dir: name,
        case,
        outcome,
        verdict,
        secs,
        detail,
    })
}

/// Compares the outcome with `expect`; a refusal must also give the expected reason.
fn judge(case: &Case, outcome: Outcome, timed_out: bool, log: &str) -> (Verdict, String) {
    let reason = reason_line(log);
    match (case.expect, outcome) {
        (Expect::Build, Outcome::Built) => (Verdict::BuiltAsExpected, String::new()),
        (Expect::Nothing, Outcome::Nothing) => (Verdict::NothingAsExpected, String::new()),
        (Expect::Refuse, Outcome::Refused) => {
            let want = case.refusal.as_deref().unwrap_or("");
            if log.contains(want) {
                (Verdict::RefusedCorrectly, reason)
            } else {
                (
                    Verdict::Failed,
                    format!("refused, but not for `{want}`: {reason}"),
                )
            }
        }
        (_, Outcome::Abnormal) if timed_out => (
            Verdict::Failed,
            format!("stopped after {} s", CASE_TIMEOUT.as_secs()),
        ),
        (want, got) => (
            Verdict::Failed,
            format!("expected {}, got {}: {reason}", want.as_str(), got.as_str()),
        ),
    }
}

/// The most telling line of klive-build's output: the refusal reasons, else the last error.
fn reason_line(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // The per-unit report lists refusals under "refused:"; the final line only points there.
    if let Some(i) = lines.iter().position(|l| *l == "refused:") {
        let reasons: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| {
                !l.starts_with("klive-build:") && !l.starts_with("==") && **l != "refused:"
            })
            .take(2)
            .copied()
            .collect();
        if !reasons.is_empty() {
            return shorten(&reasons.join("; "));
        }
    }
    let last = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error") || l.starts_with("refused") || l.contains("nothing"))
        .or(lines.last())
        .copied()
        .unwrap_or("");
    shorten(last)
}

fn shorten(s: &str) -> String {
    const MAX: usize = 160;
    let s = s.replace('|', "\\|");
    if s.chars().count() <= MAX {
        s
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

fn report(runs: &[Run], bin: &Path, partial: bool) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(md, "{SECTION}\n");
    let _ = writeln!(
        md,
        "{} on {}; klive-build `{}`{}. Cases: `tests/build/real/` (fixes from consecutive \
         Debian 12 security updates of the 6.1 and 6.12 lines, see its README). Exit status: 0 \
         module written, 1 error, 2 refused, 3 nothing to patch.\n",
        bench_env::today(),
        bench_env::machine(),
        bin.display(),
        git_head(bin).map_or(String::new(), |h| format!(" (commit {h})")),
    );
    if partial {
        let _ = writeln!(md, "One case only (`--case`); not a corpus figure.\n");
    }
    let _ = writeln!(
        md,
        "| case | CVE | kernel | object | expect | outcome | verdict | time (s) | detail |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---:|---|");
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} |",
            r.dir,
            r.case.cve.as_deref().unwrap_or("–"),
            r.case.kernel,
            r.case.object,
            r.case.expect.as_str(),
            r.outcome.as_str(),
            r.verdict.as_str(),
            r.secs,
            r.detail
        );
    }
    let to_build = runs
        .iter()
        .filter(|r| r.case.expect == Expect::Build)
        .count();
    let built = runs
        .iter()
        .filter(|r| r.verdict == Verdict::BuiltAsExpected)
        .count();
    let refuse = runs
        .iter()
        .filter(|r| r.case.expect == Expect::Refuse)
        .count();
    let refused = runs
        .iter()
        .filter(|r| r.verdict == Verdict::RefusedCorrectly)
        .count();
    let nothing = runs
        .iter()
        .filter(|r| r.case.expect == Expect::Nothing)
        .count();
    let nothing_ok = runs
        .iter()
        .filter(|r| r.verdict == Verdict::NothingAsExpected)
        .count();
    let failed = runs.iter().filter(|r| r.verdict == Verdict::Failed).count();
    let total: f64 = runs.iter().map(|r| r.secs).sum();
    let coverage = if to_build == 0 {
        "n/a".to_owned()
    } else {
        format!("{:.0} %", 100.0 * built as f64 / to_build as f64)
    };
    let _ = writeln!(
        md,
        "\n**Coverage: {built} / {to_build} cases expected to build were built ({coverage}).** \
         Refused correctly: {refused} / {refuse}; nothing to patch as expected: {nothing_ok} / \
         {nothing}; failed: {failed} of {}. Total time {total:.0} s.\n",
        runs.len()
    );
    md
}

/// The commit of the checkout a klive-build binary was built in (`<checkout>/target/...`),
/// when that can be told.
fn git_head(bin: &Path) -> Option<String> {
    let checkout = bin.ancestors().find(|p| p.join(".git").exists())?;
    let out = Command::new("git")
        .arg("-C")
        .arg(checkout)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Prints the section and puts it in BENCHMARKS.md in place of the previous run's section
/// (up to the next `## ` heading), or at the end.
fn replace_section(root: &Path, md: &str) -> Result<()> {
    println!("{md}");
    let path = root.join("BENCHMARKS.md");
    let text = fs::read_to_string(&path).unwrap_or_default();
    let new = splice_section(&text, md);
    fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: wrote the corpus section of {}", path.display());
    Ok(())
}

fn splice_section(text: &str, md: &str) -> String {
    let Some(start) = text
        .match_indices(SECTION)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || text[..i].ends_with('\n'))
    else {
        let sep = if text.is_empty() || text.ends_with("\n\n") {
            ""
        } else if text.ends_with('\n') {
            "\n"
        } else {
            "\n\n"
        };
        return format!("{text}{sep}{md}");
    };
    let after = start + SECTION.len();
    let end = text[after..]
        .find("\n## ")
        .map_or(text.len(), |i| after + i + 1);
    format!("{}{}{}", &text[..start], md, &text[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_replaced_in_place() {
        let old = format!("# B\n\n## a\nx\n\n{SECTION}\n\nold\n\n## z\ny\n");
        let new = splice_section(&old, &format!("{SECTION}\n\nnew\n\n"));
        assert_eq!(
            new,
            format!("# B\n\n## a\nx\n\n{SECTION}\n\nnew\n\n## z\ny\n")
        );
        let appended = splice_section("# B\n", &format!("{SECTION}\n"));
        assert_eq!(appended, format!("# B\n\n{SECTION}\n"));
    }

    #[test]
    fn cases_match_by_number_or_name() {
        assert!(matches("07-foo", "7"));
        assert!(matches("07-foo", "07"));
        assert!(matches("07-foo", "07-foo"));
        assert!(!matches("07-foo", "17"));
    }

    #[test]
    fn every_case_in_the_repository_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for d in case_dirs(root).unwrap() {
            load_case(&d).unwrap();
        }
    }
}
