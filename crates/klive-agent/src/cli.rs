//! The `klive` command line. `run` takes the kernel as a parameter, so tests drive the whole
//! CLI in-process against the fake kernel.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use klive_format::api::{Action, FleetReport, FleetStatus, StatusReport};
use klive_format::status::{ErrorReport, OperationReport, StalledTaskReport};
use klive_format::{BuildId, PatchLevel};
use klive_kernel::Kernel;

use crate::fleet::{Fleet, FleetError, RegisterArgs, RootPin};
use crate::ops::{Agent, ApplyOutcome, BootOutcome, Options, RevertOutcome};
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

fn execute<K: Kernel>(
    cli: Cli,
    kernel: &K,
    net: &dyn Connector,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let state_dir = cli.state_dir;
    match cli.command {
        Command::Status { json } => status(kernel, &state_dir, net, json, out, err),
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
            let root = match (root, root_sha256) {
                (Some(file), _) => RootPin::File(file),
                (None, Some(sha)) => RootPin::Sha256(sha),
                (None, None) => {
                    let _ = writeln!(err, "klive: give --root FILE or --root-sha256 HEX");
                    return ExitCode::Usage;
                }
            };
            let fleet = Fleet::new(kernel, &state_dir, Options::default(), net);
            let result = fleet.register(&RegisterArgs {
                server,
                token,
                ca,
                root,
                hostname,
                allow_plain_http,
            });
            fleet_finish(out, err, json, result.map(|r| (r, ExitCode::Ok)))
        }
        Command::Check { json } => {
            let fleet = Fleet::new(kernel, &state_dir, Options::default(), net);
            let result = fleet.check().map(|(r, due)| {
                let code = if due {
                    ExitCode::UpdateAvailable
                } else {
                    ExitCode::Ok
                };
                (r, code)
            });
            fleet_finish(out, err, json, result)
        }
        Command::Update {
            retry_for,
            timeout,
            json,
        } => {
            let fleet = Fleet::new(kernel, &state_dir, options(timeout), net);
            let started = Instant::now();
            let mut backoff = Duration::from_secs(1);
            let result = loop {
                match fleet.update() {
                    Err(e)
                        if e.is_transient()
                            && started.elapsed() + backoff <= Duration::from_secs(retry_for) =>
                    {
                        let _ = writeln!(err, "klive: {e}; retrying in {} s", backoff.as_secs());
                        let _ = err.flush();
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                    other => break other,
                }
            };
            fleet_finish(out, err, json, result.map(|r| (r, ExitCode::Ok)))
        }
        Command::Daemon { interval, timeout } => {
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
                    let _ = writeln!(err, "klive: cannot watch signal {signal}: {e}");
                    return ExitCode::Failed;
                }
            }
            let fleet = Fleet::new(kernel, &state_dir, options(timeout), net);
            let mut log = |line: &str| {
                let _ = writeln!(err, "{line}");
                let _ = err.flush();
            };
            match fleet.daemon(&stop, interval.map(Duration::from_secs), &mut log) {
                Ok(()) => ExitCode::Ok,
                Err(e) => fleet_fail(err, &e),
            }
        }
        Command::Bundle {
            dir,
            build_id,
            level,
        } => {
            let fleet = Fleet::new(kernel, &state_dir, Options::default(), net);
            match fleet.export_bundle(&dir, build_id, level) {
                Ok(message) => {
                    let _ = writeln!(out, "{message}");
                    ExitCode::Ok
                }
                Err(e) => fleet_fail(err, &e),
            }
        }
        Command::List { json } => {
            let list = match report::list(kernel, &Store::new(&state_dir)) {
                Ok(l) => l,
                Err(e) => return fail(err, &e),
            };
            if json {
                print_json(out, &list);
            } else {
                let _ = write!(out, "{}", report::render_list(&list));
            }
            ExitCode::Ok
        }
        Command::Uname { release, all, json } => match report::uname(kernel) {
            Ok(u) if json => {
                print_json(out, &u);
                ExitCode::Ok
            }
            Ok(u) => {
                let _ = writeln!(
                    out,
                    "{}",
                    if all && !release {
                        &u.all
                    } else {
                        &u.effective_release
                    }
                );
                ExitCode::Ok
            }
            Err(e) => fail(err, &e),
        },
        Command::Apply {
            file,
            root,
            level,
            timeout,
            json,
        } => {
            let agent = Agent::new(kernel, &state_dir, options(timeout));
            let result = if file.is_dir() {
                let fleet = Fleet::new(kernel, &state_dir, options(timeout), net);
                match fleet.apply_bundle(&file, root.as_deref(), level) {
                    Ok(o) => Ok(o),
                    Err(FleetError::Agent(e)) => Err(e),
                    Err(e) => {
                        let code = e.exit_code();
                        if json {
                            print_json(out, &fleet_error_report("apply", &e));
                        }
                        let _ = writeln!(err, "klive: {e}");
                        return code;
                    }
                }
            } else if root.is_some() || level.is_some() {
                let _ = writeln!(
                    err,
                    "klive: --root and --level apply to a bundle directory, and {} is not one",
                    file.display()
                );
                return ExitCode::Usage;
            } else {
                agent.apply(&file)
            };
            let result = result.map(|o| match o {
                ApplyOutcome::Applied {
                    module,
                    level,
                    replaced,
                    took,
                } => OperationReport {
                    operation: "apply".into(),
                    result: "applied".into(),
                    message: format!(
                        "level {level} applied ({module}) in {} ms{}",
                        took.as_millis(),
                        if replaced.is_empty() {
                            String::new()
                        } else {
                            format!("; replaced and unloaded {}", replaced.join(", "))
                        }
                    ),
                    module: Some(module),
                    level: Some(level),
                    replaced,
                    transition_ms: Some(took.as_millis() as u64),
                    error: None,
                },
                ApplyOutcome::AlreadyApplied { module, level } => OperationReport {
                    operation: "apply".into(),
                    result: "already-applied".into(),
                    message: format!("level {level} ({module}) is already applied; nothing to do"),
                    module: Some(module),
                    level: Some(level),
                    replaced: vec![],
                    transition_ms: None,
                    error: None,
                },
            });
            finish(out, err, json, "apply", result)
        }
        Command::Revert { timeout, json } => {
            let agent = Agent::new(kernel, &state_dir, options(timeout));
            let result = agent.revert().map(|o| match o {
                RevertOutcome::Reverted { modules } => OperationReport {
                    operation: "revert".into(),
                    result: "reverted".into(),
                    message: format!(
                        "reverted to the original kernel code; unloaded {}",
                        modules.join(", ")
                    ),
                    module: None,
                    level: None,
                    replaced: modules,
                    transition_ms: None,
                    error: None,
                },
                RevertOutcome::NothingApplied => OperationReport {
                    operation: "revert".into(),
                    result: "nothing-applied".into(),
                    message: "no klive patch is loaded; nothing to revert".into(),
                    module: None,
                    level: None,
                    replaced: vec![],
                    transition_ms: None,
                    error: None,
                },
            });
            finish(out, err, json, "revert", result)
        }
        Command::Boot {
            timeout,
            confirm: true,
            json,
        } => {
            let agent = Agent::new(kernel, &state_dir, options(timeout));
            let result = agent.confirm_boot(true).map(|confirmed| OperationReport {
                operation: "boot".into(),
                result: if confirmed {
                    "confirmed"
                } else {
                    "nothing-to-confirm"
                }
                .into(),
                module: None,
                level: None,
                replaced: vec![],
                transition_ms: None,
                message: if confirmed {
                    "this boot ended cleanly: the level klive boot loaded is confirmed".into()
                } else {
                    "no level loaded by klive boot in this boot is on probation".into()
                },
                error: None,
            });
            finish(out, err, json, "boot", result)
        }
        Command::Boot {
            timeout,
            confirm: false,
            json,
        } => {
            let agent = Agent::new(kernel, &state_dir, options(timeout));
            let result = agent.boot().map(|o| {
                let mut r = OperationReport {
                    operation: "boot".into(),
                    result: String::new(),
                    module: None,
                    level: None,
                    replaced: vec![],
                    transition_ms: None,
                    message: String::new(),
                    error: None,
                };
                match o {
                    BootOutcome::Restored(ApplyOutcome::Applied { module, level, took, .. }) => {
                        r.result = "applied".into();
                        r.message = format!("restored level {level} ({module}) from the cache in {} ms", took.as_millis());
                        r.module = Some(module);
                        r.level = Some(level);
                        r.transition_ms = Some(took.as_millis() as u64);
                    }
                    BootOutcome::Restored(ApplyOutcome::AlreadyApplied { module, level }) => {
                        r.result = "already-applied".into();
                        r.message = format!("level {level} ({module}) is already applied");
                        r.module = Some(module);
                        r.level = Some(level);
                    }
                    BootOutcome::DisabledOnCommandLine => {
                        r.result = "disabled".into();
                        r.message = "klive.boot=0 is on the kernel command line: not restoring any level".into();
                    }
                    BootOutcome::NothingToRestore => {
                        r.result = "nothing-to-restore".into();
                        r.message = "no klive level was applied before; nothing to restore".into();
                    }
                    BootOutcome::KernelChanged { level, was, now } => {
                        r.result = "kernel-changed".into();
                        r.level = Some(level);
                        r.message = format!(
                            "level {level} was for kernel build {} but this boot runs {}; not restoring it (the release for this kernel is needed)",
                            was.short(),
                            now.as_ref().map_or("an unknown build", |b| b.short())
                        );
                    }
                }
                r
            });
            finish(out, err, json, "boot", result)
        }
    }
}

fn status<K: Kernel>(
    kernel: &K,
    state_dir: &std::path::Path,
    net: &dyn Connector,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    // As root, finish an interrupted operation first so the report is the truth; a reader
    // without write access only sees that one is pending.
    let store = Store::new(state_dir);
    if store.load_intent().ok().flatten().is_some() {
        let agent = Agent::new(kernel, state_dir, Options::default());
        if let Err(e) = agent.begin() {
            let _ = writeln!(
                err,
                "klive: could not reconcile the interrupted operation: {e}"
            );
        }
    }
    let s = match report::status(kernel, &store) {
        Ok(s) => s,
        Err(e) => return fail(err, &e),
    };
    let fleet = match Fleet::new(kernel, state_dir, Options::default(), net).status() {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(err, "klive: reading the fleet state: {e}");
            None
        }
    };
    let update_available = fleet.as_ref().is_some_and(|f| f.update_available);
    if json {
        print_json(
            out,
            &StatusReport {
                status: s.clone(),
                fleet,
            },
        );
    } else {
        let _ = write!(out, "{}", report::render_status(&s));
        if let Some(f) = &fleet {
            let _ = write!(out, "{}", render_fleet(f));
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

fn finish(
    out: &mut dyn Write,
    err: &mut dyn Write,
    json: bool,
    operation: &str,
    result: Result<OperationReport, AgentError>,
) -> ExitCode {
    match result {
        Ok(r) => {
            if json {
                print_json(out, &r);
            } else {
                let _ = writeln!(out, "{}", r.message);
            }
            ExitCode::Ok
        }
        Err(e) => {
            if json {
                print_json(out, &error_report(operation, &e));
            }
            fail(err, &e)
        }
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

fn fleet_finish(
    out: &mut dyn Write,
    err: &mut dyn Write,
    json: bool,
    result: Result<(FleetReport, ExitCode), FleetError>,
) -> ExitCode {
    match result {
        Ok((r, code)) => {
            if json {
                print_json(out, &r);
            } else {
                let _ = writeln!(out, "{}", r.message);
            }
            code
        }
        Err(e) => {
            if json {
                print_json(out, &fleet_error_report("fleet", &e));
            }
            fleet_fail(err, &e)
        }
    }
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
    OperationReport {
        operation: operation.into(),
        result: "failed".into(),
        module: None,
        level: None,
        replaced: vec![],
        transition_ms: None,
        message: e.to_string(),
        error: Some(ErrorReport {
            code: code.into(),
            exit_code: e.exit_code() as i32,
            stalled_tasks: vec![],
        }),
    }
}

fn fleet_fail(err: &mut dyn Write, e: &FleetError) -> ExitCode {
    let _ = writeln!(err, "klive: {e}");
    e.exit_code()
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
    OperationReport {
        operation: operation.into(),
        result: "failed".into(),
        module: None,
        level: None,
        replaced: vec![],
        transition_ms: None,
        message: e.to_string(),
        error: Some(ErrorReport {
            code: code.into(),
            exit_code: e.exit_code() as i32,
            stalled_tasks,
        }),
    }
}

fn fail(err: &mut dyn Write, e: &AgentError) -> ExitCode {
    let _ = writeln!(err, "klive: {e}");
    e.exit_code()
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
