//! The server's domain: users and tokens, channels, releases and their promotion, hosts and
//! their check-ins. Every method checks the caller's role, runs in one transaction and, when it
//! changes anything, appends to the audit log in that same transaction.

/// A domain service: a `Copy` view of the [`Service`] whose methods are one concern's rules
/// (`service.users()`, `service.releases()` ...). It derefs to the service for its shared state.
macro_rules! domain_service {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<'a>(pub(in crate::domain) &'a Service);

        impl std::ops::Deref for $name<'_> {
            type Target = Service;
            fn deref(&self) -> &Service {
                self.0
            }
        }
    };
}

mod auth_failures;
mod channels;
pub mod checkin;
mod delivery;
mod enrollment;
mod hosts;
pub mod modinfo;
mod promotions;
mod releases;
mod users;

pub use channels::Channels;
pub use checkin::CheckIns;
pub use delivery::Delivery;
pub use enrollment::Enrollment;
pub use hosts::Hosts;
pub use promotions::Promotions;
pub use releases::Releases;
pub use users::Users;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use klive_format::api::{
    Action, AppliedReport, BlobStored, Channel, ChannelRequest, CheckIn, CheckInResponse,
    ENROLLMENT_TOKEN_PREFIX, EnrollTokenCreated, EnrollTokenRequest, FleetSummary,
    HOST_CREDENTIAL_PREFIX, HostInfo, HostListQuery, HostPolicy, PromoteRequest, Promotion,
    PromotionStatus, RegisterRequest, RegisterResponse, ReleaseInfo, Role, TargetRelease,
    TokenCreated, USER_TOKEN_PREFIX, User,
};
use klive_format::release::ReleaseManifest;
use klive_format::status::PatchState;
use klive_format::{BuildId, PatchLevel, modinfo as tags};

use crate::clock::{Clock, rfc3339};
use crate::domain::checkin::release_cache::ReleaseCache;
use crate::error::Error;
use crate::store;
use crate::store::audit::{self, Actor};
use crate::store::blobs::Blobs;
use crate::store::checkins::Candidate;
use crate::store::db::{Db, Tx};
pub use crate::store::hosts::AuthHost;
use crate::store::releases::level_from_db;
use crate::trust::secrets::{new_id, new_secret};
use crate::trust::tuf::Signer;
use klive_format::digest::sha256_hex;

/// Longest accepted enrollment token lifetime: one year.
pub const MAX_ENROLL_SECS: u64 = 366 * 24 * 3600;

/// An authenticated admin user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub name: String,
    pub role: Role,
}

impl AuthUser {
    fn actor(&self) -> Actor {
        Actor::User(self.name.clone())
    }

    fn require(&self, needed: Role) -> Result<(), Error> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(Error::Forbidden {
                needed: needed.as_str(),
            })
        }
    }
}

impl From<store::users::UserRow> for AuthUser {
    fn from(row: store::users::UserRow) -> AuthUser {
        AuthUser {
            name: row.name,
            role: row.role,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    db: Db,
    blobs: Blobs,
    clock: Clock,
    /// Suggested time between check-ins, sent to agents.
    checkin_interval_secs: u64,
    /// Signs each channel's TUF metadata; `None` until `keys init`.
    signer: Option<Arc<Signer>>,
    /// Writes check-ins in batches, see [`crate::domain::checkin::group_commit`].
    checkins: crate::domain::checkin::group_commit::Writer,
    /// What check-ins choose from, see [`crate::domain::checkin::release_cache`].
    release_cache: ReleaseCache,
    /// Rate limit of the audit records of failed sign-ins.
    failed_auth: crate::domain::auth_failures::FailedAuth,
    /// Rate limit of the records of refused privileged actions, per user and action.
    refusals: crate::domain::auth_failures::FailedAuth,
    /// Taint and error changes of hosts, audited at most once a minute per host and kind.
    host_noise: crate::domain::auth_failures::FailedAuth,
}

fn release_id(build_id: &BuildId, level: PatchLevel) -> String {
    format!("{build_id}-{level}")
}

fn state_name(s: PatchState) -> &'static str {
    match s {
        PatchState::Applied => "applied",
        PatchState::Patching => "patching",
        PatchState::Unpatching => "unpatching",
        PatchState::Disabled => "disabled",
    }
}

fn secs_to_i64(v: u64, what: &str) -> Result<i64, Error> {
    i64::try_from(v)
        .ok()
        .filter(|v| *v <= 100 * 365 * 24 * 3600)
        .ok_or_else(|| Error::BadRequest(format!("{what} {v} is too large")))
}

/// A channel or user name: it becomes a directory name on hosts (channels) and appears in
/// paths and audit records, so `.`, `..` and names starting with a dot are refused.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// What a host reports about itself, checked as display text: it reaches terminals, CSV
/// exports and the dashboard.
fn check_host_text(
    kernel: &klive_format::status::KernelInfo,
    agent_version: &str,
) -> Result<(), Error> {
    use klive_format::text::check;
    let bad = |e: klive_format::text::TextError| Error::BadRequest(e.to_string());
    check("kernel release", &kernel.release, 128).map_err(bad)?;
    check("kernel version", &kernel.version, 256).map_err(bad)?;
    check("kernel arch", &kernel.arch, 32).map_err(bad)?;
    for v in [&kernel.package_version, &kernel.distro]
        .into_iter()
        .flatten()
    {
        check("kernel package version or distro", v, 256).map_err(bad)?;
    }
    check("agent version", agent_version, 128).map_err(bad)
}

fn nonblank(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl Service {
    pub fn new(db: Db, blobs: Blobs) -> Service {
        Service {
            db,
            blobs,
            clock: Clock::default(),
            checkin_interval_secs: 3600,
            signer: None,
            checkins: crate::domain::checkin::group_commit::Writer::default(),
            release_cache: ReleaseCache::default(),
            failed_auth: crate::domain::auth_failures::FailedAuth::default(),
            refusals: crate::domain::auth_failures::FailedAuth::default(),
            host_noise: crate::domain::auth_failures::FailedAuth::default(),
        }
    }

    pub fn with_signer(mut self, signer: Option<Signer>) -> Service {
        self.signer = signer.map(Arc::new);
        self
    }

    /// Appends a `record` (`promotion.refused`, ...) of `by` being refused
    /// `action` on `subject`, with the reason the caller was given and never a secret: at most
    /// one per user and action a minute, carrying how many refusals it stands for (see
    /// [`crate::domain::auth_failures`]). Call it with no transaction of this request open.
    async fn audit_refusal(
        &self,
        by: &AuthUser,
        record: &'static str,
        action: &'static str,
        subject: &str,
        refusal: &Error,
    ) {
        let now = self.now();
        let key = format!("{}\0{record}\0{action}", by.name);
        let Some(refusals) = self.refusals.note(&key, now) else {
            return;
        };
        let write = async {
            let mut tx = self.db.begin_audited().await?;
            audit::append(
                &mut tx,
                now,
                &by.actor(),
                record,
                subject,
                json!({
                    "action": action,
                    "code": refusal.code(),
                    "reason": refusal.to_string(),
                    "refusals": refusals,
                    "window_secs": crate::domain::auth_failures::WINDOW_MS / 1000,
                }),
            )
            .await?;
            tx.commit().await?;
            Ok::<_, Error>(())
        };
        if let Err(e) = write.await {
            // The caller is refused either way; the failure stays in the server's log.
            tracing::warn!(record, action, refusals, "recording a refusal failed: {e}");
        }
    }

    /// Re-signs the TUF metadata of `channels` inside `tx` (no-op before `keys init`).
    async fn resign(&self, tx: &mut Tx, channels: &[&str], now: i64) -> Result<(), Error> {
        if let Some(signer) = &self.signer {
            for channel in channels {
                signer.regenerate(tx, channel, now).await?;
            }
        }
        Ok(())
    }

    /// Re-signs every channel whose timestamp is missing or past half its lifetime (all of them
    /// with `force`); returns the channels re-signed. The server calls this periodically so
    /// agents never see an expired timestamp while it runs.
    pub async fn tuf_refresh(&self, force: bool) -> Result<Vec<String>, Error> {
        let Some(signer) = &self.signer else {
            return Ok(Vec::new());
        };
        let now = self.now();
        let half = signer.lifetimes.timestamp_secs * 1000 / 2;
        let mut done = Vec::new();
        for channel in self.channels().list().await? {
            let expires = store::tuf::timestamp_expiry(&self.db, &channel.name).await?;
            if !force && expires.is_some_and(|e| e - now > half) {
                continue;
            }
            let mut tx = self.db.begin_audited().await?;
            signer.regenerate(&mut tx, &channel.name, now).await?;
            audit::append(
                &mut tx,
                now,
                &Actor::System,
                "tuf.refresh",
                &channel.name,
                json!({}),
            )
            .await?;
            tx.commit().await?;
            done.push(channel.name);
        }
        Ok(done)
    }

    /// Appends one audit record by the system (an operator's command on the server itself).
    pub async fn record_system_event(
        &self,
        action: &str,
        object: &str,
        detail: serde_json::Value,
    ) -> Result<(), Error> {
        let mut tx = self.db.begin_audited().await?;
        audit::append(&mut tx, self.now(), &Actor::System, action, object, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The database, for the store's readers (evidence, dashboard) and tests.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The blob store.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// The service's clock (frozen in simulations).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Uses `clock` from now on (a frozen clock for simulations and tests).
    pub fn with_clock(mut self, clock: Clock) -> Service {
        self.clock = clock;
        self
    }

    /// Suggested time between check-ins, sent to agents.
    pub fn checkin_interval_secs(&self) -> u64 {
        self.checkin_interval_secs
    }

    /// Sets the suggested time between check-ins.
    pub fn with_checkin_interval(mut self, secs: u64) -> Service {
        self.checkin_interval_secs = secs;
        self
    }

    /// Whether TUF keys exist (`keys init` ran), so that channels are signed.
    pub fn has_signer(&self) -> bool {
        self.signer.is_some()
    }

    /// Milliseconds since the epoch on the service's clock.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn users(&self) -> Users<'_> {
        Users(self)
    }

    pub fn channels(&self) -> Channels<'_> {
        Channels(self)
    }

    pub fn releases(&self) -> Releases<'_> {
        Releases(self)
    }

    pub fn promotions(&self) -> Promotions<'_> {
        Promotions(self)
    }

    pub fn enrollment(&self) -> Enrollment<'_> {
        Enrollment(self)
    }

    pub fn checkins(&self) -> CheckIns<'_> {
        CheckIns(self)
    }

    pub fn delivery(&self) -> Delivery<'_> {
        Delivery(self)
    }

    pub fn hosts(&self) -> Hosts<'_> {
        Hosts(self)
    }
}

/// Checks the uploaded module against its manifest: digest, size, and its own modinfo tags.
fn check_module(m: &ReleaseManifest, module: &[u8]) -> Result<(), Error> {
    let actual = sha256_hex(module);
    if actual != m.module.sha256 {
        return Err(Error::DigestMismatch {
            expected: m.module.sha256.clone(),
            actual,
        });
    }
    if module.len() as u64 != m.module.size {
        return Err(Error::SizeMismatch {
            expected: m.module.size,
            actual: module.len() as u64,
        });
    }
    let info = modinfo::read(module)?;
    let mismatch =
        |tag: &'static str, expected: String, actual: Option<&str>| Error::ModinfoMismatch {
            tag,
            expected,
            actual: actual.unwrap_or("(missing)").to_owned(),
        };
    let level = modinfo::get(&info, tags::LEVEL);
    if level.and_then(|l| l.parse::<PatchLevel>().ok()) != Some(m.level) {
        return Err(mismatch(tags::LEVEL, m.level.to_string(), level));
    }
    let build = modinfo::get(&info, tags::BUILD_ID);
    if build.and_then(|b| b.parse::<BuildId>().ok()).as_ref() != Some(&m.kernel.build_id) {
        return Err(mismatch(
            tags::BUILD_ID,
            m.kernel.build_id.to_string(),
            build,
        ));
    }
    if let Some(name) = modinfo::get(&info, "name")
        && name != m.module_name
    {
        return Err(mismatch("name", m.module_name.clone(), Some(name)));
    }
    // What the agent checks before it loads: refused here, before a host spends a download.
    if modinfo::get(&info, "livepatch") != Some("Y") {
        return Err(Error::InvalidModule(
            "it is not a livepatch module (no livepatch=Y in its modinfo), which every agent refuses to load".into(),
        ));
    }
    let vermagic = modinfo::get(&info, "vermagic");
    if vermagic.and_then(|v| v.split_whitespace().next()) != Some(m.kernel.release.as_str()) {
        return Err(mismatch("vermagic", m.kernel.release.clone(), vermagic));
    }
    if m.kernel.arch != "x86_64" || !modinfo::is_x86_64(module) {
        return Err(Error::InvalidModule(format!(
            "klive patches x86_64 kernels only, and this release is for {:?} with a module for another machine or the manifest naming another architecture",
            m.kernel.arch
        )));
    }
    Ok(())
}

fn check_soak(to: &Channel, prev_since: i64, now: i64) -> Result<(), Error> {
    let ready_at = prev_since + to.min_soak_secs as i64 * 1000;
    if now < ready_at {
        return Err(Error::SoakNotElapsed {
            channel: to.name.clone(),
            remaining_secs: (ready_at - now + 999) / 1000,
        });
    }
    Ok(())
}

/// Publisher and withdrawn flag of a release, or not-found.
async fn release_state(
    tx: &mut Tx,
    id: &str,
    build_id: &BuildId,
    level: PatchLevel,
) -> Result<(String, bool), Error> {
    let status = store::releases::status(tx, id)
        .await?
        .ok_or_else(|| not_found(build_id, level))?;
    Ok((status.published_by, status.withdrawn))
}

fn not_found(build_id: &BuildId, level: PatchLevel) -> Error {
    Error::ReleaseNotFound {
        build_id: build_id.to_string(),
        level: level.get(),
    }
}

/// The audit events a check-in implies, compared with what the host reported before.
fn host_events(
    host: &AuthHost,
    c: &CheckIn,
    build_id: Option<&str>,
    level: Option<i64>,
    state: Option<&str>,
    last_error: Option<&str>,
) -> Vec<(&'static str, serde_json::Value)> {
    let mut events = Vec::new();
    if host.boot_id.as_deref().is_some_and(|b| b != c.boot_id) {
        events.push((
            "host.reboot",
            json!({"boot_id": c.boot_id, "uptime_secs": c.uptime_secs}),
        ));
    }
    if host.build_id.as_deref() != build_id {
        events.push((
            "host.kernel",
            json!({"kernel": c.kernel.release, "build_id": build_id}),
        ));
    }
    if host.applied_level != level || host.applied_state.as_deref() != state {
        events.push((
            "host.applied",
            json!({"level": level, "state": state, "previous_level": host.applied_level}),
        ));
    }
    if last_error.is_some() && host.last_error.as_deref() != last_error {
        events.push(("host.update_failed", json!({"error": last_error})));
    }
    if let Some(taint) = c.taint
        && host.taint != i64::try_from(taint).ok()
    {
        events.push(("host.taint", json!({"taint": taint})));
    }
    events
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
