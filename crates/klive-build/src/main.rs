//! The `klive-build` command: the command line turned into one [`klive_build::Job`] per
//! kernel, built in a staging directory and moved into place only when every kernel built.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use klive_build::debian;
use klive_build::{Job, Stop, Symbols, Target};

#[derive(Parser, Debug)]
#[command(
    name = "klive-build",
    about = "Build a klive livepatch module from kernel source diffs",
    long_about = "Build a klive livepatch module from kernel source diffs, compiling only the \
translation units the diffs touch.\n\n\
Debian kernels are named by ABI (--kernel 6.1.0-57-amd64): image, headers, kbuild, source and \
(without --kallsyms) the -dbg vmlinux are fetched from Debian's archive with `apt-get download` \
into the cache and unpacked there; nothing is installed and nothing of the build machine's \
kernel is read. Other kernels are described with --source, --config, --kbuild, --kallsyms, \
--build-id and --release (which also override single parts of one --kernel).\n\n\
Exit status: 0 module written, 1 error, 2 refused (the change cannot be live-patched safely, or \
the kernel cannot load livepatches), 3 nothing to patch. Nothing is written unless every \
kernel's module was built.",
    after_help = "Example: klive-build --kernel 6.1.0-57-amd64 --kernel 6.12.117+deb12-amd64 \
--patch fix.patch --out out/ --name klive_fix --level 3 --fix CVE-2024-1234:high:'proc: fix'\n\
List Debian kernel names: apt-cache search --names-only '^linux-image-[0-9].*-amd64(-unsigned)?$'"
)]
struct Cli {
    /// Debian kernel ABI (`uname -r` of the target), e.g. 6.1.0-57-amd64,
    /// 6.1.0-57-cloud-amd64 or 6.12.117+deb12-amd64. Repeat to build one module per kernel
    /// into OUT/<ABI>/. Without --kernel, give all of --source --config --kbuild --kallsyms
    /// --build-id --release and the module goes into OUT itself.
    #[arg(long = "kernel", value_name = "ABI")]
    kernels: Vec<String>,
    /// A unified diff (-p1, a/ and b/ prefixes) against the kernel source; repeat to apply
    /// several in order (after the series' and the base's).
    #[arg(
        long = "patch",
        value_name = "FILE",
        required_unless_present_any = ["series", "base"]
    )]
    patches: Vec<PathBuf>,
    /// A series file: one diff per line with its fix (PATCH CVE SEVERITY SUMMARY, or
    /// PATCH - for none), in the order they apply; the level carries all of them.
    #[arg(long, value_name = "FILE")]
    series: Option<PathBuf>,
    /// The previous level: its manifest.json, or the output directory of the build that made
    /// it (with one subdirectory per kernel, as several --kernel write). This level carries
    /// every fix of that level (from the series record beside the manifest) plus the new
    /// ones, as one replace-mode module; its level is one more unless --level says otherwise.
    #[arg(long, value_name = "MANIFEST|DIR")]
    base: Option<PathBuf>,
    /// Leaves out every diff of this fix (CVE id) that the base or series carries.
    #[arg(long = "drop", value_name = "CVE")]
    drops: Vec<String>,
    /// Output directory: OUT/<ABI>/NAME.ko, manifest.json and report.txt per --kernel.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Module name: klive_ followed by [a-z0-9_].
    #[arg(long, value_name = "N", default_value = "klive_patch")]
    name: String,
    /// Patch level of the module (cumulative: level N carries every fix below it)
    /// [default: the base level + 1 with --base, else 1].
    #[arg(long, value_name = "N")]
    level: Option<u32>,
    /// The fix the --patch diffs carry, for the manifest: CVE-ID:severity:summary, severity
    /// low, medium, high or critical; one for all of them, or one per --patch in order.
    #[arg(long = "fix", value_name = "CVE:SEV:SUMMARY")]
    fixes: Vec<String>,
    /// A /proc/kallsyms dump taken as root on a host running the target kernel, used for
    /// vmlinux symbol positions instead of fetching the -dbg package (about 1 GB). With
    /// several --kernel, give it as ABI=FILE, once per kernel it is for.
    #[arg(long = "kallsyms", value_name = "[ABI=]FILE")]
    kallsyms: Vec<String>,
    /// Cache of fetched packages, unpacked kernels and prepared trees [default:
    /// $XDG_CACHE_HOME/klive-build, else $HOME/.cache/klive-build].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Parallel make jobs for preparing a kernel tree.
    #[arg(long, value_name = "N", default_value_t = 2)]
    jobs: u32,
    /// Override: the kernel source, a directory or a tarball (linux-source-*.tar.xz).
    #[arg(long, value_name = "PATH")]
    source: Option<PathBuf>,
    /// Override: the kernel's exact .config (its headers package's, not /boot/config-*).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override: the kernel's kbuild directory for external modules, with Module.symvers
    /// (/lib/modules/<release>/build).
    #[arg(long, value_name = "DIR")]
    kbuild: Option<PathBuf>,
    /// Override: the kernel's own modules, for patches to a module [default without
    /// --kernel: /lib/modules/<release>].
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// Override: the kernel's GNU build-id (hex, /sys/kernel/notes).
    #[arg(long, value_name = "HEX")]
    build_id: Option<String>,
    /// Override: the kernel's release (`uname -r`).
    #[arg(long, value_name = "RELEASE")]
    release: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("klive-build: {e:#}");
        let code = e.downcast_ref::<Stop>().map_or(1, Stop::exit_code);
        std::process::exit(code);
    }
}

fn run(cli: &Cli) -> Result<()> {
    let cache = match &cli.cache {
        Some(c) => c.clone(),
        None => debian::default_cache()
            .context("no cache directory: set XDG_CACHE_HOME or HOME, or pass --cache DIR")?,
    };
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let stage = cli.out.join(format!(".klive-build-{}", std::process::id()));
    let result = build_all(cli, &cache, &stage);
    let _ = std::fs::remove_dir_all(&stage);
    result
}

/// Builds every kernel's module under `stage`, then moves the results into OUT.
fn build_all(cli: &Cli, cache: &Path, stage: &Path) -> Result<()> {
    let targets = targets(cli, cache)?;
    let mut built = Vec::new();
    for (dir, target) in targets {
        let (out, dest) = match &dir {
            Some(abi) => (stage.join(abi), cli.out.join(abi)),
            None => (stage.to_owned(), cli.out.clone()),
        };
        let job = Job {
            target,
            patches: cli.patches.clone(),
            series: cli.series.clone(),
            base: base_for(cli, dir.as_deref())?,
            drops: cli.drops.clone(),
            name: cli.name.clone(),
            level: cli.level,
            fixes: cli.fixes.clone(),
            out,
            dest,
            cache: cache.to_owned(),
            jobs: cli.jobs,
        };
        if let Some(abi) = &dir {
            eprintln!("klive-build: == {abi}");
        }
        klive_build::build(&job).with_context(|| match &dir {
            Some(abi) => format!("building for {abi}"),
            None => format!("building for {}", job.target.release),
        })?;
        built.push((job.out, job.dest));
    }
    for (from, to) in built {
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        let old = to.join(klive_build::PATCH_DIR);
        if old.exists() {
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("removing the old series record {}", old.display()))?;
        }
        for f in [
            format!("{}.ko", cli.name),
            "manifest.json".into(),
            "report.txt".into(),
            klive_build::RECORD.into(),
            klive_build::PATCH_DIR.into(),
        ] {
            std::fs::rename(from.join(&f), to.join(&f))
                .with_context(|| format!("moving {f} into {}", to.display()))?;
        }
        eprintln!(
            "klive-build: wrote {}",
            to.join(format!("{}.ko", cli.name)).display()
        );
    }
    Ok(())
}

/// The kernels to build for: one per --kernel (named by ABI), or the one the explicit flags
/// describe.
fn targets(cli: &Cli, cache: &Path) -> Result<Vec<(Option<String>, Target)>> {
    let kallsyms = kallsyms_by_kernel(cli)?;
    let overrides = cli.source.is_some()
        || cli.config.is_some()
        || cli.kbuild.is_some()
        || cli.modules.is_some()
        || cli.build_id.is_some()
        || cli.release.is_some();
    if cli.kernels.is_empty() {
        let missing: Vec<&str> = [
            ("--source", cli.source.is_none()),
            ("--config", cli.config.is_none()),
            ("--kbuild", cli.kbuild.is_none()),
            ("--kallsyms", kallsyms.is_empty()),
            ("--build-id", cli.build_id.is_none()),
            ("--release", cli.release.is_none()),
        ]
        .into_iter()
        .filter_map(|(f, m)| m.then_some(f))
        .collect();
        if !missing.is_empty() {
            bail!(
                "name a Debian kernel with --kernel ABI, or describe the kernel with all of --source --config --kbuild --kallsyms --build-id --release (missing: {})",
                missing.join(" ")
            );
        }
        let release = cli.release.clone().unwrap_or_default();
        let target = Target {
            modules_dir: cli
                .modules
                .clone()
                .unwrap_or_else(|| Path::new("/lib/modules").join(&release)),
            release,
            version: None,
            build_id: cli.build_id.clone().unwrap_or_default(),
            source: cli.source.clone().unwrap_or_default(),
            source_sha256: None,
            config: cli.config.clone().unwrap_or_default(),
            kbuild: cli.kbuild.clone().unwrap_or_default(),
            symbols: Symbols::Kallsyms(kallsyms[0].1.clone()),
        };
        return Ok(vec![(None, target)]);
    }
    if cli.base.as_ref().is_some_and(|b| b.is_file()) && cli.kernels.len() > 1 {
        bail!(
            "--base names one kernel's manifest; with several --kernel give the previous level's output directory, which has one directory per kernel"
        );
    }
    if overrides && cli.kernels.len() > 1 {
        bail!(
            "--source --config --kbuild --modules --build-id --release override parts of one kernel; give them with a single --kernel"
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for abi in &cli.kernels {
        if !seen.insert(abi) {
            bail!("--kernel {abi} is given twice");
        }
        let kernel = debian::Kernel::fetch(abi, cache)?;
        let config = cli.config.clone().unwrap_or(kernel.config.clone());
        // Refused before the source is fetched: such a kernel can never load a patch.
        if cli.config.is_none() && !kernel.livepatch_enabled()? {
            return Err(Stop::Refused(format!(
                "{abi} is built without CONFIG_LIVEPATCH=y (see {}), so it cannot load a livepatch; build for a kernel flavour that has it",
                kernel.config.display()
            ))
            .into());
        }
        let (source, source_sha256) = match &cli.source {
            Some(s) => (s.clone(), None),
            None => {
                let s = kernel.source(cache)?;
                (s.tarball, Some(s.sha256))
            }
        };
        let symbols = match kallsyms
            .iter()
            .find(|(k, _)| k.is_none() || k.as_ref() == Some(abi))
        {
            Some((_, f)) => Symbols::Kallsyms(f.clone()),
            None => Symbols::DebianDbg(Box::new(kernel.clone())),
        };
        let target = Target {
            release: cli.release.clone().unwrap_or(kernel.release.clone()),
            version: Some(kernel.version.clone()),
            build_id: cli.build_id.clone().unwrap_or(kernel.build_id.clone()),
            source,
            source_sha256,
            config,
            kbuild: cli.kbuild.clone().unwrap_or(kernel.headers_dir.clone()),
            symbols,
            modules_dir: cli.modules.clone().unwrap_or(kernel.modules_dir.clone()),
        };
        out.push((Some(abi.clone()), target));
    }
    Ok(out)
}

/// The base manifest of one kernel's build: --base itself when it is a file, else the
/// kernel's directory in the base output directory (or the directory itself).
fn base_for(cli: &Cli, abi: Option<&str>) -> Result<Option<PathBuf>> {
    let Some(base) = &cli.base else {
        return Ok(None);
    };
    if base.is_file() {
        return Ok(Some(base.clone()));
    }
    let candidates = [
        abi.map(|a| base.join(a).join("manifest.json")),
        Some(base.join("manifest.json")),
    ];
    match candidates.into_iter().flatten().find(|p| p.is_file()) {
        Some(p) => Ok(Some(p)),
        None => bail!(
            "--base {}: no manifest.json there{}; give the previous level's manifest or output directory",
            base.display(),
            abi.map(|a| format!(" or in {a}/")).unwrap_or_default()
        ),
    }
}

/// The --kallsyms values as (kernel, file): `ABI=FILE` for one kernel, a bare `FILE` for
/// the only one.
fn kallsyms_by_kernel(cli: &Cli) -> Result<Vec<(Option<String>, PathBuf)>> {
    let mut out = Vec::new();
    for v in &cli.kallsyms {
        let named = v
            .split_once('=')
            .filter(|(abi, _)| cli.kernels.iter().any(|k| k == abi));
        match named {
            Some((abi, file)) => out.push((Some(abi.to_owned()), PathBuf::from(file))),
            None if cli.kernels.len() > 1 => bail!(
                "--kallsyms {v}: with several --kernel, say which kernel the dump is for: --kallsyms ABI=FILE"
            ),
            None => out.push((None, PathBuf::from(v))),
        }
    }
    if out.len() > 1 && out.iter().any(|(k, _)| k.is_none()) {
        bail!("--kallsyms is given more than once for the same kernel");
    }
    Ok(out)
}
