//! klive-build's real-kernel tests: the diffs of `tests/build/` are built with `klive-build
//! --kernel <the VM kernel's ABI>` (image, headers, kbuild and linux-source fetched from
//! Debian's archive into `target/klive-build-cache/`, nothing installed) with the kallsyms dump
//! of the booted guest. The modules go into the
//! guest's `/modules` for the `tests/vm/scenarios/phase2/7?-build-*.sh` scenarios, which load
//! them with `klive apply` and check the change from userspace; the diffs that must not
//! become a module are checked here, on the host (exit status and reason).
//!
//! The cases run for every kernel line the VM tests boot (6.1 and 6.12); a diff with a variant
//! in `tests/build/<series>/` uses it for that line ([`diff_path`]).
//!
//! Results are cached in `target/klive-build-tests/<release>/<case>/` by a hash of everything that goes
//! in (the klive-build binary, the diffs, the kallsyms dump, the kernel), so a second
//! `cargo xtask test` costs nothing; the prepared tree is cached in `target/klive-build-cache/`
//! by source and config (about 60 s to prepare from the tarball, about 10 s per case after).
//!
//! [`check_sympos`] also proves that the vmlinux symbol table klive-build reads from the
//! `-dbg` package puts every duplicated local function at the position the booted kernel's
//! `/proc/kallsyms` does (one 1 GB download per kernel, cached).

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use klive_build::debian;
use klive_elf::symbols::{SymClass, SymbolTable};

use crate::deps;

/// What klive-build needs besides the packages it fetches: tools to prepare a kernel tree. Without
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
    /// The case whose output is this level's base (`klive-build --base`): its fixes and
    /// diffs come first, read from the series record beside its manifest.
    pub base: Option<&'static str>,
    pub expect: Expect,
}

/// The cases; the levels increase in the order the guest applies them.
pub const CASES: &[Case] = &[
    Case {
        name: "cmdline",
        module: "klive_build_cmdline",
        level: 1,
        diffs: &["10-cmdline.patch"],
        base: None,
        expect: Expect::Module,
    },
    Case {
        name: "cumulative",
        module: "klive_build_cumulative",
        level: 2,
        // Level 1 (cmdline) plus the meminfo fix: `--base` reads level 1's series record.
        diffs: &["20-meminfo.patch"],
        base: Some("cmdline"),
        expect: Expect::Module,
    },
    Case {
        name: "meminfo",
        module: "klive_build_meminfo",
        level: 3,
        diffs: &["20-meminfo.patch"],
        base: None,
        expect: Expect::Module,
    },
    Case {
        name: "uname",
        module: "klive_build_uname",
        level: 4,
        diffs: &["30-uname-static-call.patch"],
        base: None,
        expect: Expect::Module,
    },
    Case {
        name: "newfunc",
        module: "klive_build_newfunc",
        level: 5,
        diffs: &["40-new-function-and-global.patch"],
        base: None,
        expect: Expect::Module,
    },
    Case {
        name: "warn",
        module: "klive_build_warn",
        level: 6,
        diffs: &["50-warn-bug-table.patch"],
        base: None,
        expect: Expect::Module,
    },
    Case {
        name: "binfmt",
        module: "klive_build_binfmt",
        level: 7,
        diffs: &["60-module-binfmt-misc.patch"],
        base: None,
        expect: Expect::Module,
    },
    Case {
        name: "refuse-layout",
        module: "klive_build_layout",
        level: 1,
        diffs: &["80-refuse-data-layout.patch"],
        base: None,
        expect: Expect::Refused("acct_parm: 12 -> 16 bytes"),
    },
    Case {
        name: "refuse-init",
        module: "klive_build_init",
        level: 1,
        diffs: &["81-refuse-init.patch"],
        base: None,
        expect: Expect::Refused(".init.text (proc_meminfo_init)"),
    },
    Case {
        name: "refuse-asm",
        module: "klive_build_asm",
        level: 1,
        diffs: &["82-refuse-assembly.patch"],
        base: None,
        expect: Expect::Refused("arch/x86/lib/memcpy_64.S: assembly files cannot be live-patched"),
    },
    Case {
        name: "nothing",
        module: "klive_build_nothing",
        level: 1,
        diffs: &["83-nothing-comment-only.patch"],
        base: None,
        expect: Expect::NothingToPatch("nothing to patch"),
    },
];

/// Debian modules the scenarios load before patching them (case `binfmt`).
pub const GUEST_MODULES: &[&str] = &["binfmt_misc"];

/// The kernel the patches are for.
#[derive(Debug)]
pub struct Target<'a> {
    /// The Debian ABI (`uname -r`): klive-build fetches the kernel by this name.
    pub release: &'a str,
    pub build_id: &'a str,
    /// `/lib/modules/<release>` of the booted kernel (Debian modules for the guest).
    pub modules_dir: &'a Path,
    /// A `/proc/kallsyms` dump of a boot of this kernel, taken as root.
    pub kallsyms: &'a Path,
}

/// Installs the tools klive-build runs to prepare a kernel tree.
pub fn ensure_tools() -> Result<()> {
    deps::ensure_apt(PACKAGES)
}

/// klive-build's cache of fetched packages and prepared trees: `target/klive-build-cache`.
pub fn cache_dir(root: &Path) -> PathBuf {
    target_dir(root).join("klive-build-cache")
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

/// Runs klive-build once for `case` into `out` (the module in `out/<release>/`) with the
/// cache `cache`.
pub fn build_once(
    root: &Path,
    tool: &Path,
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
    cmd.args(["--kernel", target.release])
        .arg("--kallsyms")
        .arg(target.kallsyms)
        .args(["--name", case.module])
        .args(["--level", &case.level.to_string()])
        .args(["--fix", "CVE-0000-0000:low:klive-build test patch"])
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache);
    for d in case.diffs {
        cmd.arg("--patch").arg(diff_path(root, target.release, d));
    }
    if let Some(base) = case.base {
        // The base case's output directory (one subdirectory per kernel).
        cmd.arg("--base").arg(out.with_file_name(base));
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

/// The diff `name` for kernel `release`: `tests/build/<series>/<name>` where the kernel's line
/// has its own variant (a 6.1 diff that does not apply exactly to 6.12), else
/// `tests/build/<name>`.
pub fn diff_path(root: &Path, release: &str, name: &str) -> PathBuf {
    let dir = root.join("tests/build");
    debian::series_of(release)
        .map(|series| dir.join(series).join(name))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| dir.join(name))
}

/// Builds every case (cached), checks the refusals, and copies the modules plus the Debian
/// modules the scenarios need into `guest_modules` (the guest's `/modules`).
pub fn build_into(root: &Path, target: &Target<'_>, guest_modules: &Path) -> Result<Vec<Outcome>> {
    ensure_tools()?;
    let tool = build_tool(root)?;
    let _lock = lock_cache(root)?;
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    if let Err(e) = check_sympos(root, target) {
        eprintln!("xtask: klive-build sympos check: FAILED: {e:#}");
        failures.push(format!("sympos: {e:#}"));
    }
    for case in CASES {
        match run_case(root, &tool, target, case) {
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
        // 6.12 ships its modules as .ko.xz; the guest's insmod wants the plain ELF file.
        let ko = debian::find_module_file(target.modules_dir, name).with_context(|| {
            format!(
                "module {name} is not under {}",
                target.modules_dir.display()
            )
        })?;
        let bytes = debian::read_module(&ko)?;
        fs::write(guest_modules.join(format!("{name}.ko")), bytes)
            .with_context(|| format!("copying {} into the guest", ko.display()))?;
    }
    Ok(outcomes)
}

fn run_case(root: &Path, tool: &Path, target: &Target<'_>, case: &Case) -> Result<Outcome> {
    // One directory per kernel, so the lines' results stay cached side by side.
    let out = target_dir(root)
        .join("klive-build-tests")
        .join(target.release)
        .join(case.name);
    let ko = out.join(target.release).join(format!("{}.ko", case.module));
    let stamp = out.join("inputs.hash");
    let key = inputs_hash(root, tool, target, case)?;
    let done = fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == key);
    if done && (case.expect != Expect::Module || ko.is_file()) {
        return Ok(Outcome {
            case: case.name,
            module: (case.expect == Expect::Module).then_some(ko),
            seconds: 0.0,
            cached: true,
        });
    }
    let run = build_once(root, tool, target, case, &out, &cache_dir(root))?;
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

/// The kernel is named by release and build-id, which pin its packages and source.
fn inputs_hash(root: &Path, tool: &Path, target: &Target<'_>, case: &Case) -> Result<String> {
    let mut h = DefaultHasher::new();
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    read(tool)?.hash(&mut h);
    read(target.kallsyms)?.hash(&mut h);
    for d in case.diffs {
        read(&diff_path(root, target.release, d))?.hash(&mut h);
    }
    (
        target.release,
        target.build_id,
        case.module,
        case.level,
        case.diffs,
        case.base,
    )
        .hash(&mut h);
    if let Some(base) = case.base
        && let Some(b) = CASES.iter().find(|c| c.name == base)
    {
        inputs_hash(root, tool, target, b)?.hash(&mut h);
    }
    format!("{:?}", case.expect).hash(&mut h);
    Ok(format!("{:016x}", h.finish()))
}

/// Checks that the vmlinux table klive-build reads from the `-dbg` package agrees with the
/// booted kernel's `/proc/kallsyms` (see [`compare_sympos`]); cached per build-id.
pub fn check_sympos(root: &Path, target: &Target<'_>) -> Result<()> {
    let stamp = target_dir(root)
        .join("klive-build-tests")
        .join(format!("sympos-{}.ok", target.build_id));
    if stamp.is_file() {
        eprintln!("xtask: klive-build sympos check: ok (cached)");
        return Ok(());
    }
    let started = Instant::now();
    let cache = cache_dir(root);
    let kernel = debian::Kernel::fetch(target.release, &cache)?;
    if kernel.build_id != target.build_id {
        bail!(
            "Debian's {} {} has build-id {} but the booted kernel has {}",
            target.release,
            kernel.version,
            kernel.build_id,
            target.build_id
        );
    }
    let vmlinux = kernel.vmlinux(&cache)?;
    let bytes = fs::read(&vmlinux).with_context(|| format!("reading {}", vmlinux.display()))?;
    let dump = fs::read_to_string(target.kallsyms)
        .with_context(|| format!("reading {}", target.kallsyms.display()))?;
    let summary = compare_sympos(&bytes, &dump)?;
    eprintln!(
        "xtask: klive-build sympos check: ok, {} ({:.1} s)",
        summary,
        started.elapsed().as_secs_f64()
    );
    fs::create_dir_all(stamp.parent().unwrap_or(Path::new(".")))?;
    fs::write(&stamp, format!("{summary}\n"))?;
    Ok(())
}

/// Compares the `-dbg` vmlinux's table with a kallsyms dump of the same kernel: every
/// function name kallsyms lists more than once must have the same number of definitions at
/// the same offsets from `_text` (the dump is moved by KASLR) in the same order, so `sympos`
/// agree; the same for names the vmlinux table lists more than once. Gives a summary.
pub fn compare_sympos(vmlinux: &[u8], kallsyms: &str) -> Result<String> {
    let from_elf = SymbolTable::from_vmlinux(vmlinux, "vmlinux")?;
    let from_dump = SymbolTable::from_kallsyms(kallsyms, "vmlinux");
    let offsets = |t: &SymbolTable| -> Result<std::collections::HashMap<String, Vec<u64>>> {
        let base = t
            .syms
            .iter()
            .find(|s| s.name == "_text")
            .map(|s| s.addr)
            .context("no _text symbol")?;
        let mut by_name: std::collections::HashMap<String, Vec<u64>> = Default::default();
        for s in &t.syms {
            if s.class == SymClass::Text {
                by_name
                    .entry(s.name.clone())
                    .or_default()
                    .push(s.addr.wrapping_sub(base));
            }
        }
        Ok(by_name)
    };
    let (elf, dump) = (offsets(&from_elf)?, offsets(&from_dump)?);
    if dump.values().all(|v| v.iter().all(|&a| a == 0)) {
        bail!("the kallsyms dump has zero addresses: take it as root");
    }
    let mut names: Vec<&String> = dump
        .iter()
        .chain(elf.iter())
        .filter(|(_, v)| v.len() > 1)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    names.dedup();
    let mut wrong = Vec::new();
    let mut defs = 0;
    for n in &names {
        let (a, b) = (elf.get(*n), dump.get(*n));
        if a != b {
            wrong.push(format!(
                "{n}: vmlinux {:x?}, kallsyms {:x?}",
                a.map(|v| &v[..v.len().min(6)]),
                b.map(|v| &v[..v.len().min(6)])
            ));
        } else {
            defs += a.map_or(0, Vec::len);
        }
    }
    if !wrong.is_empty() {
        bail!(
            "{} of {} duplicated function names have other positions in the -dbg vmlinux than in kallsyms:\n  {}",
            wrong.len(),
            names.len(),
            wrong
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    if names.is_empty() {
        bail!("no duplicated function names: is the dump a vmlinux symbol table?");
    }
    Ok(format!(
        "{} duplicated function names ({defs} definitions) at the same positions",
        names.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check of [`check_sympos`] on files at hand, for kernels the VM harness does not
    /// boot: `KLIVE_TEST_VMLINUX=<-dbg vmlinux> KLIVE_TEST_KALLSYMS=<dump> cargo test -p
    /// xtask -- --ignored sympos`.
    #[test]
    #[ignore = "needs a -dbg vmlinux and a kallsyms dump of the same kernel"]
    fn sympos_of_a_dbg_vmlinux_agree_with_a_kallsyms_dump() {
        let path = |k: &str| std::env::var_os(k).unwrap_or_else(|| panic!("set {k}"));
        let vmlinux = fs::read(path("KLIVE_TEST_VMLINUX")).unwrap();
        let dump = fs::read_to_string(path("KLIVE_TEST_KALLSYMS")).unwrap();
        let summary = compare_sympos(&vmlinux, &dump).unwrap();
        eprintln!("{summary}");
    }

    #[test]
    fn a_line_variant_replaces_the_diff_for_that_line_only() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let name = "60-module-binfmt-misc.patch";
        assert_eq!(
            diff_path(&root, "6.12.117+deb12-amd64", name),
            root.join("tests/build/6.12").join(name)
        );
        assert_eq!(
            diff_path(&root, "6.1.0-57-amd64", name),
            root.join("tests/build").join(name)
        );
        assert_eq!(
            diff_path(&root, "6.12.117+deb12-amd64", "10-cmdline.patch"),
            root.join("tests/build/10-cmdline.patch")
        );
    }

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
        // Every variant for a kernel line replaces a diff of the same name.
        for series in ["6.12"] {
            for entry in std::fs::read_dir(root.join(series)).unwrap() {
                let name = entry.unwrap().file_name();
                assert!(
                    root.join(&name).is_file(),
                    "{series}/{name:?} has no 6.1 original"
                );
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
