//! `cargo xtask`: the one entry point for people and CI.
//!
//! `demo` boots the installed Debian kernel in QEMU and live-patches it with `klive`;
//! `test` runs every test (format, lints, `cargo deny`, unit and integration tests, VM
//! end-to-end tests);
//! `bench` measures the figures kept in BENCHMARKS.md. Each installs what it needs first
//! (`bench corpus` runs klive-build on the real fixes of `tests/build/real/`).

mod bench_dashboard;
mod bench_env;
mod bench_server;
mod browser;
mod build_bench;
mod build_tests;
mod corpus;
mod deny;
mod deps;
mod kernels_bench;
mod moto;
mod pg;
mod server;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "klive developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Boot the Debian kernel in QEMU and show klive live-patching it.
    Demo,
    /// Run every test: fmt, clippy, cargo deny, unit/integration tests, VM end-to-end tests.
    Test {
        /// Skip the QEMU end-to-end tests (for quick local iterations only; CI runs them).
        #[arg(long)]
        no_vm: bool,
    },
    /// Run only the VM end-to-end tests.
    VmTest,
    /// Run only klive-server's tests on PostgreSQL and S3 (a throwaway cluster and moto).
    ServerBackends,
    /// Run only `cargo deny check` (deny.toml), installing cargo-deny first.
    Deny,
    /// Internal: QEMU runs this for each guest connection of the fleet boot (a byte relay
    /// from stdin/stdout to ADDR on the host's loopback; KILL_FILE arms a server crash in
    /// the middle of a download).
    #[command(hide = true)]
    VmRelay {
        addr: String,
        kill_file: Option<PathBuf>,
    },
    /// Measure a component; results go to BENCHMARKS.md.
    Bench {
        /// What to measure.
        #[arg(value_enum)]
        what: BenchTarget,
        /// `corpus` only: run the one case NN (its number or directory name) and print its
        /// row; BENCHMARKS.md is left alone.
        #[arg(long, value_name = "NN")]
        case: Option<String>,
        /// `corpus` only: the klive-build binary to run instead of building this checkout's.
        #[arg(long, value_name = "PATH")]
        klive_build: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchTarget {
    Agent,
    /// klive-build cold and warm beside a measured full-kernel-build sample.
    Build,
    /// klive-server check-ins/s and latency beside its health endpoint, SQLite and
    /// PostgreSQL, and fleet status over 100,000 hosts.
    Server,
    /// klive-server dashboard pages and the SOC 2 evidence pack over 100,000 hosts and a year.
    Dashboard,
    /// klive-build on the real kernel fixes of `tests/build/real/`: outcome per case against
    /// its expectation, and the coverage.
    Corpus,
    /// klive-build by kernel name, cold and warm, on the two newest kernels of each Debian 12
    /// line, and for all four in one command.
    Kernels,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Task::VmRelay { addr, kill_file } = &cli.task {
        // Nothing may be printed: stderr is the guest's connection too.
        return vm::relay::relay(addr, kill_file.as_deref()).or(Ok(()));
    }
    let root = workspace_root();
    std::env::set_current_dir(&root)
        .with_context(|| format!("entering the workspace root {}", root.display()))?;
    match cli.task {
        Task::Demo => vm::demo(&root),
        Task::Test { no_vm } => test(&root, no_vm),
        Task::ServerBackends => server_on_postgres_and_s3(&root),
        Task::VmTest => check_vm_summary(&vm::run_tests(&root)?, false),
        Task::Deny => deny::check(&root).map(drop),
        Task::VmRelay { .. } => Ok(()),
        Task::Bench {
            what,
            case,
            klive_build,
        } => {
            if !matches!(what, BenchTarget::Corpus) && (case.is_some() || klive_build.is_some()) {
                bail!("--case and --klive-build go with `bench corpus` only");
            }
            match what {
                BenchTarget::Agent => vm::bench_agent(&root),
                BenchTarget::Build => vm::bench_build(&root),
                BenchTarget::Server => bench_server::run(&root),
                BenchTarget::Dashboard => bench_dashboard::run(&root),
                BenchTarget::Corpus => corpus::run(&root, case.as_deref(), klive_build.as_deref()),
                BenchTarget::Kernels => kernels_bench::run(&root),
            }
        }
    }
}

/// The real fixes `cargo xtask test` builds, on two kernels (one per Debian 12 line): an
/// extack message, an inlined static and dynamic debug in a module, a GCC `.isra` clone,
/// tracepoints in a module, `__init` and read-only-data refusals, and a fix that compiles to
/// the same code. `cargo xtask bench corpus` runs all of them.
const CORPUS_SUBSET: &[&str] = &["06", "08", "11", "12", "14", "20", "21", "22", "24"];

fn test(root: &Path, no_vm: bool) -> Result<()> {
    step(
        "cargo fmt --check",
        cargo(&["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "cargo clippy",
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            "klive-server/failpoints",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    eprintln!("xtask: == cargo deny check (deny.toml)");
    let deny = deny::check(root)?;
    // klive-server's failpoints (test-only kill points on its write paths) are on for the
    // tests; release builds never have them.
    step(
        "cargo test",
        cargo(&[
            "test",
            "--workspace",
            "--features",
            "klive-server/failpoints",
        ]),
    )?;
    server_on_postgres_and_s3(root)?;
    eprintln!("xtask: == dashboard browser test (headless chromium)");
    browser::test(root)?;
    let advisories = match deny {
        deny::Outcome::Everything => String::new(),
        deny::Outcome::NoAdvisories(why) => {
            format!("; but ADVISORIES WERE NOT CHECKED (RustSec database: {why})")
        }
    };
    if no_vm {
        eprintln!("xtask: --no-vm given: the QEMU end-to-end tests were NOT run{advisories}");
        return Ok(());
    }
    check_vm_summary(&vm::run_tests(root)?, true)?;
    eprintln!("xtask: == klive-build on real fixes (a subset of tests/build/real/)");
    corpus::check(root, CORPUS_SUBSET)?;
    eprintln!("xtask: all tests passed{advisories}");
    Ok(())
}

/// Fails on any failed or missing result; a run that `KLIVE_VM_PHASES` or `KLIVE_VM_KERNELS`
/// cut short fails too
/// where every boot must run (`full`, for `cargo xtask test`) and is announced as partial
/// otherwise.
/// klive-server's tests once more on the scaled-out backends: every test that takes its
/// service from the fixture runs on a fresh database of a throwaway PostgreSQL cluster (TLS
/// only) with its blobs in an S3 bucket (moto), and the PostgreSQL- and S3-only tests, which
/// are ignored in the plain run, run too. Which tests those are follows from the features, not
/// from test names.
fn server_on_postgres_and_s3(root: &Path) -> Result<()> {
    let cluster = pg::Cluster::start()?;
    cluster.check_tls_only()?;
    let moto = moto::start(root)?;
    eprintln!(
        "xtask: == cargo test -p klive-server on PostgreSQL at {} and S3 (moto) at {}",
        cluster.url(),
        moto.addr()
    );
    let mut cmd = cargo(&[
        "test",
        "-p",
        "klive-server",
        "--features",
        "test-postgres,test-s3,failpoints",
    ]);
    cmd.env("KLIVE_TEST_DATABASE_URL", cluster.url());
    cmd.envs(moto.env());
    run(cmd).context("klive-server tests on PostgreSQL and S3 failed")
}

fn check_vm_summary(summary: &vm::Summary, full: bool) -> Result<()> {
    if summary.failed > 0 || summary.passed == 0 {
        bail!(
            "VM end-to-end tests: {} passed, {} failed",
            summary.passed,
            summary.failed
        );
    }
    if !summary.skipped.is_empty() {
        if full {
            bail!(
                "VM end-to-end tests: KLIVE_VM_PHASES/KLIVE_VM_KERNELS left out {}; `cargo xtask \
                 test` runs every boot of every kernel: unset them",
                summary.skipped_text()
            );
        }
        eprintln!(
            "xtask: PARTIAL RUN: the VM boots that ran passed, but KLIVE_VM_PHASES/KLIVE_VM_KERNELS \
             left out {}",
            summary.skipped_text()
        );
    }
    Ok(())
}

fn step(name: &str, cmd: Command) -> Result<()> {
    eprintln!("xtask: == {name}");
    run(cmd).with_context(|| format!("{name} failed"))
}

/// A `cargo` command using the same toolchain that runs xtask.
pub fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args);
    cmd
}

/// Runs a command to completion, failing with its command line when it fails.
pub fn run(mut cmd: Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} exited with {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
