//! VM end-to-end harness: builds the static agent and the test livepatch modules, packs an
//! initramfs, boots Debian kernels in QEMU and reads the guest's result lines.
//!
//! A test run does the same for each kernel line Debian 12 ships ([`kernel::LINES`]: the
//! newest 6.1 ABI and the newest 6.12 ABI, fetched by klive-build's `debian` module into
//! `target/klive-build-cache/`, not installed):
//! it boots the guest twice on one fresh disk image (phase 1 runs
//! `tests/vm/scenarios/phase1/*.sh`, phase 2, a "reboot" keeping the disk, runs
//! `tests/vm/scenarios/phase2/*.sh`), then the fleet boot. Results are labelled with the line
//! (`[6.12] phase1`). The guest side (init, result protocol, helpers) is in `tests/vm/`; the
//! modules are built from `tests/modules/` against each kernel's headers. Everything
//! generated for a kernel goes to `target/vm/<line>/`, including the console logs
//! `phase1.log`, `phase2.log`, `fleet.log`, `demo.log` and `bench.log`. The guest side and
//! the scenario conventions are described in `tests/vm/README.md`.
//!
//! Environment: `KLIVE_VM_ACCEL=tcg|kvm` skips the KVM probe; `KLIVE_VM_TIMEOUT=SECS`
//! changes the wall-clock limit of one boot (default 300); `KLIVE_VM_AGENT=PATH` puts that
//! static binary in the guest as `/bin/klive` instead of building the agent (for iterating
//! on the harness while the agent does not build); `KLIVE_VM_PHASES=1,2,fleet` runs only
//! the listed boots and `KLIVE_VM_KERNELS=6.1,6.12` only the listed kernel lines (for
//! iterating: the summary names what it left out and says PARTIAL RUN; `cargo xtask test`
//! refuses it). Every boot must start each scenario packed for it. `demo` and `bench` boot
//! the first selected line.

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
use kernel::{Line, TargetKernel};
use qemu::{Accel, Boot};
use results::{TestResult, Verdict};

/// Result lines counted from the guest console, of every kernel line.
#[derive(Debug, Default)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    /// Results a scenario reported as not applicable to the kernel, each with its reason.
    pub not_applicable: usize,
    /// Boots `KLIVE_VM_PHASES` or `KLIVE_VM_KERNELS` left out (`[6.12] fleet`), each with
    /// the scenarios it would have run.
    pub skipped: Vec<(String, Vec<String>)>,
}

impl Summary {
    /// `[6.1] phase2 (10 scenarios), [6.12] fleet (8 scenarios)`.
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

/// The kernel lines `KLIVE_VM_KERNELS` selects (all of them when it is unset).
fn selected_lines(var: Option<&str>) -> Result<Vec<&'static Line>> {
    let Some(list) = var else {
        return Ok(kernel::LINES.iter().collect());
    };
    let wanted: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    let names: Vec<&str> = kernel::LINES.iter().map(|l| l.name).collect();
    if let Some(unknown) = wanted.iter().find(|w| !names.contains(w)) {
        bail!(
            "KLIVE_VM_KERNELS={list:?} names the kernel line {unknown:?}; the lines are {}",
            names.join(",")
        );
    }
    let lines: Vec<&'static Line> = kernel::LINES
        .iter()
        .filter(|l| wanted.contains(&l.name))
        .collect();
    if lines.is_empty() {
        bail!("KLIVE_VM_KERNELS={list:?} selects no kernel line; unset it to run them all");
    }
    Ok(lines)
}

/// Debian packages the harness uses: QEMU, busybox for the guest, musl-gcc for C parts of
/// the static agent, mkfs.ext4, make and gcc-12 for the test modules, xz for compressed
/// kernels and modules, pahole for the BTF of modules built against 6.12 headers. The
/// kernels themselves are fetched, not installed ([`kernel::TargetKernel::fetch`]).
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "musl-tools",
    "e2fsprogs",
    "make",
    "gcc-12",
    "xz-utils",
    "dwarves",
];

const DEFAULT_BOOT_LIMIT: Duration = Duration::from_secs(300);
const DISK_SIZE: u64 = 64 << 20;

/// What every kernel's guest shares: the agent, the work directory and its lock.
#[derive(Debug)]
struct Host {
    agent: PathBuf,
    peakrss: PathBuf,
    /// `target/vm/`.
    work: PathBuf,
    /// Picked with the first kernel prepared.
    accel: std::cell::OnceCell<Accel>,
    /// Held until the boots are over: runs share `target/vm/` and the machine's cores.
    _lock: fs::File,
}

/// Everything built for the boots of one kernel.
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
    /// `target/vm/<line>/`.
    work: PathBuf,
    accel: Accel,
}

pub fn run_tests(root: &Path) -> Result<Summary> {
    let started = Instant::now();
    let only = std::env::var("KLIVE_VM_PHASES").ok();
    let phases = selected_phases(only.as_deref())?;
    let only_kernels = std::env::var("KLIVE_VM_KERNELS").ok();
    let lines = selected_lines(only_kernels.as_deref())?;
    let host = prepare_host(root)?;
    let limit = boot_limit()?;

    let mut all: Vec<(String, TestResult)> = Vec::new();
    let mut skipped: Vec<(String, Vec<String>)> = Vec::new();
    let mut accel = None;
    for line in kernel::LINES {
        let tag = |boot: &str| format!("[{}] {boot}", line.name);
        if !lines.contains(&line) {
            for phase in TEST_PHASES {
                skipped.push((tag(&results::label(phase)), packed_scenarios(root, phase)?));
            }
            continue;
        }
        let line_started = Instant::now();
        let guest = match prepare_for_tests(root, &host, line) {
            Ok(guest) => guest,
            Err(e) => {
                // The other line still runs; this one counts as one failure.
                eprintln!("xtask: kernel line {}: {e:#}", line.name);
                all.push((
                    tag("prepare"),
                    TestResult::fail(format!("preparing the {} guest: {e:#}", line.name)),
                ));
                continue;
            }
        };
        accel = Some(guest.accel);
        for (boot, result) in run_boots(root, &guest, &phases, limit)? {
            all.push((tag(&boot), result));
        }
        for phase in TEST_PHASES.into_iter().filter(|p| !phases.contains(p)) {
            skipped.push((
                tag(&results::label(phase)),
                guest.scenarios.of(phase).to_vec(),
            ));
        }
        eprintln!(
            "xtask: kernel {} ({}) took {:.0} s",
            guest.kernel.release,
            line.name,
            line_started.elapsed().as_secs_f64()
        );
    }

    let count = |v: Verdict| all.iter().filter(|(_, r)| r.verdict == v).count();
    let summary = Summary {
        passed: count(Verdict::Pass),
        failed: count(Verdict::Fail),
        not_applicable: count(Verdict::Skip),
        skipped,
    };
    println!();
    println!("VM end-to-end results:");
    for (boot, result) in &all {
        println!("  {} {boot}/{}", result.verdict, result.what);
    }
    for (boot, names) in &summary.skipped {
        println!(
            "  SKIPPED {boot} by KLIVE_VM_PHASES/KLIVE_VM_KERNELS, not run: {}",
            names.join(", ")
        );
    }
    for line in &lines {
        let of_line = |v: Verdict| {
            all.iter()
                .filter(|(b, r)| b.starts_with(&format!("[{}] ", line.name)) && r.verdict == v)
                .count()
        };
        println!(
            "  [{}]: {} passed, {} failed, {} not applicable",
            line.name,
            of_line(Verdict::Pass),
            of_line(Verdict::Fail),
            of_line(Verdict::Skip)
        );
    }
    eprintln!(
        "xtask: VM tests took {:.0} s in all ({}); console logs in {}/<line>/",
        started.elapsed().as_secs_f64(),
        accel.map_or("no boot".to_owned(), |a| a.to_string()),
        host.work.display()
    );
    let not_applicable = if summary.not_applicable > 0 {
        format!(
            ", {} not applicable (reasons above)",
            summary.not_applicable
        )
    } else {
        String::new()
    };
    if summary.skipped.is_empty() {
        println!(
            "{} passed, {} failed{not_applicable}",
            summary.passed, summary.failed
        );
    } else {
        let mut by = Vec::new();
        if let Some(o) = &only {
            by.push(format!("KLIVE_VM_PHASES={o}"));
        }
        if let Some(o) = &only_kernels {
            by.push(format!("KLIVE_VM_KERNELS={o}"));
        }
        println!(
            "{} passed, {} failed{not_applicable}; PARTIAL RUN: {} left out {}",
            summary.passed,
            summary.failed,
            by.join(" "),
            summary.skipped_text()
        );
    }
    Ok(summary)
}

/// The scenario names of `phase` as `tests/vm/` holds them (for a kernel line left out,
/// whose initramfs was never packed).
fn packed_scenarios(root: &Path, phase: &str) -> Result<Vec<String>> {
    let dir = root.join("tests/vm").join(initramfs::phase_dir(phase));
    Ok(initramfs::scripts(&dir)?
        .iter()
        .map(|p| {
            p.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect())
}

/// The selected boots of one kernel: phase 1 and 2 on one disk, then the fleet boot; each
/// result with the label of its boot (`phase1`).
fn run_boots(
    root: &Path,
    guest: &Guest,
    phases: &[&str],
    limit: Duration,
) -> Result<Vec<(String, TestResult)>> {
    let line = guest.kernel.line;
    let mut all = Vec::new();
    let disk = fresh_disk(&guest.work, "disk.img")?;
    for phase in ["1", "2"].into_iter().filter(|p| phases.contains(p)) {
        let boot = boot(guest, &disk, phase, "quiet", limit);
        eprintln!(
            "xtask: == VM {line} phase {phase}: {} (console log: {})",
            guest.kernel.release,
            boot.log.display()
        );
        let prefix = format!("[vm {line} phase{phase}] ");
        let outcome = boot.run(|l| println!("{prefix}{l}"))?;
        eprintln!(
            "xtask: {line} phase {phase} boot took {:.1} s",
            outcome.elapsed.as_secs_f64()
        );
        for result in guest.tally(phase, &outcome, limit) {
            all.push((results::label(phase), result));
        }
    }
    if phases.contains(&"fleet") {
        for result in run_fleet(root, guest, limit)? {
            all.push(("fleet".to_owned(), result));
        }
    }
    Ok(all)
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
        "xtask: == VM {} fleet boot: {} (console log: {}, server log: {})",
        guest.kernel.line,
        guest.kernel.release,
        boot.log.display(),
        guest.work.join("fleet-server.log").display()
    );
    let prefix = format!("[vm {} fleet] ", guest.kernel.line);
    let outcome = boot.run(|line| {
        println!("{prefix}{line}");
        server.on_line(line);
    })?;
    eprintln!(
        "xtask: {} fleet boot took {:.1} s",
        guest.kernel.line,
        outcome.elapsed.as_secs_f64()
    );
    drop(server);
    Ok(guest.tally("fleet", &outcome, limit))
}

pub fn demo(root: &Path) -> Result<()> {
    let host = prepare_host(root)?;
    let guest = prepare(root, &host, first_line()?)?;
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
    let host = prepare_host(root)?;
    let guest = prepare(root, &host, first_line()?)?;
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

/// The kernel line a single-kernel command (demo, bench) boots: the first one
/// `KLIVE_VM_KERNELS` selects.
fn first_line() -> Result<&'static Line> {
    let only = std::env::var("KLIVE_VM_KERNELS").ok();
    Ok(selected_lines(only.as_deref())?[0])
}

/// Installs what is missing, takes the lock of `target/vm/` and builds what every kernel's
/// guest shares: the agent and the benchmark's meter.
fn prepare_host(root: &Path) -> Result<Host> {
    deps::ensure_apt(PACKAGES)?;
    deps::ensure_musl_target()?;
    let work = target_dir(root).join("vm");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let lock = lock_work_dir(&work)?;
    let agent = timed("building the static agent", || build_agent(root))?;
    let peakrss = build_peakrss(root, &work)?;
    Ok(Host {
        agent,
        peakrss,
        work,
        accel: std::cell::OnceCell::new(),
        _lock: lock,
    })
}

/// Fetches the newest kernel of `line` (cached in klive-build's cache, which the build cases
/// share), builds the test modules against its headers and packs its initramfs, all in
/// `target/vm/<line>/`.
fn prepare(root: &Path, host: &Host, line: &Line) -> Result<Guest> {
    let kernel = timed(
        &format!("fetching the newest {} kernel (cached)", line.name),
        || TargetKernel::fetch(line, &crate::build_tests::cache_dir(root)),
    )?;
    let work = host.work.join(line.name);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let build_id = kernel.build_id.clone();
    eprintln!(
        "xtask: target kernel {} (build-id {build_id})",
        kernel.release
    );

    let modules = timed(
        &format!("building the test modules for {}", kernel.release),
        || modules::build(root, &kernel, &build_id, &work),
    )?;
    let accel = *host.accel.get_or_init(|| Accel::pick(&kernel.image));
    let mut guest = Guest {
        kernel,
        build_id,
        agent: host.agent.clone(),
        peakrss: host.peakrss.clone(),
        modules,
        initrd: work.join("initramfs.cpio"),
        scenarios: initramfs::Scenarios::default(),
        work,
        accel,
    };
    guest.pack(root)?;
    Ok(guest)
}

/// [`prepare`] plus klive-build's cases built for the kernel and put in its guest.
fn prepare_for_tests(root: &Path, host: &Host, line: &Line) -> Result<Guest> {
    let mut guest = prepare(root, host, line)?;
    add_built_patches(root, &mut guest)?;
    Ok(guest)
}

impl Guest {
    /// Packs `initrd` with what the guest has now; records the scenarios it packed.
    fn pack(&mut self, root: &Path) -> Result<()> {
        self.scenarios = timed("packing the initramfs", || {
            initramfs::write(
                &initramfs::Contents {
                    root,
                    kernel: &self.kernel,
                    build_id: &self.build_id,
                    agent: &self.agent,
                    peakrss: &self.peakrss,
                    modules: &self.modules,
                },
                &self.initrd,
            )
        })?;
        Ok(())
    }

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
            .filter(|r| r.verdict == Verdict::Fail)
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
    let host = prepare_host(root)?;
    let guest = prepare(root, &host, first_line()?)?;
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
    guest.pack(root)
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
    use super::{selected_lines, selected_phases};

    #[test]
    fn klive_vm_phases_selects_known_boots_only() {
        assert_eq!(selected_phases(None).unwrap(), ["1", "2", "fleet"]);
        assert_eq!(selected_phases(Some("fleet, 1")).unwrap(), ["1", "fleet"]);
        assert!(selected_phases(Some("1,flet")).is_err());
        assert!(selected_phases(Some("")).is_err());
    }

    #[test]
    fn klive_vm_kernels_selects_known_lines_only() {
        let names = |v: Vec<&super::Line>| v.iter().map(|l| l.name).collect::<Vec<_>>();
        assert_eq!(names(selected_lines(None).unwrap()), ["6.1", "6.12"]);
        assert_eq!(names(selected_lines(Some("6.12")).unwrap()), ["6.12"]);
        assert_eq!(
            names(selected_lines(Some("6.12, 6.1")).unwrap()),
            ["6.1", "6.12"]
        );
        assert!(selected_lines(Some("6.2")).is_err());
        assert!(selected_lines(Some(",")).is_err());
    }
}
