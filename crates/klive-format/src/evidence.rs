//! Evidence: SLA policies, findings per (host, CVE), the populations of a SOC 2 evidence pack
//! and its signed manifest. Times are RFC 3339 UTC strings, durations whole seconds.

use serde::{Deserialize, Serialize};

/// Format of `manifest.json` this build writes and reads.
pub const EVIDENCE_FORMAT: u32 = 1;

/// A finding's severity: the release manifests' and feeds' ratings, or `unrated` when no
/// source rated the CVE (the policy has its own deadline for those).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rating {
    Unrated,
    Low,
    Medium,
    High,
    Critical,
}

impl Rating {
    pub const ALL: [Rating; 5] = [
        Rating::Critical,
        Rating::High,
        Rating::Medium,
        Rating::Low,
        Rating::Unrated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Unrated => "unrated",
            Rating::Low => "low",
            Rating::Medium => "medium",
            Rating::High => "high",
            Rating::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Rating> {
        Rating::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// CVSS base score bands (as Vanta and NVD use them); 0.0 is unrated.
    pub fn from_cvss(score: f64) -> Rating {
        match score {
            s if s >= 9.0 => Rating::Critical,
            s if s >= 7.0 => Rating::High,
            s if s >= 4.0 => Rating::Medium,
            s if s > 0.0 => Rating::Low,
            _ => Rating::Unrated,
        }
    }
}

impl From<crate::release::Severity> for Rating {
    fn from(s: crate::release::Severity) -> Rating {
        use crate::release::Severity;
        match s {
            Severity::Low => Rating::Low,
            Severity::Medium => Rating::Medium,
            Severity::High => Rating::High,
            Severity::Critical => Rating::Critical,
        }
    }
}

/// Where a finding's SLA clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockStart {
    /// When the server first knew the host was exposed.
    Detected,
    /// When the CVE was published (from OSV); the detection time when unknown.
    Published,
    /// When a fix first became available to the host (a release in its channel, or the Debian
    /// kernel version that fixes it); the detection time when unknown.
    FixAvailable,
}

impl ClockStart {
    pub fn as_str(self) -> &'static str {
        match self {
            ClockStart::Detected => "detected",
            ClockStart::Published => "published",
            ClockStart::FixAvailable => "fix_available",
        }
    }

    pub fn parse(s: &str) -> Option<ClockStart> {
        [
            ClockStart::Detected,
            ClockStart::Published,
            ClockStart::FixAvailable,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// The deadlines and rules of an SLA policy version (what a new version sets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaRules {
    pub critical_days: u32,
    pub high_days: u32,
    pub medium_days: u32,
    pub low_days: u32,
    /// Deadline for CVEs no source rated.
    pub unrated_days: u32,
    /// A CISA KEV due date earlier than the severity deadline replaces it.
    pub kev_shortens: bool,
    /// A KEV due date that passed before detection still leaves this many days.
    pub kev_floor_days: u32,
    pub clock_start: ClockStart,
    #[serde(default)]
    pub note: String,
}

impl SlaRules {
    pub fn days(&self, rating: Rating) -> u32 {
        match rating {
            Rating::Critical => self.critical_days,
            Rating::High => self.high_days,
            Rating::Medium => self.medium_days,
            Rating::Low => self.low_days,
            Rating::Unrated => self.unrated_days,
        }
    }
}

/// One version of the SLA policy. The version in force when a finding was detected judges it.
/// Its rules are written inline, after the version's own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaPolicy {
    pub version: u32,
    /// From when this version applies.
    pub effective_at: String,
    pub created_by: String,
    #[serde(flatten)]
    pub rules: SlaRules,
}

/// How a finding was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FixMethod {
    /// A klive live patch level containing the fix was applied (no reboot).
    Livepatch,
    /// The host booted (or switched to) a kernel that contains the fix.
    Kernel,
    /// The host's credential was revoked (decommissioned); not counted as remediated.
    HostRevoked,
}

impl FixMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            FixMethod::Livepatch => "livepatch",
            FixMethod::Kernel => "kernel",
            FixMethod::HostRevoked => "host_revoked",
        }
    }
}

/// A finding's standing at the report's as-of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    FixedOnTime,
    FixedLate,
    OpenWithinSla,
    OpenOverdue,
    /// Late or overdue, but covered by an approved exception.
    Excepted,
    /// The host left the fleet before the finding was fixed.
    HostRetired,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::FixedOnTime => "fixed_on_time",
            Verdict::FixedLate => "fixed_late",
            Verdict::OpenWithinSla => "open_within_sla",
            Verdict::OpenOverdue => "open_overdue",
            Verdict::Excepted => "excepted",
            Verdict::HostRetired => "host_retired",
        }
    }
}

/// One (host, CVE) exposure, from detection to fix. A host that becomes exposed again (a
/// withdrawn level, an older kernel booted) gets a new finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub host_id: String,
    pub hostname: String,
    pub cve: String,
    pub severity: Rating,
    /// `release:BUILD-LEVEL`, `osv:FILE` ... or `none`.
    pub severity_source: String,
    pub kev: bool,
    pub kernel_release: String,
    pub detected_at: String,
    pub clock_start_at: String,
    /// `detected`, `published` or `fix_available`: what the clock start actually used.
    pub clock_start_basis: String,
    pub due_at: String,
    pub policy_version: u32,
    pub fixed_at: Option<String>,
    pub fix_method: Option<FixMethod>,
    /// The live patch level (for `livepatch`) that closed it.
    pub fixed_level: Option<u32>,
    /// The kernel (for `kernel`) that closed it.
    pub fixed_kernel: Option<String>,
    /// From the clock start to the fix, for fixed findings.
    pub time_to_patch_secs: Option<u64>,
    pub verdict: Verdict,
    pub exception_id: Option<String>,
}

/// A host in the report's population.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    pub hostname: String,
    pub channel: String,
    pub registered_at: String,
    pub revoked_at: Option<String>,
    /// Last recorded state change or check-in before the period end.
    pub last_seen_at: Option<String>,
    pub kernel_release: Option<String>,
    pub package_version: Option<String>,
    pub build_id: Option<String>,
    pub applied_level: Option<u32>,
    pub applied_state: Option<String>,
    pub uptime_days_at_end: Option<f64>,
    pub reboots_in_period: u64,
    pub livepatches_in_period: u64,
    /// True when the server knows the CVEs of the host's kernel (Debian changelog, OSV or a
    /// release for its build); hosts without that are in scope but cannot be assessed.
    pub cve_knowledge: bool,
    pub open_findings_at_end: u64,
    pub taint: Option<u64>,
}

/// One change: a publication, promotion, approval or withdrawal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub kind: String,
    pub release: String,
    pub channel: Option<String>,
    pub made_by: String,
    pub made_at: String,
    pub published_by: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub emergency: bool,
    pub reason: Option<String>,
    /// Maker and checker differ, and approval came no later than the change took effect.
    pub segregation_ok: bool,
    pub note: String,
}

/// A CVE feed file imported before the period end (`cve_imports` in `summary.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRecord {
    pub source: String,
    pub file: String,
    pub sha256: String,
    pub imported_at: String,
    pub imported_by: String,
    pub records: i64,
}

/// An approved exception (risk acceptance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionRecord {
    pub id: String,
    pub cve: String,
    /// `None` covers every host.
    pub host_id: Option<String>,
    pub reason: String,
    pub created_by: String,
    pub created_at: String,
    pub expires_at: String,
}

/// Remediation figures of one severity over the period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeverityFigures {
    pub severity: Rating,
    pub sla_days: u32,
    pub fixed: u64,
    pub fixed_on_time: u64,
    pub fixed_by_livepatch: u64,
    pub fixed_by_kernel: u64,
    /// On-time share of the findings fixed in the period; `None` when none was fixed.
    pub on_time_share: Option<f64>,
    /// Nearest-rank percentiles of time-to-patch in seconds; `None` without fixed findings.
    pub p50_secs: Option<u64>,
    pub p95_secs: Option<u64>,
    pub open_at_end: u64,
    pub overdue_at_end: u64,
    pub excepted: u64,
}

/// The headline figures of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportSummary {
    pub period_from: String,
    pub period_to: String,
    /// `period_to`, or the generation time when the period has not ended yet.
    pub as_of: String,
    pub hosts_at_start: u64,
    pub hosts_at_end: u64,
    pub hosts_in_scope: u64,
    pub hosts_without_cve_knowledge: u64,
    pub hosts_silent_at_end: u64,
    pub findings: u64,
    pub severities: Vec<SeverityFigures>,
    pub kev_findings: u64,
    pub kev_on_time: u64,
    pub changes: u64,
    pub promotions_segregation_violations: u64,
    pub emergency_changes: u64,
    pub emergency_unapproved: u64,
    pub reboots: u64,
    /// Live patch applications in the period: each would have needed a reboot.
    pub reboots_avoided: u64,
    pub median_uptime_days_at_end: Option<f64>,
    pub update_failures: u64,
    pub hosts_reporting_taint: u64,
    /// Hosts whose taint shows proprietary (P), out-of-tree (O) or unsigned (E) modules.
    pub hosts_foreign_or_unsigned_modules: u64,
    pub exceptions_active: u64,
    pub audit_records_in_period: u64,
    pub audit_chain: String,
    /// True when the period has no host and no change: the report says "no data".
    pub no_data: bool,
}

/// One file of an evidence pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// Data rows, for population files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

/// `manifest.json` of an evidence pack; `manifest.sig` holds the Ed25519 signature (hex) of
/// its exact bytes by `public_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceManifest {
    pub format: u32,
    pub kind: String,
    pub generator: String,
    pub generated_at: String,
    pub period_from: String,
    pub period_to: String,
    pub as_of: String,
    pub generated_by: String,
    /// The command that regenerates this pack from the server's records.
    pub command: String,
    /// Ed25519 public key (hex) of the server's evidence key.
    pub public_key: String,
    pub files: Vec<ManifestFile>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvss_bands_and_names_round_trip() {
        assert_eq!(Rating::from_cvss(9.8), Rating::Critical);
        assert_eq!(Rating::from_cvss(7.0), Rating::High);
        assert_eq!(Rating::from_cvss(6.9), Rating::Medium);
        assert_eq!(Rating::from_cvss(0.1), Rating::Low);
        assert_eq!(Rating::from_cvss(0.0), Rating::Unrated);
        for r in Rating::ALL {
            assert_eq!(Rating::parse(r.as_str()), Some(r));
        }
        assert_eq!(Rating::parse("HIGH"), Some(Rating::High));
        assert_eq!(Rating::parse("severe"), None);
        assert_eq!(
            ClockStart::parse("fix_available"),
            Some(ClockStart::FixAvailable)
        );
    }
}
