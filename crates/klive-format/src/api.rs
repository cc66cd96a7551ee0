//! Messages of the server's HTTP API (`/api/v1`): what the agent sends at registration and
//! check-in, what the server answers, and the admin resources. Timestamps are RFC 3339 strings
//! in UTC; durations are whole seconds.
//!
//! The routes, authentication and semantics are described in `crates/klive-server/API.md`.

use serde::{Deserialize, Serialize};

use crate::release::ReleaseManifest;
use crate::status::{KernelInfo, PatchState};
use crate::{BuildId, PatchLevel};

/// Prefix of a user's API token (`Authorization: Bearer klu_...`).
pub const USER_TOKEN_PREFIX: &str = "klu_";
/// Prefix of a host's credential (`Authorization: Bearer klh_...`).
pub const HOST_CREDENTIAL_PREFIX: &str = "klh_";
/// Prefix of an enrollment token, given to `klive register --token`.
pub const ENROLLMENT_TOKEN_PREFIX: &str = "kle_";

/// TUF target name of a release's module in its channel's repository.
pub fn tuf_module_target(build_id: &str, level: u32) -> String {
    format!("{build_id}-{level}.ko")
}

/// TUF target name of a release's manifest (the exact JSON the server stores).
pub fn tuf_manifest_target(build_id: &str, level: u32) -> String {
    format!("{build_id}-{level}.manifest.json")
}

/// Every error the API returns has this body, with a stable `code` for programs and a
/// `message` for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, snake_case, e.g. `replayed_checkin`; programs branch on this.
    pub code: String,
    /// Lowercase, says what failed and what to do; never contains server internals.
    pub message: String,
}

/// Role of an admin user. Each role includes what the roles before it may do, except that
/// only approvers and admins approve promotions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads releases, hosts, the audit log.
    Viewer,
    /// Also uploads and publishes releases, requests promotions, withdraws releases.
    Publisher,
    /// Also approves promotions and makes emergency promotions.
    Approver,
    /// Also manages users, tokens, channels, enrollment tokens and hosts.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Publisher => "publisher",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "publisher" => Some(Role::Publisher),
            "approver" => Some(Role::Approver),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hosts

/// `POST /api/v1/register`: trade an enrollment token for a per-host credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub enrollment_token: String,
    pub hostname: String,
    pub kernel: KernelInfo,
    pub agent_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub host_id: String,
    /// Shown once; the server keeps only its hash. Send as `Authorization: Bearer <credential>`.
    pub credential: String,
    pub channel: String,
}

/// The klive level a host reports as loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedReport {
    pub level: PatchLevel,
    pub state: PatchState,
}

/// `POST /api/v1/checkin`: what the host runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    /// Strictly increasing per host (a persisted counter, or unix time in milliseconds);
    /// a check-in whose sequence is not above the last accepted one is refused as a replay.
    pub sequence: u64,
    pub kernel: KernelInfo,
    /// `None` when no klive patch is loaded.
    pub applied: Option<AppliedReport>,
    pub uptime_secs: u64,
    /// `/proc/sys/kernel/random/boot_id`: a change means the host rebooted.
    pub boot_id: String,
    pub agent_version: String,
    /// The last update failure, if the previous attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// `/proc/sys/kernel/tainted`, when the agent reports it: the server records changes, so
    /// evidence shows proprietary, out-of-tree or unsigned modules (taint P, O, E).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taint: Option<u64>,
}

/// What the host should do after a check-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The host already runs its target (or has no target and nothing loaded).
    None,
    /// Download, verify and load `target` (it may be lower than the applied level after a
    /// withdrawal: the module replaces whatever is loaded).
    Apply,
    /// No release is allowed for this host any more: unload the klive patch.
    Revert,
}

/// The release a host should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRelease {
    pub build_id: BuildId,
    pub level: PatchLevel,
    pub module_name: String,
    pub sha256: String,
    pub size: u64,
    /// Path under the server (`/api/v1/host/releases/{build_id}/{level}/manifest`).
    pub manifest_path: String,
    /// Path under the server (`/api/v1/host/releases/{build_id}/{level}/module`).
    pub module_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInResponse {
    pub host_id: String,
    pub channel: String,
    pub action: Action,
    pub target: Option<TargetRelease>,
    /// One line for humans: why this target.
    pub reason: String,
    /// When to check in next, before jitter.
    pub next_checkin_secs: u64,
}

/// A host as admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub id: String,
    pub hostname: String,
    pub channel: String,
    pub pinned_level: Option<PatchLevel>,
    pub update_delay_secs: u64,
    pub registered_at: String,
    pub revoked_at: Option<String>,
    pub last_checkin_at: Option<String>,
    pub kernel_release: Option<String>,
    pub build_id: Option<BuildId>,
    pub applied_level: Option<PatchLevel>,
    pub applied_state: Option<PatchState>,
    pub boot_id: Option<String>,
    pub uptime_secs: Option<u64>,
    pub agent_version: Option<String>,
    pub last_error: Option<String>,
}

/// `GET /api/v1/fleet`: how many hosts run what, per channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSummary {
    /// Registered, not revoked.
    pub hosts: u64,
    /// Hosts whose last check-in is older than twice the check-in interval (or that never
    /// checked in).
    pub stale_hosts: u64,
    pub groups: Vec<FleetGroup>,
}

/// Hosts of one channel reporting the same level and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetGroup {
    pub channel: String,
    pub level: Option<PatchLevel>,
    pub state: Option<PatchState>,
    pub hosts: u64,
}

/// Query of `GET /api/v1/hosts`: hosts ordered by id, `limit` (default 1000, at most 10000)
/// after the id `after`; ask for the next page with the last id received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostListQuery {
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `PUT /api/v1/hosts/{id}/policy`: replaces the host's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPolicy {
    pub channel: String,
    /// The host runs at most this level.
    #[serde(default)]
    pub pinned_level: Option<PatchLevel>,
    /// A release becomes eligible for this host this long after it entered the host's channel.
    #[serde(default)]
    pub update_delay_secs: u64,
}

/// `POST /api/v1/enroll-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollTokenRequest {
    pub channel: String,
    pub expires_in_secs: u64,
    pub max_uses: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenCreated {
    /// Shown once; give it to `klive register --token`.
    pub token: String,
    pub channel: String,
    pub expires_at: String,
    pub max_uses: u32,
}

// ---------------------------------------------------------------------------------------------
// Releases and channels

/// `POST /api/v1/blobs` answer: the module is stored under its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStored {
    pub sha256: String,
    pub size: u64,
}

/// A channel: releases enter the first one at publication and move down the list by promotion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub name: String,
    /// 0 for the first channel.
    pub position: u32,
    /// A release must have spent this long in the previous channel before a normal promotion
    /// into this one.
    pub min_soak_secs: u64,
}

/// `POST /api/v1/channels`: appends a channel at the end of the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRequest {
    pub name: String,
    #[serde(default)]
    pub min_soak_secs: u64,
}

/// A release's presence in one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelEntry {
    pub channel: String,
    pub since: String,
    /// Entered through an emergency promotion.
    pub emergency: bool,
    /// An emergency promotion not yet approved afterwards.
    pub awaiting_approval: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawal {
    pub at: String,
    pub by: String,
    pub reason: String,
}

/// A release as admins see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub manifest: ReleaseManifest,
    pub published_by: String,
    pub published_at: String,
    pub channels: Vec<ChannelEntry>,
    pub withdrawn: Option<Withdrawal>,
}

/// `POST /api/v1/releases/{build_id}/{level}/promote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The next channel after one the release is already in.
    pub to: String,
    /// Effective at once, without approval or soak time; needs `reason` and stays flagged
    /// until an approver approves it afterwards.
    #[serde(default)]
    pub emergency: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionStatus {
    /// Waiting for an approver.
    Pending,
    /// Approved: the release is in the channel.
    Approved,
    /// Emergency: the release is in the channel, approval still owed.
    EmergencyUnapproved,
    /// Emergency, approved afterwards.
    EmergencyApproved,
    /// A pending request overtaken by a later effective (approved or emergency) promotion of
    /// the same release to the same channel; nobody approved it.
    Superseded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub id: String,
    pub build_id: BuildId,
    pub level: PatchLevel,
    pub to: String,
    pub requested_by: String,
    pub requested_at: String,
    pub reason: Option<String>,
    pub status: PromotionStatus,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
}

/// `POST /api/v1/releases/{build_id}/{level}/withdraw`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawRequest {
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Users and audit

/// `POST /api/v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created_at: String,
}

/// A new API token (`POST /api/v1/users/{name}/tokens`), shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub user: String,
    pub token: String,
}

/// One record of the hash-chained audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: String,
    /// `user:NAME`, `host:ID` or `system`.
    pub actor: String,
    /// e.g. `release.publish`, `promotion.approve`, `host.checkin`.
    pub action: String,
    pub subject: String,
    /// JSON object with the action's details.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

// ---------------------------------------------------------------------------------------------
// The agent's side of the fleet: its files in the state directory and its reports

/// Version of the agent's fleet files (`fleet/registration.json`, `fleet/checkin.json`).
pub const FLEET_FORMAT: u32 = 1;

/// `STATE/fleet/registration.json` (mode 0600): which server this host belongs to, its
/// credential, and what it trusts. Written once by `klive register`, replaced as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRegistration {
    pub format: u32,
    /// Base URL, e.g. `https://patch.example.com:8750` (no trailing slash).
    pub server: String,
    pub host_id: String,
    /// `klh_...`; the server keeps only its hash.
    pub credential: String,
    /// The channel the enrollment token put this host in.
    pub channel: String,
    /// PEM of the CA the server's certificate must chain to (the system store is never used);
    /// `None` only for a plain-HTTP server registered with `--allow-plain-http`.
    pub ca_pem: Option<String>,
    /// The pinned TUF root, the exact bytes of the server's `root.json`.
    pub tuf_root: String,
    pub tuf_root_sha256: String,
    pub registered_at: String,
}

/// `STATE/fleet/checkin.json`: the last check-in and the outcome of the last update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetCheckinState {
    pub format: u32,
    /// The sequence of the last check-in sent (`max(now_ms, last + 1)`).
    pub last_sequence: u64,
    /// When the last check-in was answered.
    #[serde(default)]
    pub last_checkin_at: Option<String>,
    /// The server's last answer.
    #[serde(default)]
    pub last_answer: Option<CheckInResponse>,
    /// The last update failure, sent as `last_error` in the next check-in; cleared by success.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The fleet part of `klive status --json` (`fleet`; absent when the host is not registered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub server: String,
    pub host_id: String,
    pub channel: String,
    pub tuf_root_sha256: String,
    pub last_checkin_at: Option<String>,
    /// What the last check-in asked for: `none`, `apply` or `revert`.
    pub last_action: Option<Action>,
    pub target_level: Option<PatchLevel>,
    pub reason: Option<String>,
    /// The last check-in asked for a change that has not been made yet (`klive status` exits 2).
    pub update_available: bool,
    pub last_error: Option<String>,
}

/// `klive status --json`: the host's report plus, when registered, its fleet status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    #[serde(flatten)]
    pub status: crate::status::AgentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// `--json` answer of `klive register`, `check`, `update` and the daemon's log lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetReport {
    pub operation: String,
    /// `registered`, `up-to-date`, `update-available`, `applied`, `already-applied`,
    /// `reverted`, `nothing-applied`, or `failed`.
    pub result: String,
    pub server: String,
    pub host_id: String,
    pub channel: String,
    pub action: Option<Action>,
    pub target: Option<TargetRelease>,
    /// The klive level loaded after the command.
    pub applied_level: Option<PatchLevel>,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkin_refuses_unknown_fields_and_bad_levels() {
        let good = r##"{"sequence":1,"kernel":{"release":"6.1.0-56-amd64","version":"#1 SMP","arch":"x86_64","build_id":"3e0c8f6a1b2c4d5e","package_version":null,"distro":null},"applied":{"level":2,"state":"applied"},"uptime_secs":5,"boot_id":"b","agent_version":"0.1.0"}"##;
        let c: CheckIn = serde_json::from_str(good).unwrap();
        assert_eq!(c.applied.unwrap().level.get(), 2);
        assert!(
            serde_json::from_str::<CheckIn>(&good.replace("\"sequence\"", "\"x\":1,\"sequence\""))
                .is_err()
        );
        assert!(
            serde_json::from_str::<CheckIn>(&good.replace("\"level\":2", "\"level\":0")).is_err()
        );
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for r in [Role::Viewer, Role::Publisher, Role::Approver, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert_eq!(Role::parse("root"), None);
    }
}
