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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use klive_format::api::{
    Action, AppliedReport, CheckIn, CheckInResponse, ErrorBody, FLEET_FORMAT, FleetRegistration,
    FleetReport, FleetStatus, RegisterRequest, RegisterResponse, TargetRelease,
    tuf_manifest_target, tuf_module_target,
};
use klive_format::digest::{hex, sha256_hex};
use klive_format::release::ReleaseManifest;
use klive_format::{BuildId, PatchLevel};
use klive_kernel::{Kernel, identity};
use tough::{IntoVec, RepositoryLoader, TargetName};
use url::Url;

use crate::config::{FleetFiles, is_safe_name};
use crate::ops::{Agent, ApplyOutcome, ExpectedModule, Options, RevertOutcome, applied_message};
use crate::store::{Durability, StoreError, write_atomic_private};
use crate::transport::{
    BundleTransport, Connector, Http, Method, NetError, Request, ServerTransport, ServerTrust,
};
use crate::{AgentError, ExitCode, report};

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

fn now_ms() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0)
}

/// A current-thread runtime for tough's async API; nothing else runs on it.
fn block_on<F: Future>(what: &str, f: F) -> Result<F::Output, FleetError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| {
            FleetError::Agent(AgentError::Other(format!(
                "starting the runtime for {what}: {e}; check the process limits"
            )))
        })?;
    Ok(rt.block_on(f))
}

/// Every message in an error's source chain, for errors that wrap the real cause.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn transient_in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(n) = c.downcast_ref::<NetError>() {
            return n.is_transient();
        }
        cur = c.source();
    }
    false
}

fn tuf_error(what: &str, e: tough::error::Error) -> FleetError {
    let detail = chain(&e);
    let transient = transient_in_chain(&e);
    let lower = detail.to_lowercase();
    let hint = if transient {
        "the server did not answer; retry later (the daemon does)"
    } else if lower.contains("blob_corrupt") {
        "the server's stored module does not match its digest (tampered or corrupted storage): report it to the server's operator"
    } else if lower.contains("expired") {
        "the signed metadata has expired (a stale mirror or a server that stopped re-signing): ask the server's operator to check it"
    } else if lower.contains("version") && lower.contains("previously") {
        "the server offered older metadata than this host has seen (rollback): ask the server's operator to check it"
    } else if lower.contains("hash") || lower.contains("length") || lower.contains("digest") {
        "a file did not match its signed hash or length (tampered or corrupted in storage or transit): report it to the server's operator"
    } else if lower.contains("signature") || lower.contains("threshold") || lower.contains("key") {
        "the metadata is not signed by the keys of the root this host trusts (the pinned one, or a newer one it verified since): check that this host registered with the right server and that the server does not sign with keys a root rotation retired"
    } else {
        "check the server and retry; report it to the server's operator if it persists"
    };
    FleetError::Tuf {
        what: what.to_owned(),
        detail,
        hint: hint.to_owned(),
        transient,
    }
}

/// Parses an error answer into [`FleetError::Server`].
fn server_error(what: &str, status: u16, body: &[u8]) -> FleetError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (
            "unknown".to_owned(),
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        ),
    };
    let hint = match (status, code.as_str()) {
        (401, "enrollment_token_invalid") => {
            "ask the server's admin for a new enrollment token (`klive-server enroll-token create`)"
        }
        (401, _) => "this host's credential was revoked or is unknown: register it again",
        (409, "replayed_checkin") => {
            "another check-in with a higher sequence was accepted; the next one will be numbered above it"
        }
        (s, "blob_corrupt") if s >= 500 => {
            "the server's stored module does not match its digest (tampered or corrupted storage): report it to the server's operator"
        }
        (s, _) if s >= 500 => "the server failed; retry later",
        _ => "check the command and the server's API.md",
    };
    FleetError::Server {
        what: what.to_owned(),
        status,
        code,
        message,
        hint: hint.to_owned(),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, FleetError> {
    serde_json::from_slice(body).map_err(|e| FleetError::Server {
        what: what.to_owned(),
        status: 200,
        code: "bad_answer".into(),
        message: format!("the answer is not the expected JSON ({e})"),
        hint: "check that the URL names a klive server of a compatible version".into(),
    })
}

/// POSTs the JSON `body` to `url` and reads the JSON answer; `what` names the exchange in
/// errors.
fn post_json<T: serde::de::DeserializeOwned>(
    http: &dyn Http,
    url: &str,
    bearer: Option<&str>,
    body: &[u8],
    what: &str,
) -> Result<T, FleetError> {
    let r = http.request(Request {
        method: Method::Post,
        url,
        bearer,
        body: Some(body),
    })?;
    if r.status != 200 {
        return Err(server_error(what, r.status, &r.body));
    }
    parse_json(what, &r.body)
}

/// The channel name becomes a directory name under the state dir: refuse anything else.
fn check_channel(channel: &str) -> Result<(), FleetError> {
    if is_safe_name(channel) {
        Ok(())
    } else {
        Err(FleetError::refused(
            format!("the server named the channel {channel:?}"),
            "that is not a channel name the agent accepts; report it to the server's operator",
        ))
    }
}

/// Normalises `https://host[:port][/]` and refuses what cannot be a server base URL.
fn server_url(s: &str, allow_plain_http: bool) -> Result<String, FleetError> {
    let url = Url::parse(s).map_err(|e| {
        FleetError::Usage(format!(
            "{s:?} is not a URL ({e}); give https://HOST[:PORT]"
        ))
    })?;
    match url.scheme() {
        "https" => {}
        "http" if allow_plain_http => {}
        "http" => {
            return Err(FleetError::Usage(format!(
                "{s} is plain HTTP: the credential would cross the network in clear; use https (or --allow-plain-http on a trusted network)"
            )));
        }
        other => {
            return Err(FleetError::Usage(format!(
                "{s}: scheme {other} is not supported; give https://HOST[:PORT]"
            )));
        }
    }
    if url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || (url.path() != "/" && !url.path().is_empty())
    {
        return Err(FleetError::Usage(format!(
            "{s} must be only scheme, host and port, e.g. https://patch.example.com:8750"
        )));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Jitter for check-in intervals: uniform in [0.75, 1.25) × `base`, so a fleet restarted at
/// once spreads out. Per-process random keys of the std hasher are randomness enough.
pub fn jitter(base: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
    let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(0.75 + unit * 0.5)
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

    /// `klive register`.
    pub fn register(&self, args: &RegisterArgs) -> Result<FleetReport, FleetError> {
        let server = server_url(&args.server, args.allow_plain_http)?;
        let ca_pem = match (&args.ca, server.starts_with("https://")) {
            (Some(path), _) => Some(std::fs::read_to_string(path).map_err(|e| {
                FleetError::Usage(format!(
                    "cannot read the CA file {}: {e}; give the server's ca.pem",
                    path.display()
                ))
            })?),
            (None, true) => {
                return Err(FleetError::Usage(
                    "--ca FILE is required for https: the server's DATA/tls/ca.pem (the system store is never trusted)".into(),
                ));
            }
            (None, false) => None,
        };
        let _lock = self.files.lock(self.lock_wait)?;
        let http = self.net.connect(ServerTrust {
            ca_pem: ca_pem.as_deref(),
        })?;
        let root = match &args.root {
            RootPin::File(path) => std::fs::read(path).map_err(|e| {
                FleetError::Usage(format!(
                    "cannot read the TUF root {}: {e}; copy the server's DATA/tuf/root.json",
                    path.display()
                ))
            })?,
            RootPin::Sha256(want) => {
                let want = want.trim().to_lowercase();
                if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(FleetError::Usage(format!(
                        "--root-sha256 {want:?} is not 64 hex digits; copy it from `klive-server keys init`"
                    )));
                }
                let url = format!("{server}/api/v1/tuf/root.json");
                let r = http.request(Request {
                    method: Method::Get,
                    url: &url,
                    bearer: None,
                    body: None,
                })?;
                if r.status != 200 {
                    return Err(server_error("the TUF root request", r.status, &r.body));
                }
                let got = sha256_hex(&r.body);
                if got != want {
                    return Err(FleetError::refused(
                        format!("the server's TUF root has sha256 {got}, not the pinned {want}"),
                        "nothing was registered: check the fingerprint with the server's operator",
                    ));
                }
                r.body
            }
        };
        let tuf_root = String::from_utf8(root.clone()).ok().filter(|_| {
            serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(&root).is_ok()
        });
        let Some(tuf_root) = tuf_root else {
            return Err(FleetError::Usage(
                "the TUF root is not a signed root.json; copy DATA/tuf/root.json from the server"
                    .into(),
            ));
        };
        let root_kernel = self.kernel.root();
        let hostname = match &args.hostname {
            Some(h) => h.clone(),
            None => root_kernel
                .read_optional("/proc/sys/kernel/hostname")?
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into()),
        };
        let body = serde_json::to_vec(&RegisterRequest {
            enrollment_token: args.token.trim().to_owned(),
            hostname,
            kernel: identity::kernel_info(root_kernel)?,
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })
        .map_err(|e| FleetError::Usage(format!("encoding the request: {e}")))?;
        let url = format!("{server}/api/v1/register");
        let answer: RegisterResponse = post_json(&*http, &url, None, &body, "the registration")?;
        check_channel(&answer.channel)?;
        let reg = FleetRegistration {
            format: FLEET_FORMAT,
            server: server.clone(),
            host_id: answer.host_id.clone(),
            credential: answer.credential,
            channel: answer.channel.clone(),
            ca_pem,
            tuf_root_sha256: sha256_hex(tuf_root.as_bytes()),
            tuf_root,
            registered_at: now(),
        };
        self.files.save_registration(&reg)?;
        Ok(FleetReport {
            operation: "register".into(),
            result: "registered".into(),
            message: format!(
                "registered with {server} as host {} in channel {}; `klive update` fetches its releases",
                reg.host_id, reg.channel
            ),
            server,
            host_id: reg.host_id,
            channel: reg.channel,
            action: None,
            target: None,
            applied_level: self.applied()?.map(|a| a.level),
        })
    }

    fn applied(&self) -> Result<Option<AppliedReport>, FleetError> {
        let s = report::status(self.kernel, self.agent.store())?;
        Ok(s.klive.map(|k| AppliedReport {
            level: k.level,
            state: k.state,
        }))
    }

    /// One check-in; the answer is recorded as the last one.
    fn checkin(
        &self,
        reg: &FleetRegistration,
        http: &dyn Http,
        last_error: Option<String>,
    ) -> Result<CheckInResponse, FleetError> {
        // A boot that has run this long since `klive boot` loaded its level is no longer
        // suspect (crash-loop guard); best effort, never a reason to skip the check-in.
        let _ = self.agent.confirm_boot(false);
        let root = self.kernel.root();
        let uptime_secs = root
            .read_optional("/proc/uptime")?
            .and_then(|u| {
                u.split_whitespace()
                    .next()
                    .and_then(|s| s.parse::<f64>().ok())
            })
            .map_or(0, |s| s as u64);
        let boot_id = root
            .read_optional("/proc/sys/kernel/random/boot_id")?
            .map(|b| b.trim().to_owned())
            .unwrap_or_default();
        let applied = self.applied()?;
        let kernel = identity::kernel_info(root)?;
        let sequence = self.files.next_sequence(now_ms())?;
        let body = serde_json::to_vec(&CheckIn {
            sequence,
            kernel,
            applied,
            uptime_secs,
            boot_id,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            last_error,
            taint: identity::taint(root).ok().map(|t| t.value),
        })
        .map_err(|e| FleetError::Usage(format!("encoding the check-in: {e}")))?;
        let url = format!("{}/api/v1/checkin", reg.server);
        let answer: CheckInResponse =
            post_json(http, &url, Some(&reg.credential), &body, "the check-in")?;
        check_channel(&answer.channel)?;
        let mut state = self.files.checkin_state()?;
        state.last_checkin_at = Some(now());
        state.last_answer = Some(answer.clone());
        self.files.save_checkin_state(&state)?;
        Ok(answer)
    }

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

    /// `klive check`: one check-in; reports whether the server asks for a change.
    pub fn check(&self) -> Result<(FleetReport, bool), FleetError> {
        let _lock = self.files.lock(self.lock_wait)?;
        let reg = self.registration()?;
        let http = self.connect(&reg)?;
        let last_error = self.files.checkin_state()?.last_error;
        let answer = self.checkin(&reg, &*http, last_error)?;
        let due = answer.action != Action::None;
        let mut r = self.report(
            &reg,
            "check",
            if due {
                "update-available"
            } else {
                "up-to-date"
            },
        );
        r.message = match (&answer.action, &answer.target) {
            (Action::Apply, Some(t)) => format!(
                "update available: level {} ({}); run `klive update`",
                t.level, answer.reason
            ),
            (Action::Revert, _) => format!(
                "the server asks to revert ({}); run `klive update`",
                answer.reason
            ),
            _ => format!("up to date ({})", answer.reason),
        };
        Ok((r, due))
    }

    /// `klive update`: check in, act on the answer, report the outcome in a check-in.
    pub fn update(&self) -> Result<FleetReport, FleetError> {
        let _lock = self.files.lock(self.lock_wait)?;
        let reg = self.registration()?;
        let http = self.connect(&reg)?;
        let last_error = self.files.checkin_state()?.last_error;
        let answer = self.checkin(&reg, &*http, last_error)?;
        let outcome = self.act(&reg, &http, &answer);
        let mut state = self.files.checkin_state()?;
        state.last_error = match &outcome {
            Ok(_) => None,
            // The server is down: it knows that without being told.
            Err(e) if e.is_transient() => state.last_error,
            Err(e) => Some(e.to_string()),
        };
        self.files.save_checkin_state(&state)?;
        if answer.action != Action::None && !outcome.as_ref().is_err_and(FleetError::is_transient) {
            // Tell the server at once what this host runs now. If that fails, the next
            // check-in carries the same facts.
            let _ = self.checkin(&reg, &*http, state.last_error.clone());
        }
        let (result, message) = outcome?;
        let mut r = self.report(&reg, "update", &result);
        r.message = message;
        Ok(r)
    }

    fn act(
        &self,
        reg: &FleetRegistration,
        http: &Arc<dyn Http>,
        answer: &CheckInResponse,
    ) -> Result<(String, String), FleetError> {
        match answer.action {
            Action::None => Ok((
                "up-to-date".into(),
                format!("up to date ({})", answer.reason),
            )),
            Action::Revert => match self.agent.revert()? {
                RevertOutcome::Reverted { modules } => Ok((
                    "reverted".into(),
                    format!(
                        "reverted as the server asked ({}); unloaded {}",
                        answer.reason,
                        modules.join(", ")
                    ),
                )),
                RevertOutcome::NothingApplied => Ok((
                    "nothing-applied".into(),
                    "no klive patch was loaded; nothing to revert".into(),
                )),
            },
            Action::Apply => {
                let Some(target) = &answer.target else {
                    return Err(FleetError::refused(
                        "the server asked to apply a release but named none",
                        "report it to the server's operator",
                    ));
                };
                let running = identity::kernel_info(self.kernel.root())?.build_id;
                if running.as_ref() != Some(&target.build_id) {
                    return Err(FleetError::refused(
                        format!(
                            "the server offered level {} for kernel build {}, but this host runs build {}",
                            target.level,
                            target.build_id.short(),
                            running.as_ref().map_or("unknown", |b| b.short())
                        ),
                        "a release for another kernel build is never loaded (mix-and-match); report it to the server's operator",
                    ));
                }
                let staged = self.fetch(reg, http, &answer.channel, target)?;
                let outcome = self.agent.apply_verified(&staged.path, &staged.expected);
                let _ = std::fs::remove_file(&staged.path);
                match outcome? {
                    ApplyOutcome::Applied {
                        module,
                        level,
                        replaced,
                        took,
                    } => Ok((
                        "applied".into(),
                        applied_message(&module, level, &replaced, took),
                    )),
                    ApplyOutcome::AlreadyApplied { module, level } => Ok((
                        "already-applied".into(),
                        format!("level {level} ({module}) is already applied"),
                    )),
                }
            }
        }
    }

    /// Loads the channel's repository from the server, pinning the registered root.
    fn load_channel(
        &self,
        reg: &FleetRegistration,
        http: &Arc<dyn Http>,
        channel: &str,
    ) -> Result<tough::Repository, FleetError> {
        let base = format!("{}/api/v1/tuf/{channel}/", reg.server);
        let url = |part: &str| {
            Url::parse(&format!("{base}{part}/"))
                .map_err(|e| FleetError::Usage(format!("bad server URL {base}: {e}")))
        };
        let (metadata, targets) = (url("metadata")?, url("targets")?);
        let datastore = self.files.tuf_datastore(channel)?;
        let root_bytes = self.trusted_root(reg)?;
        let loader = RepositoryLoader::new(&root_bytes, metadata, targets)
            .transport(ServerTransport {
                http: Arc::clone(http),
                bearer: reg.credential.clone(),
            })
            .datastore(datastore);
        let what = format!("the signed metadata of channel {channel}");
        let repo = block_on(&what, loader.load())?.map_err(|e| tuf_error(&what, e))?;
        self.remember_root(&root_bytes, &repo)?;
        Ok(repo)
    }

    /// The root to start verifying from: the newest one verified so far, else the pinned one.
    fn trusted_root(&self, reg: &FleetRegistration) -> Result<Vec<u8>, FleetError> {
        Ok(self
            .files
            .trusted_root()?
            .unwrap_or_else(|| reg.tuf_root.as_bytes().to_vec()))
    }

    /// Keeps the root `repo` was verified under when it is newer than `started_from` (the
    /// server rotated its root): the rotation's retired keys are refused from then on.
    fn remember_root(
        &self,
        started_from: &[u8],
        repo: &tough::Repository,
    ) -> Result<(), FleetError> {
        let old =
            serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(started_from)
                .map(|r| r.signed.version.get())
                .unwrap_or(0);
        if repo.root().signed.version.get() > old {
            let bytes = serde_json::to_vec(repo.root())
                .map_err(|e| FleetError::Usage(format!("encoding the TUF root: {e}")))?;
            self.files.save_trusted_root(&bytes)?;
        }
        Ok(())
    }

    /// Reads the target release through TUF, checks it, stages it.
    pub fn fetch(
        &self,
        reg: &FleetRegistration,
        http: &Arc<dyn Http>,
        channel: &str,
        target: &TargetRelease,
    ) -> Result<Staged, FleetError> {
        let repo = self.load_channel(reg, http, channel)?;
        let staged = self.verified_release(&repo, &target.build_id, target.level, channel)?;
        if staged.expected.sha256 != target.sha256
            || staged.expected.size != target.size
            || staged.expected.module_name != target.module_name
        {
            let _ = std::fs::remove_file(&staged.path);
            return Err(FleetError::refused(
                format!(
                    "the check-in named module {} ({} bytes, sha256 {}) but the signed release is {} ({} bytes, sha256 {})",
                    target.module_name,
                    target.size,
                    target.sha256,
                    staged.expected.module_name,
                    staged.expected.size,
                    staged.expected.sha256
                ),
                "report it to the server's operator",
            ));
        }
        Ok(staged)
    }

    /// The manifest and module of `build_id` at `level` from a loaded repository, checked
    /// against each other and the running kernel, the module staged on disk.
    fn verified_release(
        &self,
        repo: &tough::Repository,
        build_id: &BuildId,
        level: PatchLevel,
        source: &str,
    ) -> Result<Staged, FleetError> {
        let running = identity::kernel_info(self.kernel.root())?.build_id;
        if running.as_ref() != Some(build_id) {
            return Err(FleetError::refused(
                format!(
                    "the release is for kernel build {} but this host runs build {}",
                    build_id.short(),
                    running.as_ref().map_or("unknown", |b| b.short())
                ),
                "a release for another kernel build is never loaded (mix-and-match)",
            ));
        }
        let module_target = tuf_module_target(build_id.as_str(), level.get());
        let manifest_target = tuf_manifest_target(build_id.as_str(), level.get());
        let name = |n: &str| {
            TargetName::new(n).map_err(|e| {
                FleetError::refused(format!("target name {n}: {e}"), "report it as a bug")
            })
        };
        let (module_name, manifest_name) = (name(&module_target)?, name(&manifest_target)?);
        let targets = &repo.targets().signed.targets;
        let Some(signed) = targets.get(&module_name) else {
            return Err(FleetError::refused(
                format!(
                    "level {level} for build {} is not in the signed targets of {source}",
                    build_id.short()
                ),
                "it was withdrawn or never published there; run `klive check` again",
            ));
        };
        let signed_sha = hex(&signed.hashes.sha256);
        let signed_len = signed.length;
        let read = |target: &TargetName| {
            let what = format!("target {} of {source}", target.raw());
            block_on(&what, async {
                match repo.read_target(target).await {
                    Ok(Some(stream)) => stream.into_vec().await.map(Some),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            })?
            .map_err(|e| tuf_error(&what, e))?
            .ok_or_else(|| {
                FleetError::refused(
                    format!("{what} is not listed in the signed metadata"),
                    "run `klive check` again",
                )
            })
        };
        let manifest_bytes = read(&manifest_name)?;
        let manifest: ReleaseManifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
            FleetError::refused(
                format!("the signed manifest of level {level} is not a release manifest ({e})"),
                "report it to the release's publisher",
            )
        })?;
        manifest.validate().map_err(|e| {
            FleetError::refused(
                format!("the signed manifest of level {level} is invalid: {e}"),
                "report it to the release's publisher",
            )
        })?;
        if manifest.level != level
            || &manifest.kernel.build_id != build_id
            || manifest.module.sha256 != signed_sha
            || manifest.module.size != signed_len
        {
            return Err(FleetError::refused(
                format!(
                    "the manifest (level {}, build {}, module sha256 {}, {} bytes) does not match its signed target (level {level}, build {}, sha256 {signed_sha}, {signed_len} bytes)",
                    manifest.level,
                    manifest.kernel.build_id.short(),
                    manifest.module.sha256,
                    manifest.module.size,
                    build_id.short()
                ),
                "the release is inconsistent (mix-and-match); report it to the release's publisher",
            ));
        }
        let module = read(&module_name)?;
        let sha = sha256_hex(&module);
        if sha != manifest.module.sha256 || module.len() as u64 != manifest.module.size {
            return Err(FleetError::refused(
                format!(
                    "the module ({} bytes, sha256 {sha}) does not match its manifest ({} bytes, sha256 {})",
                    module.len(),
                    manifest.module.size,
                    manifest.module.sha256
                ),
                "report it to the server's operator",
            ));
        }
        let staging = self.files.staging_dir()?;
        let path = staging.join(format!("{}-{}.ko", build_id.as_str(), level));
        write_atomic_private(&path, &module, Durability::ProcessCrash)?;
        Ok(Staged {
            path,
            expected: ExpectedModule {
                sha256: sha,
                size: module.len() as u64,
                module_name: manifest.module_name.clone(),
                level,
                build_id: build_id.clone(),
            },
            manifest,
        })
    }

    /// `klive apply DIR`: a release bundle (`DIR/metadata/`, `DIR/targets/`, optional
    /// `DIR/channel`) verified against the registered root, or `root` when given.
    pub fn apply_bundle(
        &self,
        dir: &Path,
        root: Option<&Path>,
        level: Option<PatchLevel>,
    ) -> Result<ApplyOutcome, FleetError> {
        let root_bytes = match root {
            Some(p) => std::fs::read(p).map_err(|e| {
                FleetError::Usage(format!(
                    "cannot read the TUF root {}: {e}; give the server's root.json",
                    p.display()
                ))
            })?,
            None => match self.files.registration()? {
                Some(r) => self.trusted_root(&r)?,
                None => {
                    return Err(FleetError::Usage(
                        "no pinned TUF root: register this host, or give --root FILE (the server's root.json) to verify the bundle".into(),
                    ));
                }
            },
        };
        let dir = dir.canonicalize().map_err(|e| {
            FleetError::Usage(format!("cannot open the bundle {}: {e}", dir.display()))
        })?;
        let (metadata_dir, targets_dir) = (dir.join("metadata"), dir.join("targets"));
        if !metadata_dir.is_dir() || !targets_dir.is_dir() {
            return Err(FleetError::Usage(format!(
                "{} is not a release bundle: it needs metadata/ and targets/ (made by `klive bundle`)",
                dir.display()
            )));
        }
        let channel = std::fs::read_to_string(dir.join("channel"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_else(|_| "default".into());
        if !is_safe_name(&channel) {
            return Err(FleetError::Usage(format!(
                "{}/channel names {channel:?}, which is not a channel name",
                dir.display()
            )));
        }
        let to_url = |p: &Path| {
            Url::from_directory_path(p)
                .map_err(|()| FleetError::Usage(format!("{} is not an absolute path", p.display())))
        };
        let loader =
            RepositoryLoader::new(&root_bytes, to_url(&metadata_dir)?, to_url(&targets_dir)?)
                .transport(BundleTransport {
                    targets_dir: targets_dir.clone(),
                })
                .datastore(self.files.tuf_datastore(&format!("bundle-{channel}"))?);
        let what = format!("the bundle {}", dir.display());
        let repo = block_on(&what, loader.load())?.map_err(|e| tuf_error(&what, e))?;
        let build_id = identity::kernel_info(self.kernel.root())?
            .build_id
            .ok_or_else(|| {
                FleetError::refused(
                    "this kernel exposes no GNU build-id",
                    "klive needs a kernel built with a build-id",
                )
            })?;
        let level = match level {
            Some(l) => l,
            None => highest_level(&repo, &build_id).ok_or_else(|| {
                FleetError::refused(
                    format!(
                        "the bundle has no release for this kernel build {}",
                        build_id.short()
                    ),
                    "export a bundle from a channel that has one",
                )
            })?,
        };
        let staged = self.verified_release(&repo, &build_id, level, &what)?;
        let outcome = self.agent.apply_verified(&staged.path, &staged.expected);
        let _ = std::fs::remove_file(&staged.path);
        Ok(outcome?)
    }

    /// `klive bundle DIR`: exports this host's channel repository (metadata and the
    /// releases for `build_id`, all levels unless `level`) for `klive apply DIR` on an
    /// air-gapped host, then verifies the copy.
    pub fn export_bundle(
        &self,
        dir: &Path,
        build_id: Option<BuildId>,
        level: Option<PatchLevel>,
    ) -> Result<String, FleetError> {
        let _lock = self.files.lock(self.lock_wait)?;
        let reg = self.registration()?;
        let http = self.connect(&reg)?;
        let channel = self.channel(&reg)?;
        let repo = self.load_channel(&reg, &http, &channel)?;
        let build_id = match build_id {
            Some(b) => b,
            None => identity::kernel_info(self.kernel.root())?
                .build_id
                .ok_or_else(|| {
                    FleetError::Usage("this kernel has no build-id; give --build-id".into())
                })?,
        };
        let (metadata_dir, targets_dir) = (dir.join("metadata"), dir.join("targets"));
        for d in [&metadata_dir, &targets_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| FleetError::Usage(format!("cannot create {}: {e}", d.display())))?;
        }
        let get = |url: String| -> Result<Vec<u8>, FleetError> {
            let r = http.request(Request {
                method: Method::Get,
                url: &url,
                bearer: Some(&reg.credential),
                body: None,
            })?;
            if r.status != 200 {
                return Err(server_error(&format!("GET {url}"), r.status, &r.body));
            }
            Ok(r.body)
        };
        let base = format!("{}/api/v1/tuf/{channel}", reg.server);
        // The whole root chain, so that a host that pinned root 1 reaches the one in force.
        let mut files: Vec<(String, String)> =
            vec![("root.json".to_owned(), "1.root.json".to_owned())];
        files.extend(
            (2..=repo.root().signed.version.get())
                .map(|v| (format!("{v}.root.json"), String::new())),
        );
        files.extend([
            ("timestamp.json".to_owned(), "timestamp.json".to_owned()),
            (
                format!("{}.snapshot.json", repo.snapshot().signed.version),
                String::new(),
            ),
            (
                format!("{}.targets.json", repo.targets().signed.version),
                String::new(),
            ),
        ]);
        for (name, also) in &files {
            let bytes = get(format!("{base}/metadata/{name}"))?;
            write_file(&metadata_dir.join(name), &bytes)?;
            if !also.is_empty() {
                write_file(&metadata_dir.join(also), &bytes)?;
            }
        }
        let mut count = 0;
        for (name, target) in repo.targets().signed.targets.iter() {
            let Some((b, l)) = parse_target(name.raw()) else {
                continue;
            };
            if b != build_id.as_str() || level.is_some_and(|want| want.get() != l) {
                continue;
            }
            let sha = hex(&target.hashes.sha256);
            let what = format!("target {}", name.raw());
            let bytes = block_on(&what, async {
                match repo.read_target(name).await {
                    Ok(Some(s)) => s.into_vec().await.map(Some),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            })?
            .map_err(|e| tuf_error(&what, e))?
            .unwrap_or_default();
            write_file(&targets_dir.join(format!("{sha}.{}", name.raw())), &bytes)?;
            count += 1;
        }
        write_file(&dir.join("channel"), format!("{channel}\n").as_bytes())?;
        // The copy must verify as it will on the air-gapped host.
        let check = tempfile_dir(&self.files)?;
        let root_bytes = reg.tuf_root.as_bytes().to_vec();
        // (Verified from the pinned root, as an air-gapped host that never saw a newer one.)
        let to_url = |p: &Path| {
            Url::from_directory_path(p)
                .map_err(|()| FleetError::Usage(format!("{} is not an absolute path", p.display())))
        };
        let abs = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
        let loader = RepositoryLoader::new(
            &root_bytes,
            to_url(&abs(&metadata_dir))?,
            to_url(&abs(&targets_dir))?,
        )
        .transport(BundleTransport {
            targets_dir: abs(&targets_dir),
        })
        .datastore(check.clone());
        let what = format!("the exported bundle {}", dir.display());
        let verified = block_on(&what, loader.load())?.map_err(|e| tuf_error(&what, e));
        let _ = std::fs::remove_dir_all(&check);
        verified?;
        Ok(format!(
            "exported channel {channel} with {count} target(s) for build {} to {}; `klive apply {}` on the air-gapped host verifies and applies it",
            build_id.short(),
            dir.display(),
            dir.display()
        ))
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

    /// `klive daemon`: update, then wait a jittered interval (the server's
    /// `next_checkin_secs`, or `interval`), backing off exponentially while the server is
    /// unreachable, until `stop` is set (SIGTERM). An operation in progress is finished
    /// before stopping. `log` gets one line per cycle.
    pub fn daemon(
        &self,
        stop: &AtomicBool,
        interval: Option<Duration>,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), FleetError> {
        self.daemon_with_backoff(stop, interval, Duration::from_secs(5), log)
    }

    /// [`Fleet::daemon`] with the first back-off step given (it doubles up to the interval).
    pub fn daemon_with_backoff(
        &self,
        stop: &AtomicBool,
        interval: Option<Duration>,
        min_backoff: Duration,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), FleetError> {
        self.registration()?;
        let mut backoff = min_backoff;
        while !stop.load(Ordering::SeqCst) {
            let wait = match self.update() {
                Ok(r) => {
                    backoff = min_backoff;
                    log(&format!("klive daemon: {}: {}", r.result, r.message));
                    let base = interval.unwrap_or_else(|| self.server_interval());
                    jitter(base)
                }
                Err(FleetError::NotRegistered) => return Err(FleetError::NotRegistered),
                Err(e) if e.is_transient() => {
                    let wait = backoff;
                    let cap = interval.unwrap_or_else(|| self.server_interval());
                    backoff = (backoff * 2).min(cap.max(min_backoff));
                    log(&format!(
                        "klive daemon: {e}; retrying in {:.1} s",
                        wait.as_secs_f64()
                    ));
                    wait
                }
                Err(e) => {
                    backoff = min_backoff;
                    log(&format!("klive daemon: update failed: {e}"));
                    jitter(interval.unwrap_or_else(|| self.server_interval()))
                }
            };
            sleep_unless_stopped(wait, stop);
        }
        log("klive daemon: stopping (signal received)");
        Ok(())
    }

    fn server_interval(&self) -> Duration {
        self.files
            .checkin_state()
            .ok()
            .and_then(|s| s.last_answer)
            .map(|a| Duration::from_secs(a.next_checkin_secs.clamp(10, 7 * 86400)))
            .unwrap_or(DEFAULT_INTERVAL)
    }
}

/// The server's answer asks for a change this host has not made.
pub fn update_due(answer: &CheckInResponse, applied: Option<&AppliedReport>) -> bool {
    match answer.action {
        Action::None => false,
        Action::Revert => applied.is_some(),
        Action::Apply => match (&answer.target, applied) {
            (Some(t), Some(a)) => t.level != a.level,
            (Some(_), None) => true,
            (None, _) => false,
        },
    }
}

/// Sleeps `wait`, waking early when `stop` is set.
pub fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) {
    let until = Instant::now() + wait;
    while !stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// `{build_id}-{level}.ko` or `.manifest.json` → (build_id, level).
fn parse_target(name: &str) -> Option<(&str, u32)> {
    let stem = name
        .strip_suffix(".ko")
        .or_else(|| name.strip_suffix(".manifest.json"))?;
    let (b, l) = stem.rsplit_once('-')?;
    Some((b, l.parse().ok()?))
}

fn highest_level(repo: &tough::Repository, build_id: &BuildId) -> Option<PatchLevel> {
    repo.targets()
        .signed
        .targets
        .keys()
        .filter(|n| n.raw().ends_with(".ko"))
        .filter_map(|n| parse_target(n.raw()))
        .filter(|(b, _)| *b == build_id.as_str())
        .filter_map(|(_, l)| PatchLevel::new(l).ok())
        .max()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    crate::store::write_atomic(path, bytes, Durability::Durable).map_err(FleetError::from)
}

fn tempfile_dir(files: &FleetFiles) -> Result<PathBuf, FleetError> {
    let dir = files.tuf_datastore(&format!("export-check-{}", std::process::id()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(action: Action, level: Option<u32>) -> CheckInResponse {
        CheckInResponse {
            host_id: "h".into(),
            channel: "canary".into(),
            action,
            target: level.map(|l| TargetRelease {
                build_id: "3e0c8f6a1b2c4d5e".parse().unwrap(),
                level: PatchLevel::new(l).unwrap(),
                module_name: format!("klive_l{l}"),
                sha256: "0".repeat(64),
                size: 1,
                manifest_path: String::new(),
                module_path: String::new(),
            }),
            reason: String::new(),
            next_checkin_secs: 3600,
        }
    }

    fn applied(level: u32) -> AppliedReport {
        AppliedReport {
            level: PatchLevel::new(level).unwrap(),
            state: klive_format::status::PatchState::Applied,
        }
    }

    #[test]
    fn update_is_due_only_for_a_change_not_yet_made() {
        assert!(!update_due(
            &answer(Action::None, Some(1)),
            Some(&applied(1))
        ));
        assert!(update_due(
            &answer(Action::Apply, Some(2)),
            Some(&applied(1))
        ));
        assert!(update_due(
            &answer(Action::Apply, Some(1)),
            Some(&applied(2))
        ));
        assert!(update_due(&answer(Action::Apply, Some(1)), None));
        assert!(!update_due(
            &answer(Action::Apply, Some(1)),
            Some(&applied(1))
        ));
        assert!(update_due(&answer(Action::Revert, None), Some(&applied(1))));
        assert!(!update_due(&answer(Action::Revert, None), None));
    }

    #[test]
    fn jitter_spreads_around_the_interval() {
        let base = Duration::from_secs(3600);
        let samples: Vec<Duration> = (0..200).map(|_| jitter(base)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= base.mul_f64(0.75) && *d < base.mul_f64(1.25))
        );
        let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
        assert!(distinct.len() > 150, "jitter must differ between calls");
    }

    #[test]
    fn server_urls_are_normalised_or_refused() {
        assert_eq!(
            server_url("https://patch.example.com:8750/", false).unwrap(),
            "https://patch.example.com:8750"
        );
        assert!(server_url("http://patch.example.com", false).is_err());
        assert_eq!(
            server_url("http://127.0.0.1:1", true).unwrap(),
            "http://127.0.0.1:1"
        );
        for bad in [
            "patch.example.com",
            "ftp://x",
            "https://x/api",
            "https://x?a=1",
            "https://user@x",
        ] {
            assert!(server_url(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_errors_carry_code_message_and_hint() {
        let e = server_error(
            "the check-in",
            401,
            br#"{"error":{"code":"unauthenticated","message":"unknown credential"}}"#,
        );
        let text = e.to_string();
        assert!(
            text.contains("unauthenticated") && text.contains("register it again"),
            "{text}"
        );
        assert!(!e.is_transient());
        let e = server_error("x", 503, b"<html>busy</html>");
        assert!(e.is_transient(), "{e}");
        let corrupt = br#"{"error":{"code":"blob_corrupt","message":"m"}}"#;
        assert!(!server_error("x", 500, corrupt).is_transient());
    }
}
