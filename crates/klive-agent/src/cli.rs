//! The `klive` command line. `run` takes the kernel as a parameter, so tests drive the whole
//! CLI in-process against the fake kernel.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use klive_format::status::{ErrorReport, OperationReport, StalledTaskReport};
use klive_kernel::{Kernel, livepatch};

use crate::ops::{Agent, ApplyOutcome, BootOutcome, Options, RevertOutcome};
use crate::report;
use crate::store::Store;
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
    /// Apply a klive livepatch module (replacing the current level atomically).
    Apply {
        /// The `.ko` file.
        file: PathBuf,
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
    /// Every livepatch module, klive's and foreign, with its state.
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
    /// At boot: re-apply the last good level from the local cache when the kernel matches.
    Boot {
        #[arg(long, default_value_t = 60)]
        timeout: u64,
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
    execute(cli, kernel, out, err) as i32
}

fn options(timeout: u64) -> Options {
    Options {
        transition_timeout: Duration::from_secs(timeout),
        ..Options::default()
    }
}

fn execute<K: Kernel>(cli: Cli, kernel: &K, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let state_dir = cli.state_dir;
    match cli.command {
        Command::Status { json } => status(kernel, &state_dir, json, out, err),
        Command::List { json } => {
            let patches = match livepatch::patches(kernel.root()) {
                Ok(p) => p
                    .iter()
                    .map(livepatch::Patch::to_report)
                    .collect::<Vec<_>>(),
                Err(e) => return fail(err, &AgentError::from(e)),
            };
            if json {
                print_json(out, &patches);
            } else {
                let _ = write!(out, "{}", report::render_list(&patches));
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
            timeout,
            json,
        } => {
            let agent = Agent::new(kernel, &state_dir, options(timeout));
            let result = agent.apply(&file).map(|o| match o {
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
        Command::Boot { timeout, json } => {
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
    if json {
        print_json(out, &s);
    } else {
        let _ = write!(out, "{}", report::render_status(&s));
    }
    if !s.support.livepatch {
        ExitCode::Unsupported
    } else if store.load_intent().ok().flatten().is_some() {
        ExitCode::Failed
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
