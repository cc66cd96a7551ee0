//! VM end-to-end harness: builds the static agent and the test livepatch modules, packs an
//! initramfs, boots the installed Debian kernel in QEMU and reads the guest's result lines.
//!
//! A test run boots the guest twice on one fresh disk image: phase 1 runs
//! `tests/vm/scenarios/phase1/*.sh`, phase 2 (a "reboot" keeping the disk) runs
//! `tests/vm/scenarios/phase2/*.sh`. The guest side (init, result protocol, helpers) is in
//! `tests/vm/`; the modules are built from `tests/modules/`. Everything generated goes to
//! `target/vm/`, including the console logs `phase1.log`, `phase2.log`, `demo.log` and
//! `bench.log`. The guest side and the scenario conventions are described in
//! `tests/vm/README.md`.
//!
//! Environment: `KLIVE_VM_ACCEL=tcg|kvm` skips the KVM probe; `KLIVE_VM_TIMEOUT=SECS`
//! changes the wall-clock limit of one boot (default 300); `KLIVE_VM_AGENT=PATH` puts that
//! static binary in the guest as `/bin/klive` instead of building the agent (for iterating
//! on the harness while the agent does not build); `KLIVE_VM_PHASES=1,2,fleet` runs only
//! the listed boots (for iterating: the summary names what it skipped and says PARTIAL RUN;
//! `cargo xtask test` refuses it). Every boot must start each scenario packed for it.

mod bench;
mod fleet;
pub(crate) mod http;
mod initramfs;
mod kallsyms;
mod kernel;
mod modules;
mod qemu;
pub(crate) mod relay;
mod results;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::deps;
use kernel::TargetKernel;
use qemu::{Accel, Boot};
use results::TestResult;

/// Result lines counted from the guest console.
#[derive(Debug, Default)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    /// Boots `KLIVE_VM_PHASES` left out, each with the scenarios it would have run.
    pub skipped: Vec<(String, Vec<String>)>,
}

impl Summary {
    /// `phase2 (10 scenarios), fleet (8 scenarios)`.
    pub fn skipped_text(&self) -> String {
        let boots: Vec<String> = self
            .skipped
            .iter()
            .map(|(boot, names)| format!("{boot} ({} scenarios)", names.len()))
            .collect();
        boots.join(", ")
    }
}

/// The boots of a test run, in order.
const TEST_PHASES: [&str; 3] = ["1", "2", "fleet"];

/// The boots `KLIVE_VM_PHASES` selects (all of them when it is unset); an unknown name is an
/// error, not a boot silently left out.
fn selected_phases(var: Option<&str>) -> Result<Vec<&'static str>> {
    let Some(list) = var else {
        return Ok(TEST_PHASES.to_vec());
    };
    let wanted: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    if let Some(unknown) = wanted.iter().find(|w| !TEST_PHASES.contains(w)) {
        bail!(
            "KLIVE_VM_PHASES={list:?} names the boot {unknown:?}; the boots are {}",
            TEST_PHASES.join(",")
        );
    }
    let phases: Vec<&'static str> = TEST_PHASES
        .into_iter()
        .filter(|p| wanted.contains(p))
        .collect();
    if phases.is_empty() {
        bail!("KLIVE_VM_PHASES={list:?} selects no boot; unset it to run them all");
    }
    Ok(phases)
}

/// Debian packages the harness uses: QEMU, the kernel and its headers (kbuild), busybox for
/// the guest, musl-gcc for C parts of the static agent, mkfs.ext4, make, and xz for reading
/// the build-id out of the kernel image.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "linux-image-amd64",
    "linux-headers-amd64",
    "busybox-static",
    "musl-tools",
    "e2fsprogs",
    "make",
    "xz-utils",
];

const DEFAULT_BOOT_LIMIT: Duration = Duration::from_secs(300);
const DISK_SIZE: u64 = 64 << 20;

/// Everything built for a boot.
#[derive(Debug)]
struct Guest {
    kernel: TargetKernel,
    build_id: String,
    agent: PathBuf,
    peakrss: PathBuf,
    /// The directory packed as the guest's `/modules`.
    modules: PathBuf,
    initrd: PathBuf,
    /// The scenarios packed into `initrd`: what each boot must start.
    scenarios: initramfs::Scenarios,
    work: PathBuf,
    accel: Accel,
    /// Held until the boots are over: runs share `target/vm/` and the machine's cores.
    _lock: fs::File,
}

pub fn run_tests(root: &Path) -> Result<Summary> {
    let started = Instant::now();
    let only = std::env::var("KLIVE_VM_PHASES").ok();
    let phases = selected_phases(only.as_deref())?;
    let mut guest = prepare(root)?;
    add_built_patches(root, &mut guest)?;
    let disk = fresh_disk(&guest.work, "disk.img")?;
    let limit = boot_limit()?;

    let mut all: Vec<(String, TestResult)> = Vec::new();
    for phase in ["1", "2"].into_iter().filter(|p| phases.contains(p)) {
        let boot = boot(&guest, &disk, phase, "quiet", limit);
        eprintln!(
            "xtask: == VM phase {phase} (console log: {})",
            boot.log.display()
        );
        let prefix = format!("[vm phase{phase}] ");
        let outcome = boot.run(|line| println!("{prefix}{line}"))?;
        eprintln!(
            "xtask: phase {phase} boot took {:.1} s",
            outcome.elapsed.as_secs_f64()
        );
        for result in guest.tally(phase, &outcome, limit) {
            all.push((results::label(phase), result));
        }
    }

    if phases.contains(&"fleet") {
        for result in run_fleet(root, &guest, limit)? {
            all.push(("fleet".to_owned(), result));
        }
    }

    let summary = Summary {
        passed: all.iter().filter(|(_, r)| r.passed).count(),
        failed: all.iter().filter(|(_, r)| !r.passed).count(),
        skipped: TEST_PHASES
            .into_iter()
            .filter(|p| !phases.contains(p))
            .map(|p| (results::label(p), guest.scenarios.of(p).to_vec()))
            .collect(),
    };
    println!();
    println!("VM end-to-end results:");
    for (phase, result) in &all {
        let verdict = if result.passed { "PASS" } else { "FAIL" };
        println!("  {verdict} [{phase}] {}", result.what);
    }
    for (boot, names) in &summary.skipped {
        println!(
            "  SKIPPED [{boot}] by KLIVE_VM_PHASES, not run: {}",
            names.join(", ")
        );
    }
    eprintln!(
        "xtask: VM tests took {:.0} s in all ({}); console logs in {}",
        started.elapsed().as_secs_f64(),
        guest.accel,
        guest.work.display()
    );
    if summary.skipped.is_empty() {
        println!("{} passed, {} failed", summary.passed, summary.failed);
    } else {
        println!(
            "{} passed, {} failed; PARTIAL RUN: KLIVE_VM_PHASES={} skipped {}",
            summary.passed,
            summary.failed,
            only.unwrap_or_default(),
            summary.skipped_text()
        );
    }
    Ok(summary)
}

/// The fleet boot: a klive-server on the host's loopback, the guest agent registering and
/// updating through QEMU user networking, the xtask doing the admin steps the guest asks
/// for (`fleet.rs`). Its own fresh disk, holding what the guest must pin.
fn run_fleet(root: &Path, guest: &Guest, limit: Duration) -> Result<Vec<TestResult>> {
    let seed = guest.work.join("fleet-disk-seed");
    if seed.exists() {
        fs::remove_dir_all(&seed).with_context(|| format!("removing {}", seed.display()))?;
    }
    let mut server = timed("starting the klive-server for the fleet boot", || {
        fleet::FleetServer::start(
            root,
            &guest.work,
            &guest.kernel.release,
            &guest.build_id,
            &guest.modules,
            &seed.join("harness/fleet"),
        )
    })?;
    let disk = fresh_disk_with(&guest.work, "fleet-disk.img", Some(&seed))?;
    let mut boot = boot(guest, &disk, "fleet", "quiet", limit);
    boot.nic = Some(server.qemu_nic()?);
    eprintln!(
        "xtask: == VM fleet boot (console log: {}, server log: {})",
        boot.log.display(),
        guest.work.join("fleet-server.log").display()
    );
    let outcome = boot.run(|line| {
        println!("[vm fleet] {line}");
        server.on_line(line);
    })?;
    eprintln!(
        "xtask: fleet boot took {:.1} s",
        outcome.elapsed.as_secs_f64()
    );
    drop(server);
    Ok(guest.tally("fleet", &outcome, limit))
}

pub fn demo(root: &Path) -> Result<()> {
    let guest = prepare(root)?;
    let disk = fresh_disk(&guest.work, "demo-disk.img")?;
    let limit = boot_limit()?;
    let boot = boot(&guest, &disk, "demo", "quiet loglevel=3", limit);
    eprintln!(
        "xtask: booting {} in QEMU ({}); the demo starts in about 5 s",
        guest.kernel.release, guest.accel
    );
    let start = results::phase_start("demo");
    let end = results::phase_end("demo");
    let mut showing = false;
    let mut stdout = std::io::stdout();
    let outcome = boot.run(|line| {
        if line.trim_end().ends_with(&start) {
            showing = true;
        } else if line.trim_end().ends_with(&end) {
            showing = false;
        } else if showing {
            let _ = writeln!(stdout, "{line}");
        }
    })?;
    guest.require_passed("demo", &outcome, limit, &boot.log)
}

/// Times the agent's commands in the guest (`tests/vm/bench/agent.sh`) and prints a
/// Markdown table, also written to `target/vm/bench-agent.md` for BENCHMARKS.md.
pub fn bench_agent(root: &Path) -> Result<()> {
    let guest = prepare(root)?;
    let disk = fresh_disk(&guest.work, "bench-disk.img")?;
    let limit = boot_limit()?;
    let boot = boot(&guest, &disk, "bench", "quiet", limit);
    eprintln!(
        "xtask: == benchmark boot (console log: {})",
        boot.log.display()
    );
    let outcome = boot.run(|line| println!("[vm bench] {line}"))?;
    guest.require_passed("bench", &outcome, limit, &boot.log)?;
    let samples = bench::parse(&outcome.lines);
    if samples.is_empty() {
        bail!(
            "the benchmark printed no KLIVE-BENCH lines; see {}",
            boot.log.display()
        );
    }
    let agent_size = fs::metadata(
        target_dir(root)
            .join(deps::MUSL_TARGET)
            .join("release/klive"),
    )
    .map(|m| m.len())
    .ok();
    let report = bench::report(&bench::Setup {
        release: &guest.kernel.release,
        accel: guest.accel,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        agent_size,
        samples: &samples,
    });
    let out = guest.work.join("bench-agent.md");
    fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    println!("\n{report}");
    eprintln!("xtask: written to {}", out.display());
    Ok(())
}

/// Installs what is missing, then builds the agent, the modules and the initramfs.
fn prepare(root: &Path) -> Result<Guest> {
    deps::ensure_apt(PACKAGES)?;
    deps::ensure_musl_target()?;
    let work = target_dir(root).join("vm");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let lock = lock_work_dir(&work)?;

    let kernel = TargetKernel::discover()?;
    let build_id = kernel::build_id(&kernel, &work)?;
    eprintln!(
        "xtask: target kernel {} (build-id {build_id})",
        kernel.release
    );

    let agent = timed("building the static agent", || build_agent(root))?;
    let modules = timed("building the test modules", || {
        modules::build(root, &kernel, &build_id, &work)
    })?;
    let peakrss = build_peakrss(root, &work)?;
    let initrd = work.join("initramfs.cpio");
    let scenarios = timed("packing the initramfs", || {
        initramfs::write(
            &initramfs::Contents {
                root,
                kernel: &kernel,
                build_id: &build_id,
                agent: &agent,
                peakrss: &peakrss,
                modules: &modules,
            },
            &initrd,
        )
    })?;
    let accel = Accel::pick(&kernel.image);
    Ok(Guest {
        kernel,
        build_id,
        agent,
        peakrss,
        modules,
        initrd,
        scenarios,
        work,
        accel,
        _lock: lock,
    })
}

impl Guest {
    /// The results of a boot of `phase` (see [`results::tally`]), checked against the
    /// scenarios packed for it.
    fn tally(&self, phase: &str, outcome: &qemu::Outcome, limit: Duration) -> Vec<TestResult> {
        results::tally(
            phase,
            self.scenarios.of(phase),
            &outcome.lines,
            outcome.timed_out,
            limit,
        )
    }

    /// Fails, naming every failure, unless the boot of a helper phase (demo, bench, kallsyms)
    /// passed all it ran.
    fn require_passed(
        &self,
        phase: &str,
        outcome: &qemu::Outcome,
        limit: Duration,
        log: &Path,
    ) -> Result<()> {
        let failures: Vec<String> = self
            .tally(phase, outcome, limit)
            .into_iter()
            .filter(|r| !r.passed)
            .map(|r| r.what)
            .collect();
        if !failures.is_empty() {
            bail!(
                "the {phase} boot failed: {}; the whole console is in {}",
                failures.join("; "),
                log.display()
            );
        }
        Ok(())
    }
}

/// `cargo xtask bench build` (`crate::build_bench`) for the harness's kernel, with the
/// kallsyms dump the VM tests use; holds the VM lock, so no guest competes for the cores.
pub fn bench_build(root: &Path) -> Result<()> {
    let guest = prepare(root)?;
    let dump = kallsyms::dump(&guest)?;
    crate::build_bench::run(
        root,
        &crate::build_tests::Target {
            release: &guest.kernel.release,
            build_id: &guest.build_id,
            modules_dir: &guest.kernel.modules_dir,
            kallsyms: &dump,
        },
    )
}

/// klive-build's real-kernel tests (`crate::build_tests`): with a `/proc/kallsyms` dump of
/// this kernel (one extra boot, cached per build-id), builds the diffs of `tests/build/`,
/// adds the modules to the guest's `/modules` and packs the initramfs again.
fn add_built_patches(root: &Path, guest: &mut Guest) -> Result<()> {
    let dump = timed("taking /proc/kallsyms from the guest (cached)", || {
        kallsyms::dump(guest)
    })?;
    let target = crate::build_tests::Target {
        release: &guest.kernel.release,
        build_id: &guest.build_id,
        modules_dir: &guest.kernel.modules_dir,
        kallsyms: &dump,
    };
    timed("building the klive-build test patches", || {
        crate::build_tests::build_into(root, &target, &guest.modules)
    })?;
    guest.scenarios = timed("packing the initramfs with the built patches", || {
        initramfs::write(
            &initramfs::Contents {
                root,
                kernel: &guest.kernel,
                build_id: &guest.build_id,
                agent: &guest.agent,
                peakrss: &guest.peakrss,
                modules: &guest.modules,
            },
            &guest.initrd,
        )
    })?;
    Ok(())
}

fn boot<'a>(
    guest: &'a Guest,
    disk: &'a Path,
    phase: &str,
    verbosity: &str,
    limit: Duration,
) -> Boot<'a> {
    Boot {
        accel: guest.accel,
        kernel: &guest.kernel.image,
        initrd: &guest.initrd,
        disk,
        append: format!("console=ttyS0 {verbosity} panic=-1 klive.phase={phase}"),
        log: guest.work.join(format!("{}.log", results::label(phase))),
        limit,
        nic: None,
    }
}

/// Waits for any other VM run of this workspace (tests, demo) to finish.
fn lock_work_dir(work: &Path) -> Result<fs::File> {
    let path = work.join("lock");
    let file = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            eprintln!(
                "xtask: another VM run is using {}; waiting for it",
                work.display()
            );
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

fn timed<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    eprintln!("xtask: {what}");
    let value = f()?;
    eprintln!("xtask: {what}: {:.1} s", started.elapsed().as_secs_f64());
    Ok(value)
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

fn boot_limit() -> Result<Duration> {
    match std::env::var("KLIVE_VM_TIMEOUT") {
        Ok(secs) => {
            let secs: u64 = secs
                .trim()
                .parse()
                .with_context(|| format!("KLIVE_VM_TIMEOUT={secs:?} is not a number of seconds"))?;
            Ok(Duration::from_secs(secs))
        }
        Err(_) => Ok(DEFAULT_BOOT_LIMIT),
    }
}

/// `cargo build --release --target x86_64-unknown-linux-musl -p klive-agent`.
/// `tests/vm/bench/peakrss.c` as a static musl binary in the work directory.
fn build_peakrss(root: &Path, work: &Path) -> Result<PathBuf> {
    let source = root.join("tests/vm/bench/peakrss.c");
    let out = work.join("peakrss");
    let output = Command::new("musl-gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&source)
        .output()
        .context("running musl-gcc: install musl-tools")?;
    if !output.status.success() {
        bail!(
            "building {} failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(out)
}

fn build_agent(root: &Path) -> Result<PathBuf> {
    if let Some(agent) = std::env::var_os("KLIVE_VM_AGENT") {
        let agent = PathBuf::from(agent);
        eprintln!(
            "xtask: KLIVE_VM_AGENT set: using {} as the agent, not building it",
            agent.display()
        );
        if !agent.is_file() {
            bail!("KLIVE_VM_AGENT={} is not a file", agent.display());
        }
        return Ok(agent);
    }
    let mut cmd = crate::cargo(&[
        "build",
        "--release",
        "--target",
        deps::MUSL_TARGET,
        "-p",
        "klive-agent",
    ]);
    cmd.env("CC_x86_64_unknown_linux_musl", "musl-gcc");
    crate::run(cmd).context("building the static klive agent failed: fix the errors above")?;
    let agent = target_dir(root)
        .join(deps::MUSL_TARGET)
        .join("release/klive");
    if !agent.is_file() {
        bail!(
            "the agent build succeeded but {} is missing",
            agent.display()
        );
    }
    Ok(agent)
}

/// A new raw disk image formatted ext4, so every run starts from an empty state dir.
fn fresh_disk(work: &Path, name: &str) -> Result<PathBuf> {
    fresh_disk_with(work, name, None)
}

/// [`fresh_disk`], holding a copy of the directory `seed` when given (`mkfs.ext4 -d`).
fn fresh_disk_with(work: &Path, name: &str, seed: Option<&Path>) -> Result<PathBuf> {
    let disk = work.join(name);
    let file = fs::File::create(&disk).with_context(|| format!("creating {}", disk.display()))?;
    file.set_len(DISK_SIZE)
        .with_context(|| format!("sizing {}", disk.display()))?;
    drop(file);
    // /usr/sbin is not on the PATH of ordinary users.
    let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mkfs.ext4");
    let output = Command::new(mkfs)
        .args(["-q", "-F", "-L", "klive-state"])
        // Initialise everything now: the lazy-init thread would otherwise run in the guest.
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .args(
            seed.map(|d| vec![std::ffi::OsStr::new("-d"), d.as_os_str()])
                .unwrap_or_default(),
        )
        .arg(&disk)
        .output()
        .context("running mkfs.ext4: install e2fsprogs")?;
    if !output.status.success() {
        bail!(
            "mkfs.ext4 {} failed: {}",
            disk.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::selected_phases;

    #[test]
    fn klive_vm_phases_selects_known_boots_only() {
        assert_eq!(selected_phases(None).unwrap(), ["1", "2", "fleet"]);
        assert_eq!(selected_phases(Some("fleet, 1")).unwrap(), ["1", "fleet"]);
        assert!(selected_phases(Some("1,flet")).is_err());
        assert!(selected_phases(Some("")).is_err());
    }
}
