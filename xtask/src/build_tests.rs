//! klive-build's real-kernel tests: the diffs of `tests/build/` are built with `klive-build`
//! against Debian's linux-source for the kernel the VM harness boots. The modules go into the
//! guest's `/modules` for the `tests/vm/scenarios/phase2/7?-build-*.sh` scenarios, which load
//! them with `klive apply` and check the change from userspace; the diffs that must not
//! become a module are checked here, on the host (exit status and reason).
//!
//! Results are cached in `target/klive-build-tests/<case>/` by a hash of everything that goes
//! in (the klive-build binary, the diffs, the kallsyms dump, the kernel), so a second
//! `cargo xtask test` costs nothing; the prepared tree is cached in `target/klive-build-cache/`
//! by source and config (about 60 s to prepare from the tarball, about 10 s per case after).

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::deps;

/// What klive-build needs besides the source: tools to prepare a kernel tree. Without
/// dwarves (pahole), `olddefconfig` changes the PAHOLE/BTF options of Debian's config.
const PACKAGES: &[&str] = &[
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "dwarves",
    "patch",
    "gcc-12",
    "make",
    "xz-utils",
];

/// `klive-build`'s exit status for diffs it refuses, and for diffs that change nothing.
const EXIT_REFUSED: i32 = 2;
const EXIT_NOTHING_TO_PATCH: i32 = 3;

/// What a case must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A livepatch module, tested in the guest.
    Module,
    /// Exit status 2 and this text in the error output.
    Refused(&'static str),
    /// Exit status 3 and this text.
    NothingToPatch(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Directory name under `target/klive-build-tests/`.
    pub name: &'static str,
    /// Module name (`klive_build_<name>`).
    pub module: &'static str,
    pub level: u32,
    /// Diffs of `tests/build/`, applied in order.
    pub diffs: &'static [&'static str],
    pub expect: Expect,
}

/// The cases; the levels increase in the order the guest applies them.
pub const CASES: &[Case] = &[
    Case {
        name: "cmdline",
        module: "klive_build_cmdline",
        level: 1,
        diffs: &["10-cmdline.patch"],
        expect: Expect::Module,
    },
    Case {
        name: "cumulative",
        module: "klive_build_cumulative",
        level: 2,
        diffs: &["10-cmdline.patch", "20-meminfo.patch"],
        expect: Expect::Module,
    },
    Case {
        name: "meminfo",
        module: "klive_build_meminfo",
        level: 3,
        diffs: &["20-meminfo.patch"],
        expect: Expect::Module,
    },
    Case {
        name: "uname",
        module: "klive_build_uname",
        level: 4,
        diffs: &["30-uname-static-call.patch"],
        expect: Expect::Module,
    },
    Case {
        name: "newfunc",
        module: "klive_build_newfunc",
        level: 5,
        diffs: &["40-new-function-and-global.patch"],
        expect: Expect::Module,
    },
    Case {
        name: "warn",
        module: "klive_build_warn",
        level: 6,
        diffs: &["50-warn-bug-table.patch"],
        expect: Expect::Module,
    },
    Case {
        name: "binfmt",
        module: "klive_build_binfmt",
        level: 7,
        diffs: &["60-module-binfmt-misc.patch"],
        expect: Expect::Module,
    },
    Case {
        name: "refuse-layout",
        module: "klive_build_layout",
        level: 1,
        diffs: &["80-refuse-data-layout.patch"],
        expect: Expect::Refused("acct_parm: 12 -> 16 bytes"),
    },
    Case {
        name: "refuse-init",
        module: "klive_build_init",
        level: 1,
        diffs: &["81-refuse-init.patch"],
        expect: Expect::Refused(".init.text (proc_meminfo_init)"),
    },
    Case {
        name: "refuse-asm",
        module: "klive_build_asm",
        level: 1,
        diffs: &["82-refuse-assembly.patch"],
        expect: Expect::Refused("arch/x86/lib/memcpy_64.S: assembly files cannot be live-patched"),
    },
    Case {
        name: "nothing",
        module: "klive_build_nothing",
        level: 1,
        diffs: &["83-nothing-comment-only.patch"],
        expect: Expect::NothingToPatch("nothing to patch"),
    },
];

/// Debian modules the scenarios load before patching them (case `binfmt`).
pub const GUEST_MODULES: &[&str] = &["binfmt_misc"];

/// The kernel the patches are for.
#[derive(Debug)]
pub struct Target<'a> {
    pub release: &'a str,
    pub build_id: &'a str,
    /// `/lib/modules/<release>/build`.
    pub build_dir: &'a Path,
    /// `/lib/modules/<release>`.
    pub modules_dir: &'a Path,
    /// A `/proc/kallsyms` dump of a boot of this kernel, taken as root.
    pub kallsyms: &'a Path,
}

/// Installs the build tools and the linux-source version of the target's image; returns the
/// source tarball.
pub fn ensure_source(release: &str) -> Result<PathBuf> {
    deps::ensure_apt(PACKAGES)?;
    let image = format!("linux-image-{release}");
    let version = dpkg_version(&image).with_context(|| {
        format!("{image} is not installed: klive-build tests target the kernel the VM boots")
    })?;
    // 6.1.0-56-amd64 -> linux-source-6.1.
    let series: Vec<&str> = release.split(['.', '-']).take(2).collect();
    if series.len() != 2 {
        bail!("cannot tell the kernel series of release {release:?}");
    }
    let source_pkg = format!("linux-source-{}.{}", series[0], series[1]);
    if dpkg_version(&source_pkg).as_deref() != Some(version.as_str()) {
        eprintln!("xtask: {image} is {version}: installing {source_pkg}={version}");
        deps::ensure_apt(&[&format!("{source_pkg}={version}")]).with_context(|| {
            format!("installing {source_pkg}={version}, the source of {image}; is that version still in the archive?")
        })?;
    }
    let tarball = PathBuf::from(format!("/usr/src/{source_pkg}.tar.xz"));
    if !tarball.is_file() {
        bail!(
            "{source_pkg} {version} is installed but {} is missing",
            tarball.display()
        );
    }
    Ok(tarball)
}

fn dpkg_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", package])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.strip_prefix("install ok installed ")?;
    out.status.success().then(|| rest.trim().to_owned())
}

/// `cargo build -p klive-build`; returns the binary.
pub fn build_tool(root: &Path) -> Result<PathBuf> {
    crate::run(crate::cargo(&["build", "-q", "-p", "klive-build"]))
        .context("building klive-build failed")?;
    let bin = target_dir(root).join("debug/klive-build");
    if !bin.is_file() {
        bail!("cargo built klive-build but {} is missing", bin.display());
    }
    Ok(bin)
}

pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// What one case ended with.
#[derive(Debug)]
pub struct Outcome {
    pub case: &'static str,
    /// The module, for `Expect::Module` cases.
    pub module: Option<PathBuf>,
    pub seconds: f64,
    pub cached: bool,
}

/// Serialises users of the prepared tree (diffs are applied to it in place).
pub fn lock_cache(root: &Path) -> Result<fs::File> {
    let dir = target_dir(root);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("klive-build-cache.lock");
    let file = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// One klive-build run.
#[derive(Debug)]
pub struct Run {
    pub seconds: f64,
    pub status: std::process::ExitStatus,
    /// stdout and stderr.
    pub text: String,
}

impl Run {
    /// A line `  <key>: <value>` of the report's timings, e.g. `compile original`.
    pub fn timing(&self, key: &str) -> String {
        let prefix = format!("  {key}: ");
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or("?")
            .to_owned()
    }
}

/// Runs klive-build once for `case` into `out` with the tree cache `cache`.
pub fn build_once(
    root: &Path,
    tool: &Path,
    source: &Path,
    target: &Target<'_>,
    case: &Case,
    out: &Path,
    cache: &Path,
) -> Result<Run> {
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    let mut cmd = Command::new(tool);
    cmd.arg("--source")
        .arg(source)
        .arg("--config")
        .arg(target.build_dir.join(".config"))
        .arg("--kbuild")
        .arg(target.build_dir)
        .arg("--kallsyms")
        .arg(target.kallsyms)
        .args(["--name", case.module])
        .args(["--level", &case.level.to_string()])
        .args(["--build-id", target.build_id])
        .args(["--release", target.release])
        .args(["--fix", "CVE-0000-0000:low:klive-build test patch"])
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache);
    for d in case.diffs {
        cmd.arg("--patch").arg(root.join("tests/build").join(d));
    }
    let output = cmd
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    fs::write(out.join("output.txt"), &text)?;
    Ok(Run {
        seconds: started.elapsed().as_secs_f64(),
        status: output.status,
        text,
    })
}

/// Builds every case (cached), checks the refusals, and copies the modules plus the Debian
/// modules the scenarios need into `guest_modules` (the guest's `/modules`).
pub fn build_into(root: &Path, target: &Target<'_>, guest_modules: &Path) -> Result<Vec<Outcome>> {
    let source = ensure_source(target.release)?;
    let tool = build_tool(root)?;
    let _lock = lock_cache(root)?;
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for case in CASES {
        match run_case(root, &tool, &source, target, case) {
            Ok(o) => {
                eprintln!(
                    "xtask: klive-build case {}: ok ({})",
                    o.case,
                    if o.cached {
                        "cached".to_owned()
                    } else {
                        format!("{:.1} s", o.seconds)
                    }
                );
                outcomes.push(o);
            }
            Err(e) => {
                eprintln!("xtask: klive-build case {}: FAILED: {e:#}", case.name);
                failures.push(format!("{}: {e:#}", case.name));
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "klive-build tests failed:\n  {}\n(outputs in {})",
            failures.join("\n  "),
            target_dir(root).join("klive-build-tests").display()
        );
    }
    for o in &outcomes {
        if let Some(ko) = &o.module {
            let name = ko.file_name().context("module path without a name")?;
            fs::copy(ko, guest_modules.join(name))
                .with_context(|| format!("copying {} into the guest", ko.display()))?;
        }
    }
    for name in GUEST_MODULES {
        let ko = find_module(target.modules_dir, name)?;
        fs::copy(&ko, guest_modules.join(format!("{name}.ko")))
            .with_context(|| format!("copying {} into the guest", ko.display()))?;
    }
    Ok(outcomes)
}

/// `/lib/modules/<release>/kernel/.../<name>.ko` (uncompressed, as Debian 12 ships them).
fn find_module(modules_dir: &Path, name: &str) -> Result<PathBuf> {
    let dep = modules_dir.join("modules.dep");
    let text = fs::read_to_string(&dep).with_context(|| format!("reading {}", dep.display()))?;
    let want = format!("/{name}.ko");
    let rel = text
        .lines()
        .filter_map(|l| l.split(':').next())
        .find(|p| p.ends_with(&want) || p == &&want[1..])
        .with_context(|| {
            format!(
                "module {name} (uncompressed .ko) is not in {}",
                dep.display()
            )
        })?;
    Ok(modules_dir.join(rel))
}

fn run_case(
    root: &Path,
    tool: &Path,
    source: &Path,
    target: &Target<'_>,
    case: &Case,
) -> Result<Outcome> {
    let out = target_dir(root).join("klive-build-tests").join(case.name);
    let ko = out.join(format!("{}.ko", case.module));
    let stamp = out.join("inputs.hash");
    let key = inputs_hash(root, tool, source, target, case)?;
    let done = fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == key);
    if done && (case.expect != Expect::Module || ko.is_file()) {
        return Ok(Outcome {
            case: case.name,
            module: (case.expect == Expect::Module).then_some(ko),
            seconds: 0.0,
            cached: true,
        });
    }
    let run = build_once(
        root,
        tool,
        source,
        target,
        case,
        &out,
        &target_dir(root).join("klive-build-cache"),
    )?;
    let (seconds, text, status) = (run.seconds, run.text, run.status);
    let code = status.code();
    let tail = || -> String {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    match case.expect {
        Expect::Module => {
            if !status.success() {
                bail!("klive-build exited with {status}:\n{}", tail());
            }
            check_tags(&ko, case, target)?;
        }
        Expect::Refused(why) | Expect::NothingToPatch(why) => {
            let want = if matches!(case.expect, Expect::Refused(_)) {
                EXIT_REFUSED
            } else {
                EXIT_NOTHING_TO_PATCH
            };
            if code != Some(want) {
                bail!(
                    "klive-build exited with {status} instead of {want}:\n{}",
                    tail()
                );
            }
            if !text.contains(why) {
                bail!("the output does not say {why:?}:\n{}", tail());
            }
            if ko.exists() {
                bail!("{} was written although the diff was refused", ko.display());
            }
        }
    }
    fs::write(&stamp, format!("{key}\n"))?;
    Ok(Outcome {
        case: case.name,
        module: (case.expect == Expect::Module).then_some(ko),
        seconds,
        cached: false,
    })
}

/// The module carries what `klive apply` checks: name, level, target build-id, release.
fn check_tags(ko: &Path, case: &Case, target: &Target<'_>) -> Result<()> {
    let bytes = fs::read(ko).with_context(|| format!("klive-build wrote no {}", ko.display()))?;
    let want = [
        format!("name={}", case.module),
        format!("klive_level={}", case.level),
        format!("version={}", case.level),
        format!("klive_build_id={}", target.build_id),
        format!("vermagic={} ", target.release),
        "livepatch=Y".to_owned(),
    ];
    for w in &want {
        let mut needle = w.as_bytes().to_vec();
        if !w.ends_with(' ') {
            needle.push(0);
        }
        if !bytes.windows(needle.len()).any(|x| x == needle.as_slice()) {
            bail!("{} lacks the modinfo tag {w:?}", ko.display());
        }
    }
    Ok(())
}

fn inputs_hash(
    root: &Path,
    tool: &Path,
    source: &Path,
    target: &Target<'_>,
    case: &Case,
) -> Result<String> {
    let mut h = DefaultHasher::new();
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    read(tool)?.hash(&mut h);
    read(target.kallsyms)?.hash(&mut h);
    read(&target.build_dir.join(".config"))?.hash(&mut h);
    for d in case.diffs {
        read(&root.join("tests/build").join(d))?.hash(&mut h);
    }
    let meta = fs::metadata(source).with_context(|| format!("reading {}", source.display()))?;
    meta.len().hash(&mut h);
    meta.modified().ok().hash(&mut h);
    (
        target.release,
        target.build_id,
        case.module,
        case.level,
        case.diffs,
    )
        .hash(&mut h);
    format!("{:?}", case.expect).hash(&mut h);
    Ok(format!("{:016x}", h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_consistent() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/build");
        let mut names = std::collections::BTreeSet::new();
        for c in CASES {
            assert!(names.insert(c.module), "duplicate module {}", c.module);
            assert!(c.module.starts_with("klive_"));
            for d in c.diffs {
                assert!(root.join(d).is_file(), "{d} missing");
            }
        }
        let levels: Vec<u32> = CASES
            .iter()
            .filter(|c| c.expect == Expect::Module)
            .map(|c| c.level)
            .collect();
        assert!(levels.windows(2).all(|w| w[0] < w[1]), "{levels:?}");
    }
}
