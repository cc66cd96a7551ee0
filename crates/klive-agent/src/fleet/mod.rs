//! The agent as a member of a fleet: `klive register`, `check`, `update`, `daemon`,
//! `bundle`, and `apply DIR` for air-gapped hosts.
//!
//! An update is: check in → the server names a target → load the channel's TUF repository
//! (pinned root, per-channel datastore against rollback, expiry against freeze) → read the
//! release's manifest and module through it (length and hashes from signed metadata) →
//! check the manifest (`validate`, level, build-id of the running kernel, digest and size of
//! the module) → stage the bytes → [`Agent::apply_verified`] reads the staged file once,
//! checks those bytes against the verified digest, and loads them from its cache. The
//! outcome goes to the server in a check-in right after (`applied`, `last_error`).
//!
//! One file a concern: `register` (`klive register`), `checkin` (`check`, `update`),
//! `daemon`, `tuf` (the channel's signed repository), `verify` (a release read through it
//! and checked), `bundle` (air-gapped hosts), `api` (the server's JSON exchanges and its
//! error answers).

mod api;
mod bundle;
mod checkin;
mod daemon;
mod register;
mod tuf;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use klive_format::api::{AppliedReport, FleetRegistration, FleetReport, FleetStatus};
use klive_format::release::ReleaseManifest;
use klive_kernel::Kernel;

use crate::config::FleetFiles;
use crate::ops::{Agent, ExpectedModule, Options};
use crate::store::StoreError;
use crate::transport::{Connector, Http, NetError, ServerTrust};
use crate::{AgentError, ExitCode, report};

pub use checkin::update_due;
pub use daemon::{jitter, sleep_unless_stopped};

/// Check-in interval when the server has not named one yet.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(
        "this host is not registered with a klive server; run `klive register https://SERVER --token TOKEN --ca CA.pem --root-sha256 HEX` first"
    )]
    NotRegistered,
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the server refused {what}: {message} ({code}, HTTP {status}); {hint}")]
    Server {
        what: String,
        status: u16,
        code: String,
        message: String,
        hint: String,
    },
    /// Verification refused the release: nothing reached the kernel.
    #[error("{what}; nothing was loaded: {hint}")]
    Refused { what: String, hint: String },
    /// Loading or checking the channel's signed metadata failed.
    #[error("verifying {what} failed: {detail}; nothing was loaded: {hint}")]
    Tuf {
        what: String,
        detail: String,
        hint: String,
        transient: bool,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Usage(String),
}

impl From<klive_kernel::SysfsError> for FleetError {
    fn from(e: klive_kernel::SysfsError) -> Self {
        FleetError::Agent(e.into())
    }
}

impl FleetError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            FleetError::Refused { .. } | FleetError::Tuf { .. } => ExitCode::Refused,
            FleetError::Agent(e) => e.exit_code(),
            FleetError::Usage(_) => ExitCode::Usage,
            _ => ExitCode::Failed,
        }
    }

    /// The server could not be reached; a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            FleetError::Net(e) => e.is_transient(),
            FleetError::Tuf { transient, .. } => *transient,
            // 5xx while a server restarts or its database is busy.
            FleetError::Server { status, code, .. } => {
                *status >= 500 && code != "blob_corrupt" && code != "internal"
            }
            _ => false,
        }
    }

    fn refused(what: impl Into<String>, hint: impl Into<String>) -> Self {
        FleetError::Refused {
            what: what.into(),
            hint: hint.into(),
        }
    }
}

/// How `klive register` pins the TUF root.
#[derive(Debug, Clone)]
pub enum RootPin {
    /// The server's `root.json`, copied out of band.
    File(PathBuf),
    /// SHA-256 (hex) of the root, printed by `klive-server keys init`; the root itself is
    /// fetched from the server and must match.
    Sha256(String),
}

#[derive(Debug, Clone)]
pub struct RegisterArgs {
    pub server: String,
    pub token: String,
    pub ca: Option<PathBuf>,
    pub root: RootPin,
    pub hostname: Option<String>,
    pub allow_plain_http: bool,
}

/// A release read through TUF and checked, staged on disk for the agent core.
#[derive(Debug)]
pub struct Staged {
    pub path: PathBuf,
    pub expected: ExpectedModule,
    pub manifest: ReleaseManifest,
}

pub struct Fleet<'a, K: Kernel> {
    kernel: &'a K,
    agent: Agent<'a, K>,
    files: FleetFiles,
    net: &'a dyn Connector,
    lock_wait: Duration,
}

impl<K: Kernel> std::fmt::Debug for Fleet<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("files", &self.files).finish()
    }
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

impl<'a, K: Kernel> Fleet<'a, K> {
    pub fn new(kernel: &'a K, state_dir: &Path, opts: Options, net: &'a dyn Connector) -> Self {
        let lock_wait = opts.lock_wait;
        Self {
            kernel,
            agent: Agent::new(kernel, state_dir, opts),
            files: FleetFiles::new(state_dir),
            net,
            lock_wait,
        }
    }

    pub fn files(&self) -> &FleetFiles {
        &self.files
    }

    fn registration(&self) -> Result<FleetRegistration, FleetError> {
        self.files.registration()?.ok_or(FleetError::NotRegistered)
    }

    fn connect(&self, reg: &FleetRegistration) -> Result<Arc<dyn Http>, FleetError> {
        Ok(self.net.connect(ServerTrust {
            ca_pem: reg.ca_pem.as_deref(),
        })?)
    }

    /// The channel the server last placed this host in (an admin may move it).
    fn channel(&self, reg: &FleetRegistration) -> Result<String, FleetError> {
        Ok(self
            .files
            .checkin_state()?
            .last_answer
            .map(|a| a.channel)
            .unwrap_or_else(|| reg.channel.clone()))
    }

    fn applied(&self) -> Result<Option<AppliedReport>, FleetError> {
        let s = report::status(self.kernel, self.agent.store())?;
        Ok(s.klive.map(|k| AppliedReport {
            level: k.level,
            state: k.state,
        }))
    }

    /// A report of `operation` with what the last check-in answered; the caller adds the
    /// message.
    fn report(&self, reg: &FleetRegistration, operation: &str, result: &str) -> FleetReport {
        let answer = self.files.checkin_state().ok().and_then(|s| s.last_answer);
        FleetReport {
            operation: operation.into(),
            result: result.into(),
            server: reg.server.clone(),
            host_id: reg.host_id.clone(),
            channel: answer
                .as_ref()
                .map_or_else(|| reg.channel.clone(), |a| a.channel.clone()),
            action: answer.as_ref().map(|a| a.action),
            target: answer.and_then(|a| a.target),
            applied_level: self.applied().ok().flatten().map(|a| a.level),
            message: String::new(),
        }
    }

    /// What `klive status` adds for a registered host.
    pub fn status(&self) -> Result<Option<FleetStatus>, FleetError> {
        let Some(reg) = self.files.registration()? else {
            return Ok(None);
        };
        let state = self.files.checkin_state()?;
        let applied = self.applied()?;
        let answer = state.last_answer.as_ref();
        Ok(Some(FleetStatus {
            server: reg.server,
            host_id: reg.host_id,
            channel: answer.map_or(reg.channel, |a| a.channel.clone()),
            tuf_root_sha256: reg.tuf_root_sha256,
            last_checkin_at: state.last_checkin_at.clone(),
            last_action: answer.map(|a| a.action),
            target_level: answer.and_then(|a| a.target.as_ref().map(|t| t.level)),
            reason: answer.map(|a| a.reason.clone()),
            update_available: answer.is_some_and(|a| update_due(a, applied.as_ref())),
            last_error: state.last_error,
        }))
    }
}
