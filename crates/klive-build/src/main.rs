//! `klive-build`: builds a livepatch module from kernel source diffs by compiling only the
//! translation units the diffs touch, diffing the objects (klive-elf) and linking the result
//! through the target's kbuild.

mod patches;
mod tree;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use klive_elf::emit::{Emitted, emit};
use klive_elf::symbols::{Exports, Resolver, SymbolTable};
use klive_format::release::{Fix, ModuleDigest, ReleaseManifest, Severity, TargetKernel};
use klive_format::{BuildId, PatchLevel};

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
    /// Unified diffs (-p1), applied in order.
    #[arg(long = "patch", required = true)]
    patches: Vec<PathBuf>,
    /// Module name (klive_...).
    #[arg(long)]
    name: String,
    #[arg(long)]
    level: u32,
    /// GNU build-id of the target kernel (hex).
    #[arg(long)]
    build_id: String,
    /// `uname -r` of the target.
    #[arg(long)]
    release: String,
    /// Fixes as CVE-ID:severity:summary.
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

fn parse_fix(s: &str) -> Result<Fix> {
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
    Ok(Fix {
        cve: cve.to_owned(),
        severity,
        cvss: None,
        summary: summary.to_owned(),
        reference: None,
    })
}

/// What kbuild says about one object: built-in (`vmlinux`) or the module it belongs to.
fn klp_object_of(cmd_file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(cmd_file)
        .with_context(|| format!("reading {}", cmd_file.display()))?;
    if !text.contains("-DMODULE") {
        return Ok("vmlinux".into());
    }
    let name = text
        .split("-DKBUILD_MODNAME=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(|r| {
            r.trim_matches(|c| c == '\'' || c == '"' || c == '\\')
                .to_owned()
        })
        .context("module object without KBUILD_MODNAME in its .cmd file")?;
    Ok(name.replace('-', "_"))
}

fn compile(root: &Path, tus: &[String], dest: &Path) -> Result<f64> {
    for tu in tus {
        let _ = std::fs::remove_file(root.join(tu));
    }
    let start = Instant::now();
    tree::run(
        tree::make(root)
            .arg("KCFLAGS=-ffunction-sections -fdata-sections")
            .args(tus),
        "compiling the touched files",
    )?;
    let secs = start.elapsed().as_secs_f64();
    for tu in tus {
        let to = dest.join(tu.replace('/', "__"));
        std::fs::copy(root.join(tu), &to)
            .with_context(|| format!("copying {tu} to {}", to.display()))?;
    }
    Ok(secs)
}

fn find_module_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_module_file(&p, name) {
                return Some(f);
            }
        } else if p
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".ko"))
            .is_some_and(|f| f.replace('-', "_") == name)
        {
            return Some(p);
        }
    }
    None
}

fn build(cli: &Cli) -> Result<()> {
    let total = Instant::now();
    if !klive_format::release::is_module_name(&cli.name) {
        bail!(
            "module name {:?} must start with klive_ and use [a-z0-9_]",
            cli.name
        );
    }
    let level = PatchLevel::new(cli.level).map_err(|e| anyhow::anyhow!("{e}"))?;
    let build_id: BuildId = cli.build_id.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let fixes: Vec<Fix> = cli
        .fixes
        .iter()
        .map(|f| parse_fix(f))
        .collect::<Result<_>>()?;
    let mut files = Vec::new();
    for p in &cli.patches {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        files.extend(patches::touched_files(&text));
    }
    files.sort();
    files.dedup();
    let tus = patches::translation_units(&files)?;

    let tree = tree::prepare(&cli.source, &cli.config, &cli.cache, cli.jobs)?;
    let root = &tree.root;
    let work = cli.out.join("work");
    let (orig_dir, patched_dir, kb) =
        (work.join("orig"), work.join("patched"), work.join("kbuild"));
    for d in [&orig_dir, &patched_dir, &kb] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let orig_secs = compile(root, &tus, &orig_dir)?;
    let mut objects = BTreeMap::new();
    for tu in &tus {
        let cmd = root.join(tu).with_file_name(format!(
            ".{}.cmd",
            Path::new(tu)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        ));
        objects.insert(tu.clone(), klp_object_of(&cmd)?);
    }
    patches::apply_all(root, &cli.patches)?;
    let patched = compile(root, &tus, &patched_dir);
    patches::revert_all(root, &cli.patches);
    let patched_secs = patched?;

    let gates: std::collections::BTreeSet<&String> = objects.values().collect();
    if gates.len() != 1 {
        bail!(
            "the diffs touch objects of several klp objects ({:?}); build one livepatch per object for now",
            gates
        );
    }
    let gate = gates.into_iter().next().expect("one gate").clone();

    let symvers_path = cli.kbuild.join("Module.symvers");
    let exports = Exports::from_module_symvers(
        &std::fs::read_to_string(&symvers_path)
            .with_context(|| format!("reading {}", symvers_path.display()))?,
    );
    let table = if gate == "vmlinux" {
        let text = std::fs::read_to_string(&cli.kallsyms)
            .with_context(|| format!("reading {}", cli.kallsyms.display()))?;
        SymbolTable::from_kallsyms(&text, "vmlinux")
    } else {
        let dir = Path::new("/lib/modules").join(&cli.release);
        let ko = find_module_file(&dir, &gate)
            .with_context(|| format!("module {gate}.ko not found under {}", dir.display()))?;
        SymbolTable::from_module_object(&std::fs::read(&ko)?, &ko.to_string_lossy())?
    };
    let resolver = Resolver {
        object: gate.clone(),
        table: &table,
        exports: &exports,
    };

    let mut report = String::new();
    let diff_start = Instant::now();
    let mut emitted: Vec<(String, Emitted)> = Vec::new();
    let mut refused = false;
    for (n, tu) in tus.iter().enumerate() {
        let file = tu.replace('/', "__");
        let o = std::fs::read(orig_dir.join(&file))?;
        let p = std::fs::read(patched_dir.join(&file))?;
        let a = klive_elf::analyze(&o, &p).with_context(|| format!("comparing {tu}"))?;
        let _ = writeln!(report, "== {tu} (klp object {gate})");
        report += &a.report.render();
        if !a.report.refusals.is_empty() {
            refused = true;
            continue;
        }
        if a.changed_funcs.is_empty() && a.included.is_empty() {
            continue;
        }
        let e =
            emit(&p, &a, &resolver, &format!("{n}")).with_context(|| format!("emitting {tu}"))?;
        for s in &e.klp_symbols {
            let _ = writeln!(report, "  klp symbol {s}");
        }
        for (s, k) in &e.special_entries {
            let _ = writeln!(report, "  kept {k} {s} entries");
        }
        emitted.push((tu.clone(), e));
    }
    let diff_secs = diff_start.elapsed().as_secs_f64();
    if refused {
        eprint!("{report}");
        return Err(Stop::Refused(
            "the diffs change things a livepatch cannot carry (see \"refused\" above); nothing was emitted".into(),
        )
        .into());
    }
    let funcs: Vec<_> = emitted.iter().flat_map(|(_, e)| e.funcs.clone()).collect();
    if funcs.is_empty() {
        eprint!("{report}");
        return Err(Stop::NothingToPatch(
            "the diffs change no function (comments, whitespace or line numbers only); nothing was emitted".into(),
        )
        .into());
    }

    // The stub with the klp tables, linked by kbuild.
    let mut stub = String::from(
        "// Generated by klive-build.\n#include <linux/module.h>\n#include <linux/kernel.h>\n#include <linux/livepatch.h>\n\n",
    );
    for f in &funcs {
        let _ = writeln!(stub, "extern void {}(void);", f.new_symbol);
    }
    stub += "\nstatic struct klp_func funcs[] = {\n";
    for f in &funcs {
        let _ = writeln!(
            stub,
            "\t{{ .old_name = \"{}\", .new_func = {}, .old_sympos = {} }},",
            f.old_name, f.new_symbol, f.sympos
        );
    }
    stub += "\t{ }\n};\n\nstatic struct klp_object objs[] = {\n";
    let objname = if gate == "vmlinux" {
        "NULL".to_owned()
    } else {
        format!("\"{gate}\"")
    };
    let _ = writeln!(
        stub,
        "\t{{ .name = {objname}, .funcs = funcs }},\n\t{{ }}\n}};"
    );
    let fix_ids: Vec<&str> = fixes.iter().map(|f| f.cve.as_str()).collect();
    let _ = write!(
        stub,
        "\nstatic struct klp_patch patch = {{\n\t.mod = THIS_MODULE,\n\t.objs = objs,\n\t.replace = true,\n}};\n\n\
static int __init klive_init(void)\n{{\n\treturn klp_enable_patch(&patch);\n}}\n\n\
static void __exit klive_exit(void)\n{{\n}}\n\n\
module_init(klive_init);\nmodule_exit(klive_exit);\nMODULE_LICENSE(\"GPL\");\nMODULE_INFO(livepatch, \"Y\");\n\
MODULE_VERSION(\"{level}\");\nMODULE_INFO({}, \"{level}\");\nMODULE_INFO({}, \"{build_id}\");\nMODULE_INFO({}, \"{}\");\n",
        klive_format::modinfo::LEVEL,
        klive_format::modinfo::BUILD_ID,
        klive_format::modinfo::FIXES,
        fix_ids.join(","),
    );
    std::fs::write(kb.join("stub.c"), stub)?;
    let mut objs = vec!["stub.o".to_owned()];
    for (n, (_, e)) in emitted.iter().enumerate() {
        let name = format!("patch{n}.o");
        std::fs::write(kb.join(&name), &e.object)?;
        // modpost reads a .cmd file for every object it is given.
        std::fs::write(kb.join(format!(".{name}.cmd")), "")?;
        objs.push(name);
    }
    std::fs::write(
        kb.join("Kbuild"),
        format!("obj-m := {0}.o\n{0}-y := {1}\n", cli.name, objs.join(" ")),
    )?;
    let link_start = Instant::now();
    tree::run(
        Command::new("make")
            .arg("-C")
            .arg(&cli.kbuild)
            .arg(format!("M={}", kb.canonicalize()?.display()))
            .arg("modules"),
        "linking the livepatch module with kbuild",
    )?;
    let link_secs = link_start.elapsed().as_secs_f64();
    let linked = std::fs::read(kb.join(format!("{}.ko", cli.name)))?;
    let (fixed, fix) = klive_elf::klp::fixup_module(&linked, &gate)?;
    klive_elf::klp::verify_module(&fixed)?;
    std::fs::create_dir_all(&cli.out)?;
    let ko_name = format!("{}.ko", cli.name);
    std::fs::write(cli.out.join(&ko_name), &fixed)?;

    let manifest = ReleaseManifest {
        format: klive_format::release::MANIFEST_FORMAT,
        module_name: cli.name.clone(),
        level,
        kernel: TargetKernel {
            build_id,
            release: cli.release.clone(),
            version: None,
            distro: None,
            arch: "x86_64".into(),
        },
        module: ModuleDigest {
            file: ko_name.clone(),
            sha256: klive_format::digest::sha256_hex(&fixed),
            size: fixed.len() as u64,
        },
        fixes,
    };
    manifest.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(
        cli.out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    let _ = writeln!(report, "== module {ko_name} ({} bytes)", fixed.len());
    for f in &funcs {
        let _ = writeln!(
            report,
            "  patches {},{} -> {}",
            f.old_name, f.sympos, f.new_symbol
        );
    }
    for (s, n) in &fix.sections {
        let _ = writeln!(report, "  {s}: {n} relocations");
    }
    let _ = writeln!(report, "== timings");
    match tree.prepare_secs {
        Some(s) => {
            let _ = writeln!(report, "  prepare tree: {s:.1} s (cold)");
        }
        None => {
            let _ = writeln!(report, "  prepare tree: cached");
        }
    }
    let _ = writeln!(
        report,
        "  compile original: {orig_secs:.1} s\n  compile patched: {patched_secs:.1} s\n  diff+emit: {diff_secs:.2} s\n  kbuild link: {link_secs:.1} s\n  total: {:.1} s",
        total.elapsed().as_secs_f64()
    );
    std::fs::write(cli.out.join("report.txt"), &report)?;
    print!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixes_parse_and_bad_severity_is_named() {
        let f = parse_fix("CVE-2024-1234:high:proc: fix cmdline").unwrap();
        assert_eq!(f.summary, "proc: fix cmdline");
        assert!(parse_fix("CVE-2024-1234:urgent:x").is_err());
    }

    #[test]
    fn cmd_files_tell_modules_from_builtins() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join(".x.o.cmd");
        std::fs::write(
            &m,
            "cmd := gcc -DMODULE -DKBUILD_BASENAME='\"x\"' -DKBUILD_MODNAME='\"xfs\"' -c",
        )
        .unwrap();
        assert_eq!(klp_object_of(&m).unwrap(), "xfs");
        std::fs::write(&m, "cmd := gcc -DKBUILD_MODNAME='\"proc\"' -c").unwrap();
        assert_eq!(klp_object_of(&m).unwrap(), "vmlinux");
    }
}
