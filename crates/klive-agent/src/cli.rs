//! The `klive` command line. `run` takes the kernel as a parameter, so tests drive the whole
//! CLI in-process against the fake kernel.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use klive_format::api::{Action, FleetReport, FleetStatus, StatusReport};
use klive_format::status::{ErrorReport, OperationReport, StalledTaskReport};
use klive_format::{BuildId, PatchLevel};
use klive_kernel::Kernel;

use crate::fleet::{Fleet, FleetError, RegisterArgs, RootPin};
use crate::ops::{Agent, ApplyOutcome, BootOutcome, Options, RevertOutcome, applied_message};
use crate::report;
use crate::store::Store;
use crate::transport::{Connector, UreqConnector};
use crate::{AgentError, ExitCode};

#[derive(Debug, Parser)]
#[command(
    name = "klive",
    version,
    about = "Live-patches this host's kernel with klive releases",
    after_help = "Exit codes: 0 ok (status: patched and healthy), 1 no patch applied, \
                  2 update available, 3 kernel cannot be live patched, 4 refused (nothing changed), \
                  5 transition stalled and reversed, 6 other failure, 64 usage error"
)]
pub struct Cli {
    /// Directory for klive's state, journal and module cache.
    #[arg(
        long,
        global = true,
        env = "KLIVE_STATE_DIR",
        default_value = "/var/lib/klive"
    )]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Kernel identity, livepatch support, loaded patches, klive level, taint and lockdown.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Apply a klive livepatch module (replacing the current level atomically), or a release
    /// bundle directory from `klive bundle` (verified against the pinned TUF root first).
    Apply {
        /// The `.ko` file, or a bundle directory (metadata/, targets/).
        file: PathBuf,
        /// For a bundle: the TUF root to verify it with, when this host is not registered.
        #[arg(long)]
        root: Option<PathBuf>,
        /// For a bundle: the level to apply (default: the highest for this kernel).
        #[arg(long)]
        level: Option<PatchLevel>,
        /// Seconds to wait for the transition before reversing it.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// Go back to the unpatched kernel code and unload klive's modules.
    Revert {
        /// Seconds to wait for the transition before undoing the revert.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// Every livepatch module, klive's and foreign, with its state; then the module cache.
    List {
        #[arg(long)]
        json: bool,
    },
    /// The effective kernel version: `uname -r` plus `+klive.<level>`.
    Uname {
        /// Print only the effective release.
        #[arg(short = 'r', conflicts_with = "all")]
        release: bool,
        /// Print everything, like `uname -a`.
        #[arg(short = 'a')]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Register this host with a klive server (stores its credential, pinned CA and TUF root).
    Register {
        /// The server's base URL, e.g. https://patch.example.com:8750.
        server: String,
        /// Enrollment token (`kle_...`) from the server's admin.
        #[arg(long, env = "KLIVE_ENROLLMENT_TOKEN", hide_env_values = true)]
        token: String,
        /// The CA the server's certificate must chain to (the server's DATA/tls/ca.pem).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The server's TUF root.json, copied out of band.
        #[arg(
            long,
            conflicts_with = "root_sha256",
            required_unless_present = "root_sha256"
        )]
        root: Option<PathBuf>,
        /// SHA-256 of the server's TUF root.json (printed by `klive-server keys init`).
        #[arg(long)]
        root_sha256: Option<String>,
        /// The name the server lists this host under (default: the kernel's hostname).
        #[arg(long)]
        hostname: Option<String>,
        /// Accept an http:// server URL (the credential crosses the network in clear).
        #[arg(long)]
        allow_plain_http: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check in with the server; exit 2 when it asks for an update or a revert.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Check in, then download, verify and apply the level the server names (or revert).
    Update {
        /// Keep retrying for this many seconds while the server cannot be reached.
        #[arg(long, default_value_t = 0)]
        retry_for: u64,
        /// Seconds to wait for the transition before reversing it.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// Keep this host updated: `update` on a jittered interval (the server's, default 1 h),
    /// backing off while the server is down; stops cleanly on SIGTERM or SIGINT.
    Daemon {
        /// Check-in interval in seconds instead of the server's.
        #[arg(long)]
        interval: Option<u64>,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Export this host's channel (signed metadata and releases) to a directory, for
    /// `klive apply DIR` on air-gapped hosts.
    Bundle {
        dir: PathBuf,
        /// Kernel build the releases are for (default: the running kernel's).
        #[arg(long)]
        build_id: Option<BuildId>,
        /// Only this level (default: every level in the channel).
        #[arg(long)]
        level: Option<PatchLevel>,
    },
    /// At boot: re-apply the last good level from the local cache when the kernel matches.
    /// A level whose boot-time loads keep ending in crashes is held back (crash-loop guard).
    Boot {
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// At a clean shutdown (the unit's ExecStop): record that this boot ended well, so the
        /// level it loaded does not count towards the crash-loop guard. Loads nothing.
        #[arg(long)]
        confirm: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Parses `args` and runs the command. Returns the process exit code.
pub fn run<K: Kernel>(
    args: impl IntoIterator<Item = OsString>,
    kernel: &K,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    run_with(args, kernel, &UreqConnector::default(), out, err)
}

/// [`run`] with the network given: tests put a tampering network in front of a real server.
pub fn run_with<K: Kernel>(
    args: impl IntoIterator<Item = OsString>,
    kernel: &K,
    net: &dyn Connector,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    let _ = write!(out, "{e}");
                    return ExitCode::Ok as i32;
                }
                _ => ExitCode::Usage as i32,
            };
            let _ = write!(err, "{e}");
            return code;
        }
    };
    execute(cli, kernel, net, out, err) as i32
}

fn options(timeout: u64) -> Options {
    Options {
        transition_timeout: Duration::from_secs(timeout),
        ..Options::default()
    }
}

/// What every command runs with: the kernel, the state directory, the network and the two
/// output streams.
struct Ctx<'a, K: Kernel> {
    kernel: &'a K,
    state_dir: &'a Path,
    net: &'a dyn Connector,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
}

fn execute<K: Kernel>(
    cli: Cli,
    kernel: &K,
    net: &dyn Connector,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let cx = Ctx {
        kernel,
        state_dir: &cli.state_dir,
        net,
        out,
        err,
    };
    match cli.command {
        Command::Status { json } => status(cx, json),
        Command::Apply {
            file,
            root,
            level,
            timeout,
            json,
        } => apply(cx, &file, root.as_deref(), level, timeout, json),
        Command::Revert { timeout, json } => revert(cx, timeout, json),
        Command::List { json } => list(cx, json),
        Command::Uname { release, all, json } => uname(cx, release, all, json),
        Command::Register {
            server,
            token,
            ca,
            root,
            root_sha256,
            hostname,
            allow_plain_http,
            json,
        } => {
            // clap lets only one of the two through; neither is a usage error `register` reports.
            let root = root
                .map(RootPin::File)
                .or_else(|| root_sha256.map(RootPin::Sha256));
            let args = root.map(|root| RegisterArgs {
                server,
                token,
                ca,
                root,
                hostname,
                allow_plain_http,
            });
            register(cx, args, json)
        }
        Command::Check { json } => check(cx, json),
        Command::Update {
            retry_for,
            timeout,
            json,
        } => update(cx, retry_for, timeout, json),
        Command::Daemon { interval, timeout } => daemon(cx, interval, timeout),
        Command::Bundle {
            dir,
            build_id,
            level,
        } => bundle(cx, &dir, build_id, level),
        Command::Boot {
            timeout,
            confirm: true,
            json,
        } => confirm_boot(cx, timeout, json),
        Command::Boot {
            timeout,
            confirm: false,
            json,
        } => boot(cx, timeout, json),
    }
}

impl<'a, K: Kernel> Ctx<'a, K> {
    fn agent(&self, opts: Options) -> Agent<'a, K> {
        Agent::new(self.kernel, self.state_dir, opts)
    }

    fn fleet(&self, opts: Options) -> Fleet<'a, K> {
        Fleet::new(self.kernel, self.state_dir, opts, self.net)
    }

    fn print_json<T: serde::Serialize>(&mut self, value: &T) {
        print_json(self.out, value);
    }

    /// Prints an operation's report (JSON or its message) or its failure.
    fn finish(
        mut self,
        json: bool,
        operation: &str,
        result: Result<OperationReport, AgentError>,
    ) -> ExitCode {
        match result {
            Ok(r) => {
                if json {
                    self.print_json(&r);
                } else {
                    let _ = writeln!(self.out, "{}", r.message);
                }
                ExitCode::Ok
            }
            Err(e) => {
                if json {
                    self.print_json(&error_report(operation, &e));
                }
                self.fail(&e)
            }
        }
    }

    /// [`Ctx::finish`] for the server-driven commands, which choose their own exit code.
    fn fleet_finish(
        mut self,
        json: bool,
        result: Result<(FleetReport, ExitCode), FleetError>,
    ) -> ExitCode {
        match result {
            Ok((r, code)) => {
                if json {
                    self.print_json(&r);
                } else {
                    let _ = writeln!(self.out, "{}", r.message);
                }
                code
            }
            Err(e) => self.fleet_failed(json, "fleet", &e),
        }
    }

    fn fleet_failed(mut self, json: bool, operation: &str, e: &FleetError) -> ExitCode {
        if json {
            self.print_json(&fleet_error_report(operation, e));
        }
        self.fleet_fail(e)
    }

    fn fail(self, e: &AgentError) -> ExitCode {
        let _ = writeln!(self.err, "klive: {e}");
        e.exit_code()
    }

    fn fleet_fail(self, e: &FleetError) -> ExitCode {
        let _ = writeln!(self.err, "klive: {e}");
        e.exit_code()
    }
}

/// `klive status`.
fn status<K: Kernel>(mut cx: Ctx<'_, K>, json: bool) -> ExitCode {
    // As root, finish an interrupted operation first so the report is the truth; a reader
    // without write access only sees that one is pending.
    let store = Store::new(cx.state_dir);
    if store.load_intent().ok().flatten().is_some()
        && let Err(e) = cx.agent(Options::default()).begin()
    {
        let _ = writeln!(
            cx.err,
            "klive: could not reconcile the interrupted operation: {e}"
        );
    }
    let s = match report::status(cx.kernel, &store) {
        Ok(s) => s,
        Err(e) => return cx.fail(&e),
    };
    let fleet = match cx.fleet(Options::default()).status() {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(cx.err, "klive: reading the fleet state: {e}");
            None
        }
    };
    let update_available = fleet.as_ref().is_some_and(|f| f.update_available);
    if json {
        cx.print_json(&StatusReport {
            status: s.clone(),
            fleet,
        });
    } else {
        let _ = write!(cx.out, "{}", report::render_status(&s));
        if let Some(f) = &fleet {
            let _ = write!(cx.out, "{}", render_fleet(f));
        }
    }
    if !s.support.livepatch {
        ExitCode::Unsupported
    } else if store.load_intent().ok().flatten().is_some() {
        ExitCode::Failed
    } else if update_available {
        ExitCode::UpdateAvailable
    } else {
        match &s.klive {
            Some(k) if k.state == klive_format::status::PatchState::Applied => ExitCode::Ok,
            Some(_) => ExitCode::Failed,
            None => ExitCode::NoPatch,
        }
    }
}

/// `klive apply FILE|BUNDLE`.
fn apply<K: Kernel>(
    cx: Ctx<'_, K>,
    file: &Path,
    root: Option<&Path>,
    level: Option<PatchLevel>,
    timeout: u64,
    json: bool,
) -> ExitCode {
    let outcome = if file.is_dir() {
        match cx.fleet(options(timeout)).apply_bundle(file, root, level) {
            Ok(o) => Ok(o),
            Err(FleetError::Agent(e)) => Err(e),
            Err(e) => return cx.fleet_failed(json, "apply", &e),
        }
    } else if root.is_some() || level.is_some() {
        let _ = writeln!(
            cx.err,
            "klive: --root and --level apply to a bundle directory, and {} is not one",
            file.display()
        );
        return ExitCode::Usage;
    } else {
        cx.agent(options(timeout)).apply(file)
    };
    let result = outcome.map(|o| match o {
        ApplyOutcome::Applied {
            module,
            level,
            replaced,
            took,
        } => OperationReport {
            message: applied_message(&module, level, &replaced, took),
            module: Some(module),
            level: Some(level),
            replaced,
            transition_ms: Some(took.as_millis() as u64),
            ..report("apply", "applied", String::new())
        },
        ApplyOutcome::AlreadyApplied { module, level } => OperationReport {
            message: format!("level {level} ({module}) is already applied; nothing to do"),
            module: Some(module),
            level: Some(level),
            ..report("apply", "already-applied", String::new())
        },
    });
    cx.finish(json, "apply", result)
}

/// `klive revert`.
fn revert<K: Kernel>(cx: Ctx<'_, K>, timeout: u64, json: bool) -> ExitCode {
    let result = cx.agent(options(timeout)).revert().map(|o| match o {
        RevertOutcome::Reverted { modules } => OperationReport {
            message: format!(
                "reverted to the original kernel code; unloaded {}",
                modules.join(", ")
            ),
            replaced: modules,
            ..report("revert", "reverted", String::new())
        },
        RevertOutcome::NothingApplied => report(
            "revert",
            "nothing-applied",
            "no klive patch is loaded; nothing to revert",
        ),
    });
    cx.finish(json, "revert", result)
}

/// `klive list`.
fn list<K: Kernel>(mut cx: Ctx<'_, K>, json: bool) -> ExitCode {
    let list = match report::list(cx.kernel, &Store::new(cx.state_dir)) {
        Ok(l) => l,
        Err(e) => return cx.fail(&e),
    };
    if json {
        cx.print_json(&list);
    } else {
        let _ = write!(cx.out, "{}", report::render_list(&list));
    }
    ExitCode::Ok
}

/// `klive uname [-r|-a]`.
fn uname<K: Kernel>(mut cx: Ctx<'_, K>, release: bool, all: bool, json: bool) -> ExitCode {
    let u = match report::uname(cx.kernel) {
        Ok(u) => u,
        Err(e) => return cx.fail(&e),
    };
    if json {
        cx.print_json(&u);
    } else {
        let shown = if all && !release {
            &u.all
        } else {
            &u.effective_release
        };
        let _ = writeln!(cx.out, "{shown}");
    }
    ExitCode::Ok
}

/// `klive register`.
fn register<K: Kernel>(cx: Ctx<'_, K>, args: Option<RegisterArgs>, json: bool) -> ExitCode {
    let Some(args) = args else {
        let _ = writeln!(cx.err, "klive: give --root FILE or --root-sha256 HEX");
        return ExitCode::Usage;
    };
    let result = cx.fleet(Options::default()).register(&args);
    cx.fleet_finish(json, result.map(|r| (r, ExitCode::Ok)))
}

/// `klive check`: exit 2 when the server asks for a change.
fn check<K: Kernel>(cx: Ctx<'_, K>, json: bool) -> ExitCode {
    let result = cx.fleet(Options::default()).check().map(|(r, due)| {
        let code = if due {
            ExitCode::UpdateAvailable
        } else {
            ExitCode::Ok
        };
        (r, code)
    });
    cx.fleet_finish(json, result)
}

/// `klive update`, retrying transient failures with a doubling back-off for `retry_for`
/// seconds.
fn update<K: Kernel>(cx: Ctx<'_, K>, retry_for: u64, timeout: u64, json: bool) -> ExitCode {
    let fleet = cx.fleet(options(timeout));
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let result = loop {
        match fleet.update() {
            Err(e)
                if e.is_transient()
                    && started.elapsed() + backoff <= Duration::from_secs(retry_for) =>
            {
                let _ = writeln!(cx.err, "klive: {e}; retrying in {} s", backoff.as_secs());
                let _ = cx.err.flush();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            other => break other,
        }
    };
    cx.fleet_finish(json, result.map(|r| (r, ExitCode::Ok)))
}

/// `klive daemon`: runs until SIGTERM or SIGINT.
fn daemon<K: Kernel>(cx: Ctx<'_, K>, interval: Option<u64>, timeout: u64) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            let _ = writeln!(cx.err, "klive: cannot watch signal {signal}: {e}");
            return ExitCode::Failed;
        }
    }
    let fleet = cx.fleet(options(timeout));
    let mut log = |line: &str| {
        let _ = writeln!(cx.err, "{line}");
        let _ = cx.err.flush();
    };
    let result = fleet.daemon(&stop, interval.map(Duration::from_secs), &mut log);
    match result {
        Ok(()) => ExitCode::Ok,
        Err(e) => cx.fleet_fail(&e),
    }
}

/// `klive bundle DIR`.
fn bundle<K: Kernel>(
    cx: Ctx<'_, K>,
    dir: &Path,
    build_id: Option<BuildId>,
    level: Option<PatchLevel>,
) -> ExitCode {
    match cx
        .fleet(Options::default())
        .export_bundle(dir, build_id, level)
    {
        Ok(message) => {
            let _ = writeln!(cx.out, "{message}");
            ExitCode::Ok
        }
        Err(e) => cx.fleet_fail(&e),
    }
}

/// `klive boot`: restore the last good level from the cache.
fn boot<K: Kernel>(cx: Ctx<'_, K>, timeout: u64, json: bool) -> ExitCode {
    let result = cx.agent(options(timeout)).boot().map(|o| match o {
        BootOutcome::Restored(ApplyOutcome::Applied {
            module,
            level,
            took,
            ..
        }) => OperationReport {
            message: format!(
                "restored level {level} ({module}) from the cache in {} ms",
                took.as_millis()
            ),
            module: Some(module),
            level: Some(level),
            transition_ms: Some(took.as_millis() as u64),
            ..report("boot", "applied", String::new())
        },
        BootOutcome::Restored(ApplyOutcome::AlreadyApplied { module, level }) => OperationReport {
            message: format!("level {level} ({module}) is already applied"),
            module: Some(module),
            level: Some(level),
            ..report("boot", "already-applied", String::new())
        },
        BootOutcome::DisabledOnCommandLine => report(
            "boot",
            "disabled",
            "klive.boot=0 is on the kernel command line: not restoring any level",
        ),
        BootOutcome::NothingToRestore => report(
            "boot",
            "nothing-to-restore",
            "no klive level was applied before; nothing to restore",
        ),
        BootOutcome::KernelChanged { level, was, now } => OperationReport {
            level: Some(level),
            ..report(
                "boot",
                "kernel-changed",
                format!(
                    "level {level} was for kernel build {} but this boot runs {}; not restoring it (the release for this kernel is needed)",
                    was.short(),
                    now.as_ref().map_or("an unknown build", |b| b.short())
                ),
            )
        },
    });
    cx.finish(json, "boot", result)
}

/// `klive boot --confirm`: this boot ended cleanly.
fn confirm_boot<K: Kernel>(cx: Ctx<'_, K>, timeout: u64, json: bool) -> ExitCode {
    let result = cx
        .agent(options(timeout))
        .confirm_boot(true)
        .map(|confirmed| {
            if confirmed {
                report(
                    "boot",
                    "confirmed",
                    "this boot ended cleanly: the level klive boot loaded is confirmed",
                )
            } else {
                report(
                    "boot",
                    "nothing-to-confirm",
                    "no level loaded by klive boot in this boot is on probation",
                )
            }
        });
    cx.finish(json, "boot", result)
}

/// A report of `operation` that names no module, level or replaced modules and carries no
/// error; each outcome fills in what it has.
fn report(operation: &str, result: &str, message: impl Into<String>) -> OperationReport {
    OperationReport {
        operation: operation.into(),
        result: result.into(),
        module: None,
        level: None,
        replaced: vec![],
        transition_ms: None,
        message: message.into(),
        error: None,
    }
}

fn render_fleet(f: &FleetStatus) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "server:        {} (host {})", f.server, f.host_id);
    let _ = writeln!(o, "channel:       {}", f.channel);
    let _ = writeln!(
        o,
        "last check-in: {}{}",
        f.last_checkin_at.as_deref().unwrap_or("never"),
        match (&f.last_action, &f.target_level, &f.reason) {
            (Some(a), t, Some(r)) => format!(
                " ({}{}: {r})",
                match a {
                    Action::None => "nothing to do",
                    Action::Apply => "apply",
                    Action::Revert => "revert",
                },
                t.map(|l| format!(" level {l}")).unwrap_or_default()
            ),
            _ => String::new(),
        }
    );
    if f.update_available {
        let _ = writeln!(o, "update:        available: run `klive update`");
    }
    if let Some(e) = &f.last_error {
        let _ = writeln!(o, "last failure:  {e}");
    }
    o
}

fn fleet_error_report(operation: &str, e: &FleetError) -> OperationReport {
    let code = match e {
        FleetError::Agent(a) => return error_report(operation, a),
        FleetError::Refused { .. } | FleetError::Tuf { .. } => "refused",
        FleetError::NotRegistered => "not-registered",
        FleetError::Net(_) => "network",
        FleetError::Server { .. } => "server",
        FleetError::Store(_) => "state",
        FleetError::Usage(_) => "usage",
    };
    failed(operation, e.to_string(), code, e.exit_code(), vec![])
}

fn error_report(operation: &str, e: &AgentError) -> OperationReport {
    let code = match e {
        AgentError::Refused { .. } => "refused",
        AgentError::Unsupported { .. } => "unsupported",
        AgentError::Stalled { .. } => "stalled-reversed",
        AgentError::Kernel { .. } => "kernel",
        AgentError::Store(_) => "state",
        AgentError::Other(_) => "failed",
    };
    let stalled_tasks = match e {
        AgentError::Stalled { tasks, .. } => tasks
            .iter()
            .map(|t| StalledTaskReport {
                pid: t.pid,
                tid: t.tid,
                comm: t.comm.clone(),
                stack: t.stack.clone(),
            })
            .collect(),
        _ => vec![],
    };
    failed(operation, e.to_string(), code, e.exit_code(), stalled_tasks)
}

/// The `--json` report of a failed `operation`.
fn failed(
    operation: &str,
    message: String,
    code: &str,
    exit_code: ExitCode,
    stalled_tasks: Vec<StalledTaskReport>,
) -> OperationReport {
    OperationReport {
        error: Some(ErrorReport {
            code: code.into(),
            exit_code: exit_code as i32,
            stalled_tasks,
        }),
        ..report(operation, "failed", message)
    }
}

fn print_json<T: serde::Serialize>(out: &mut dyn Write, value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            let _ = writeln!(out, "{s}");
        }
        Err(e) => {
            let _ = writeln!(out, "{{\"error\": \"serialising the report failed: {e}\"}}");
        }
    }
}
