//! The SOC 2 evidence pack: a printable report (HTML, and PDF when Chromium is available), one
//! CSV and one JSON file per population (hosts, findings, changes, exceptions, audit extract),
//! `summary.json`, and `manifest.json` listing every file's SHA-256, signed (Ed25519) by
//! the server's evidence key in `manifest.sig`. Every figure is computed as of the period end
//! (or the generation time, when the period has not ended) from the append-only records, so
//! running the printed command again gives byte-identical populations.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use askama::Template;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;

use klive_format::api::{AuditEntry, Role};
use klive_format::evidence::{
    ChangeRecord, EVIDENCE_FORMAT, EvidenceManifest, ExceptionRecord, Finding, FixMethod,
    HostRecord, ManifestFile, Rating, ReportSummary, SeverityFigures, SlaPolicy, Verdict,
};

use crate::clock::rfc3339;
use crate::domain::{AuthUser, Service};
use crate::error::Error;
use crate::evidence::charts::{self, TtpSeries};
use crate::evidence::cve::require;
use crate::evidence::findings::{Assessment, FindingCalc, assess, percentile};
use crate::evidence::policy::in_force;
use crate::store::audit::{self, Verdict as ChainVerdict};
use crate::store::history::DAY_MS;
use crate::trust::secrets::{hex, sha256_hex};

/// Taint bits that show code the kernel vendor did not sign or ship: P (proprietary),
/// O (out-of-tree), E (unsigned).
pub const FOREIGN_TAINT: u64 = 1 | (1 << 12) | (1 << 13);
/// A host whose last check-in is older than this at the period end is silent.
pub const SILENT_AFTER_MS: i64 = 2 * DAY_MS;
/// Findings listed by name in the HTML report (all of them are in findings.csv).
const HTML_FINDINGS: usize = 300;

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

// ---------------------------------------------------------------------------------------------
// The evidence key

/// The server's Ed25519 evidence key, `DATA/keys/evidence.pk8` (PKCS#8, mode 0600), created on
/// first use.
#[derive(Debug)]
pub struct EvidenceKey {
    pair: Ed25519KeyPair,
    pub public_hex: String,
}

impl EvidenceKey {
    pub fn path(data: &Path) -> PathBuf {
        data.join("keys").join("evidence.pk8")
    }

    pub fn load_or_create(data: &Path) -> Result<EvidenceKey, Error> {
        let path = EvidenceKey::path(data);
        let der = if path.exists() {
            std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?
        } else {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| Error::Random("generating the evidence key".into()))?;
            let dir = path.parent().unwrap_or(data);
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            write_private(&path, doc.as_ref())?;
            doc.as_ref().to_vec()
        };
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| {
            Error::Config(format!(
                "{} is not an Ed25519 PKCS#8 key; restore it from backup, or move it away to create a new one",
                path.display()
            ))
        })?;
        let public_hex = hex(pair.public_key().as_ref());
        Ok(EvidenceKey { pair, public_hex })
    }

    pub fn sign(&self, message: &[u8]) -> String {
        hex(self.pair.sign(message).as_ref())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", path.display())))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Figures

/// A row of the per-CVE table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CveRow {
    pub cve: String,
    pub severity: Rating,
    pub kev: bool,
    pub hosts: u64,
    pub livepatch: u64,
    pub kernel: u64,
    pub open: u64,
    pub overdue: u64,
}

/// A CVE file imported before the period end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportRow {
    pub source: String,
    pub file: String,
    pub sha256: String,
    pub imported_at: String,
    pub imported_by: String,
    pub records: i64,
}

/// Everything a report shows, computed once.
#[derive(Debug)]
pub struct Figures {
    pub from: i64,
    pub to: i64,
    pub as_of: i64,
    pub summary: ReportSummary,
    pub hosts: Vec<HostRecord>,
    /// What the findings were computed from; the period's are [`Figures::findings`].
    pub assessment: Assessment,
    pub changes: Vec<ChangeRecord>,
    pub exceptions: Vec<ExceptionRecord>,
    pub audit: Vec<AuditEntry>,
    pub policies: Vec<SlaPolicy>,
    pub imports: Vec<ImportRow>,
    pub coverage: Vec<(i64, i64)>,
    pub cves: Vec<CveRow>,
    pub ttp_chart: String,
    pub open_chart: String,
    pub coverage_chart: String,
}

impl Figures {
    /// The findings population of the period, in pack order (by host, then as computed).
    pub fn findings(&self) -> impl Iterator<Item = &FindingCalc> {
        period_findings(&self.assessment, self.from)
    }

    /// The period's findings rendered as records (for the dashboard exports; the pack
    /// streams them instead).
    pub fn finding_records(&self) -> Vec<Finding> {
        self.findings().map(|f| self.assessment.record(f)).collect()
    }
}

fn in_period(t: i64, from: i64, to: i64) -> bool {
    t >= from && t <= to
}

/// The findings that belong to the period: detected by its end, not fixed before its start.
pub fn period_findings(a: &Assessment, from: i64) -> impl Iterator<Item = &FindingCalc> {
    a.findings
        .iter()
        .filter(move |f| f.detected_at <= a.as_of && f.fixed_at.is_none_or(|x| x >= from))
}

/// Per-severity remediation figures of the period (shared by the report and the dashboard).
pub fn severity_figures(a: &Assessment, from: i64) -> Vec<SeverityFigures> {
    let policy_now = in_force(&a.policies, a.as_of).map(|p| &p.policy);
    Rating::ALL
        .into_iter()
        .map(|rating| {
            let mut ttp = Vec::new();
            let mut fig = SeverityFigures {
                severity: rating,
                sla_days: policy_now.map_or(0, |p| p.days(rating)),
                fixed: 0,
                fixed_on_time: 0,
                fixed_by_livepatch: 0,
                fixed_by_kernel: 0,
                on_time_share: None,
                p50_secs: None,
                p95_secs: None,
                open_at_end: 0,
                overdue_at_end: 0,
                excepted: 0,
            };
            for f in period_findings(a, from).filter(|f| f.severity == rating) {
                if f.remediated() && f.fixed_at.is_some_and(|x| in_period(x, from, a.as_of)) {
                    fig.fixed += 1;
                    if f.verdict == Verdict::FixedOnTime {
                        fig.fixed_on_time += 1;
                    }
                    match f.fix_method {
                        Some(FixMethod::Livepatch) => fig.fixed_by_livepatch += 1,
                        Some(FixMethod::Kernel) => fig.fixed_by_kernel += 1,
                        _ => {}
                    }
                    if let Some(t) = f.time_to_patch() {
                        ttp.push(t);
                    }
                }
                if f.fixed_at.is_none() && f.verdict != Verdict::HostRetired {
                    fig.open_at_end += 1;
                    if f.verdict == Verdict::OpenOverdue {
                        fig.overdue_at_end += 1;
                    }
                }
                if f.verdict == Verdict::Excepted {
                    fig.excepted += 1;
                }
            }
            ttp.sort_unstable();
            fig.p50_secs = percentile(&ttp, 50).map(|ms| (ms / 1000) as u64);
            fig.p95_secs = percentile(&ttp, 95).map(|ms| (ms / 1000) as u64);
            fig.on_time_share =
                (fig.fixed > 0).then(|| fig.fixed_on_time as f64 / fig.fixed as f64);
            fig
        })
        .collect()
}

/// Time-to-patch values per severity for findings fixed in the period, for the chart.
pub fn ttp_series(a: &Assessment, from: i64) -> Vec<TtpSeries> {
    let policy_now = in_force(&a.policies, a.as_of).map(|p| &p.policy);
    Rating::ALL
        .into_iter()
        .map(|rating| TtpSeries {
            rating,
            sla_days: policy_now.map_or(0, |p| p.days(rating)),
            ttp_secs: period_findings(a, from)
                .filter(|f| f.severity == rating)
                .filter(|f| f.fixed_at.is_some_and(|x| in_period(x, from, a.as_of)))
                .filter_map(|f| f.time_to_patch().map(|ms| ms / 1000))
                .collect(),
        })
        .collect()
}

/// Open findings per day of `[from, as_of]`, per severity with any.
pub fn open_series(a: &Assessment, from: i64) -> (Vec<i64>, Vec<(Rating, Vec<u64>)>) {
    let first = from.div_euclid(DAY_MS);
    let last = a.as_of.div_euclid(DAY_MS);
    if last < first {
        return (Vec::new(), Vec::new());
    }
    let days: Vec<i64> = (first..=last).map(|d| d * DAY_MS + DAY_MS - 1).collect();
    let n = days.len();
    let mut out = Vec::new();
    for rating in Rating::ALL {
        // difference array over days: +1 the day a finding is open at the day's end, -1 after
        let mut diff = vec![0i64; n + 1];
        let mut any = false;
        for f in a.findings.iter().filter(|f| f.severity == rating) {
            let open_from = f.detected_at.div_euclid(DAY_MS).max(first);
            // open at the end of day d when detected <= end(d) < fixed
            let open_until = f
                .fixed_at
                .map_or(last, |x| (x - 1).div_euclid(DAY_MS).min(last));
            if open_until < open_from || open_from > last {
                continue;
            }
            any = true;
            diff[(open_from - first) as usize] += 1;
            diff[(open_until - first + 1) as usize] -= 1;
        }
        if any {
            let mut acc = 0i64;
            let values = diff[..n]
                .iter()
                .map(|d| {
                    acc += d;
                    acc.max(0) as u64
                })
                .collect();
            out.push((rating, values));
        }
    }
    (days, out)
}

fn host_records(a: &Assessment, from: i64) -> Vec<HostRecord> {
    let mut open: HashMap<u32, u64> = HashMap::new();
    for f in a.findings.iter().filter(|f| f.open_at(a.as_of)) {
        *open.entry(f.host).or_default() += 1;
    }
    a.hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| h.revoked_at.is_none_or(|r| r >= from))
        .map(|(i, h)| {
            let timeline = &a.timelines[i];
            let last = timeline.last();
            let mut reboots = 0;
            let mut livepatches = 0;
            let mut previous: Option<&crate::store::history::HostState> = None;
            for s in timeline {
                if in_period(s.at, from, a.as_of) {
                    if s.has_event("reboot") {
                        reboots += 1;
                    }
                    if is_livepatch_apply(previous, s) {
                        livepatches += 1;
                    }
                }
                previous = Some(s);
            }
            let boot = timeline
                .iter()
                .rev()
                .find(|s| s.uptime_secs.is_some())
                .filter(|s| s.boot_id == last.and_then(|l| l.boot_id.clone()))
                .and_then(|s| s.boot_time());
            let last_seen = last
                .map(|s| s.at)
                .into_iter()
                .chain(h.last_checkin_at.filter(|t| *t <= a.as_of))
                .max();
            HostRecord {
                host_id: h.id.clone(),
                hostname: h.hostname.clone(),
                channel: h.channel.clone(),
                registered_at: rfc3339(h.registered_at),
                revoked_at: h.revoked_at.map(rfc3339),
                last_seen_at: last_seen.map(rfc3339),
                kernel_release: last.and_then(|s| s.kernel_release.clone()),
                package_version: last.and_then(|s| s.package_version.clone()),
                build_id: last.and_then(|s| s.build_id.clone()),
                applied_level: last
                    .and_then(|s| s.applied_level)
                    .and_then(|l| u32::try_from(l).ok()),
                applied_state: last.and_then(|s| s.applied_state.clone()),
                uptime_days_at_end: boot
                    .filter(|_| h.revoked_at.is_none())
                    .map(|b| round2((a.as_of - b) as f64 / DAY_MS as f64)),
                reboots_in_period: reboots,
                livepatches_in_period: livepatches,
                cve_knowledge: last.is_some_and(|s| {
                    a.knowledge
                        .knows_kernel(s.package_version.as_deref(), s.build_id.as_deref())
                }),
                open_findings_at_end: open.get(&(i as u32)).copied().unwrap_or(0),
                taint: timeline
                    .iter()
                    .rev()
                    .find_map(|s| s.taint)
                    .and_then(|t| u64::try_from(t).ok()),
            }
        })
        .collect()
}

/// A live patch level went up on the same boot: that is a fix that needed no reboot.
pub fn is_livepatch_apply(
    previous: Option<&crate::store::history::HostState>,
    s: &crate::store::history::HostState,
) -> bool {
    let Some(level) = s.effective_level() else {
        return false;
    };
    let Some(p) = previous else {
        return false;
    };
    p.boot_id == s.boot_id
        && p.build_id == s.build_id
        && p.effective_level().is_none_or(|l| l < level)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

async fn changes(service: &Service, a: &Assessment, from: i64) -> Result<Vec<ChangeRecord>, Error> {
    let mut out = Vec::new();
    let publishers: HashMap<&str, &str> = a
        .knowledge
        .release_rows()
        .into_iter()
        .map(|r| (r.id.as_str(), r.published_by.as_str()))
        .collect();
    for r in a.knowledge.release_rows() {
        if in_period(r.published_at, from, a.as_of) {
            let fixes = a.knowledge.release_fixes(r);
            out.push((
                r.published_at,
                ChangeRecord {
                    kind: "publish".into(),
                    release: r.id.clone(),
                    channel: r.channels.iter().min_by_key(|c| c.1).map(|c| c.0.clone()),
                    made_by: r.published_by.clone(),
                    made_at: rfc3339(r.published_at),
                    published_by: r.published_by.clone(),
                    approved_by: None,
                    approved_at: None,
                    emergency: false,
                    reason: None,
                    segregation_ok: true,
                    note: format!("fixes: {}", fixes.join(" ")),
                },
            ));
        }
        if let Some(w) = r.withdrawn_at.filter(|w| in_period(*w, from, a.as_of)) {
            out.push((
                w,
                ChangeRecord {
                    kind: "withdraw".into(),
                    release: r.id.clone(),
                    channel: None,
                    made_by: String::new(),
                    made_at: rfc3339(w),
                    published_by: r.published_by.clone(),
                    approved_by: None,
                    approved_at: None,
                    emergency: false,
                    reason: None,
                    segregation_ok: true,
                    note: "withdrawn from every channel".into(),
                },
            ));
        }
    }
    let rows = sqlx::query(
        "SELECT id, release_id, to_channel, requested_by, requested_at, reason, status, approved_by, approved_at FROM promotions WHERE requested_at <= $1 ORDER BY requested_at, id",
    )
    .bind(a.as_of)
    .fetch_all(&service.db.pool)
    .await?;
    for row in &rows {
        let requested_at: i64 = row.try_get("requested_at")?;
        let approved_at: Option<i64> = row
            .try_get::<Option<i64>, _>("approved_at")?
            .filter(|t| *t <= a.as_of);
        let touched = in_period(requested_at, from, a.as_of)
            || approved_at.is_some_and(|t| in_period(t, from, a.as_of));
        if !touched {
            continue;
        }
        let release: String = row.try_get("release_id")?;
        let requested_by: String = row.try_get("requested_by")?;
        let approved_by: Option<String> =
            approved_at.and(row.try_get::<Option<String>, _>("approved_by")?);
        let status: String = row.try_get("status")?;
        let published_by = publishers.get(release.as_str()).copied().unwrap_or("");
        let emergency = status.starts_with("emergency");
        let immediate = approved_at == Some(requested_at);
        let (segregation_ok, note) = match (status.as_str(), &approved_by) {
            ("superseded", _) => (true, "superseded by a later effective promotion".to_owned()),
            (_, None) if emergency => (
                false,
                "emergency: effective at once, awaiting approval by a second approver".to_owned(),
            ),
            (_, None) => (true, "pending approval (not effective)".to_owned()),
            (_, Some(checker)) => {
                let ok = checker != published_by && (immediate || *checker != requested_by);
                let note = if emergency {
                    "emergency, approved afterwards"
                } else if immediate {
                    "promoted by an approver who did not publish"
                } else {
                    "requested, then approved"
                };
                (ok, note.to_owned())
            }
        };
        out.push((
            approved_at.unwrap_or(requested_at),
            ChangeRecord {
                kind: if emergency {
                    "emergency_promote"
                } else {
                    "promote"
                }
                .into(),
                release,
                channel: row.try_get("to_channel")?,
                made_by: requested_by,
                made_at: rfc3339(requested_at),
                published_by: published_by.to_owned(),
                approved_by,
                approved_at: approved_at.map(rfc3339),
                emergency,
                reason: row.try_get("reason")?,
                segregation_ok,
                note,
            },
        ));
    }
    out.sort_by(|x, y| x.0.cmp(&y.0).then_with(|| x.1.release.cmp(&y.1.release)));
    Ok(out.into_iter().map(|(_, c)| c).collect())
}

async fn audit_extract(service: &Service, from: i64, to: i64) -> Result<Vec<AuditEntry>, Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM audit_log WHERE at >= $1 AND at <= $2 ORDER BY seq",
        audit::ENTRY_COLUMNS
    )))
    .bind(from)
    .bind(to)
    .fetch_all(&service.db.pool)
    .await?;
    rows.iter().map(audit::entry).collect()
}

async fn imports(service: &Service, until: i64) -> Result<Vec<ImportRow>, Error> {
    let rows = sqlx::query(
        "SELECT source, file_name, sha256, imported_at, imported_by, records FROM cve_imports WHERE imported_at <= $1 ORDER BY imported_at, id",
    )
    .bind(until)
    .fetch_all(&service.db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ImportRow {
                source: r.try_get("source")?,
                file: r.try_get("file_name")?,
                sha256: r.try_get("sha256")?,
                imported_at: rfc3339(r.try_get("imported_at")?),
                imported_by: r.try_get("imported_by")?,
                records: r.try_get("records")?,
            })
        })
        .collect()
}

fn chain_text(v: &ChainVerdict) -> String {
    match v {
        ChainVerdict::Intact { records, head } => {
            format!("intact: all {records} records verified from #1 to #{records}, head {head}")
        }
        ChainVerdict::Broken { seq, reason } => {
            format!("BROKEN at record {seq}: {reason}")
        }
    }
}

/// Computes every figure of the period `[from, to]`.
pub async fn figures(service: &Service, from: i64, to: i64) -> Result<Figures, Error> {
    if from > to {
        return Err(Error::BadRequest(
            "the period starts after it ends; give --from before --to".into(),
        ));
    }
    let as_of = to.min(service.clock.now_ms());
    if as_of < from {
        return Err(Error::BadRequest(format!(
            "the period starts in the future ({}); choose a period that has begun",
            rfc3339(from)
        )));
    }
    let a = assess(service, as_of).await?;
    let hosts = host_records(&a, from);
    let severities = severity_figures(&a, from);
    let population: Vec<&FindingCalc> = period_findings(&a, from).collect();
    let changes = changes(service, &a, from).await?;
    let exceptions: Vec<ExceptionRecord> = a
        .exceptions
        .iter()
        .filter(|(_, expires, _)| *expires >= from)
        .map(|(_, _, e)| e.clone())
        .collect();
    let audit = audit_extract(service, from, as_of).await?;
    let chain = chain_text(&audit::verify(&service.db).await?);
    let policies: Vec<SlaPolicy> = a
        .policies
        .iter()
        .enumerate()
        .filter(|(i, p)| {
            let next = a.policies.get(i + 1).map_or(i64::MAX, |n| n.effective_at);
            p.effective_at <= as_of && next > from
        })
        .map(|(_, p)| p.policy.clone())
        .collect();
    let coverage = crate::store::history::daily_coverage(&service.db, from, as_of).await?;

    let mut per_cve: BTreeMap<u32, CveRow> = BTreeMap::new();
    for f in &population {
        let row = per_cve.entry(f.cve).or_insert_with(|| CveRow {
            cve: a.knowledge.cve_name(f.cve).to_owned(),
            severity: f.severity,
            kev: f.kev,
            hosts: 0,
            livepatch: 0,
            kernel: 0,
            open: 0,
            overdue: 0,
        });
        row.severity = row.severity.max(f.severity);
        row.hosts += 1;
        match f.fix_method {
            Some(FixMethod::Livepatch) => row.livepatch += 1,
            Some(FixMethod::Kernel) => row.kernel += 1,
            _ => {}
        }
        if f.fixed_at.is_none() {
            row.open += 1;
        }
        if f.verdict == Verdict::OpenOverdue {
            row.overdue += 1;
        }
    }
    let mut cves: Vec<CveRow> = per_cve.into_values().collect();
    cves.sort_by(|x, y| {
        y.overdue
            .cmp(&x.overdue)
            .then(y.severity.cmp(&x.severity))
            .then(y.open.cmp(&x.open))
            .then(x.cve.cmp(&y.cve))
    });

    let at_start = a
        .hosts
        .iter()
        .filter(|h| h.registered_at <= from && h.revoked_at.is_none_or(|r| r > from))
        .count() as u64;
    let at_end = a
        .hosts
        .iter()
        .filter(|h| h.revoked_at.is_none_or(|r| r > as_of))
        .count() as u64;
    let silent = a
        .hosts
        .iter()
        .filter(|h| h.revoked_at.is_none_or(|r| r > as_of))
        .filter(|h| {
            h.last_checkin_at
                .is_none_or(|t| t <= as_of && t < as_of - SILENT_AFTER_MS)
        })
        .count() as u64;
    let mut reboots = 0;
    let mut reboots_avoided = 0;
    let mut failures = 0;
    for timeline in &a.timelines {
        let mut previous = None;
        for s in timeline {
            if in_period(s.at, from, as_of) {
                reboots += u64::from(s.has_event("reboot"));
                failures += u64::from(s.has_event("update_failed"));
                reboots_avoided += u64::from(is_livepatch_apply(previous, s));
            }
            previous = Some(s);
        }
    }
    let mut uptimes: Vec<i64> = hosts
        .iter()
        .filter_map(|h| h.uptime_days_at_end.map(|d| (d * 100.0) as i64))
        .collect();
    uptimes.sort_unstable();
    let kev: Vec<&&FindingCalc> = population.iter().filter(|f| f.kev).collect();
    let summary = ReportSummary {
        period_from: rfc3339(from),
        period_to: rfc3339(to),
        as_of: rfc3339(as_of),
        hosts_at_start: at_start,
        hosts_at_end: at_end,
        hosts_in_scope: hosts.len() as u64,
        hosts_without_cve_knowledge: hosts.iter().filter(|h| !h.cve_knowledge).count() as u64,
        hosts_silent_at_end: silent,
        findings: population.len() as u64,
        severities,
        kev_findings: kev.len() as u64,
        kev_on_time: kev
            .iter()
            .filter(|f| f.verdict == Verdict::FixedOnTime)
            .count() as u64,
        changes: changes.len() as u64,
        promotions_segregation_violations: changes.iter().filter(|c| !c.segregation_ok).count()
            as u64,
        emergency_changes: changes.iter().filter(|c| c.emergency).count() as u64,
        emergency_unapproved: changes
            .iter()
            .filter(|c| c.emergency && c.approved_by.is_none())
            .count() as u64,
        reboots,
        reboots_avoided,
        median_uptime_days_at_end: percentile(&uptimes, 50).map(|v| v as f64 / 100.0),
        update_failures: failures,
        hosts_reporting_taint: hosts.iter().filter(|h| h.taint.is_some()).count() as u64,
        hosts_foreign_or_unsigned_modules: hosts
            .iter()
            .filter(|h| h.taint.is_some_and(|t| t & FOREIGN_TAINT != 0))
            .count() as u64,
        exceptions_active: a
            .exceptions
            .iter()
            .filter(|(c, e, _)| *c <= as_of && *e > as_of)
            .count() as u64,
        audit_records_in_period: audit.len() as u64,
        audit_chain: chain,
        no_data: hosts.is_empty() && changes.is_empty(),
    };
    let (days, open) = open_series(&a, from);
    let ttp_chart = charts::time_to_patch(&ttp_series(&a, from));
    let open_chart = charts::open_over_time(&days, &open);
    let coverage_chart = charts::coverage(&coverage, at_end);
    Ok(Figures {
        from,
        to,
        as_of,
        summary,
        hosts,
        assessment: a,
        changes,
        exceptions,
        audit,
        policies,
        imports: imports(service, as_of).await?,
        coverage,
        cves,
        ttp_chart,
        open_chart,
        coverage_chart,
    })
}

// ---------------------------------------------------------------------------------------------
// Files

/// CSV text of `records`, with `columns` in that order (values from their JSON form).
pub fn csv<T: Serialize>(records: &[T], columns: &[&str]) -> String {
    let mut out = Vec::new();
    let _ = write_csv(&mut out, records, columns);
    String::from_utf8(out).unwrap_or_default()
}

/// [`csv`] into a writer.
pub fn write_csv<T: Serialize, W: Write>(
    w: &mut W,
    records: &[T],
    columns: &[&str],
) -> std::io::Result<()> {
    w.write_all(columns.join(",").as_bytes())?;
    w.write_all(b"\n")?;
    let mut line = Vec::new();
    for r in records {
        line.clear();
        let value = serde_json::to_value(r).unwrap_or(Value::Null);
        for (i, c) in columns.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            match value.get(c) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => csv_cell(&mut line, s),
                Some(other) => csv_cell(&mut line, &other.to_string()),
            }
        }
        line.push(b'\n');
        w.write_all(&line)?;
    }
    Ok(())
}

/// Appends one CSV cell. A leading = + - @ would be a formula in a spreadsheet: it is quoted
/// with a leading '.
fn csv_cell(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let guard = matches!(bytes.first(), Some(b'=' | b'+' | b'-' | b'@')) && !s.starts_with("-0");
    let quote = bytes
        .iter()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if quote {
        out.push(b'"');
    }
    if guard {
        out.push(b'\'');
    }
    if quote {
        for part in s.split_inclusive('"') {
            out.extend_from_slice(part.as_bytes());
            if part.ends_with('"') {
                out.push(b'"');
            }
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Appends one finding as a CSV line (the header is [`FINDING_COLUMNS`]); the same cells as
/// [`csv`] gives, written field by field (the population can have millions of rows).
pub fn finding_csv_line(out: &mut Vec<u8>, x: &Finding) {
    let opt = |out: &mut Vec<u8>, v: &Option<String>| {
        if let Some(v) = v {
            csv_cell(out, v);
        }
    };
    csv_cell(out, &x.host_id);
    out.push(b',');
    csv_cell(out, &x.hostname);
    out.push(b',');
    csv_cell(out, &x.cve);
    out.push(b',');
    out.extend_from_slice(x.severity.as_str().as_bytes());
    out.push(b',');
    csv_cell(out, &x.severity_source);
    out.push(b',');
    out.extend_from_slice(if x.kev { b"true," } else { b"false," });
    csv_cell(out, &x.kernel_release);
    out.push(b',');
    csv_cell(out, &x.detected_at);
    out.push(b',');
    csv_cell(out, &x.clock_start_at);
    out.push(b',');
    csv_cell(out, &x.clock_start_basis);
    out.push(b',');
    csv_cell(out, &x.due_at);
    let _ = write!(out, ",{},", x.policy_version);
    opt(out, &x.fixed_at);
    out.push(b',');
    if let Some(m) = x.fix_method {
        out.extend_from_slice(m.as_str().as_bytes());
    }
    out.push(b',');
    if let Some(l) = x.fixed_level {
        let _ = write!(out, "{l}");
    }
    out.push(b',');
    opt(out, &x.fixed_kernel);
    out.push(b',');
    if let Some(t) = x.time_to_patch_secs {
        let _ = write!(out, "{t}");
    }
    out.push(b',');
    out.extend_from_slice(x.verdict.as_str().as_bytes());
    out.push(b',');
    opt(out, &x.exception_id);
    out.push(b'\n');
}

/// The findings population as CSV text (see [`finding_csv_line`]).
pub fn findings_csv(findings: &[Finding]) -> String {
    let mut out = FINDING_COLUMNS.join(",").into_bytes();
    out.push(b'\n');
    for x in findings {
        finding_csv_line(&mut out, x);
    }
    String::from_utf8(out).unwrap_or_default()
}

pub const HOST_COLUMNS: &[&str] = &[
    "host_id",
    "hostname",
    "channel",
    "registered_at",
    "revoked_at",
    "last_seen_at",
    "kernel_release",
    "package_version",
    "build_id",
    "applied_level",
    "applied_state",
    "uptime_days_at_end",
    "reboots_in_period",
    "livepatches_in_period",
    "cve_knowledge",
    "open_findings_at_end",
    "taint",
];
pub const FINDING_COLUMNS: &[&str] = &[
    "host_id",
    "hostname",
    "cve",
    "severity",
    "severity_source",
    "kev",
    "kernel_release",
    "detected_at",
    "clock_start_at",
    "clock_start_basis",
    "due_at",
    "policy_version",
    "fixed_at",
    "fix_method",
    "fixed_level",
    "fixed_kernel",
    "time_to_patch_secs",
    "verdict",
    "exception_id",
];
pub const CHANGE_COLUMNS: &[&str] = &[
    "kind",
    "release",
    "channel",
    "made_by",
    "made_at",
    "published_by",
    "approved_by",
    "approved_at",
    "emergency",
    "reason",
    "segregation_ok",
    "note",
];
pub const EXCEPTION_COLUMNS: &[&str] = &[
    "id",
    "cve",
    "host_id",
    "reason",
    "created_by",
    "created_at",
    "expires_at",
];
pub const AUDIT_COLUMNS: &[&str] = &[
    "seq",
    "at",
    "actor",
    "action",
    "subject",
    "detail",
    "prev_hash",
    "hash",
];

/// A JSON array with one compact record per line (populations can have millions of rows).
pub fn write_json_records<T: Serialize, W: Write>(
    w: &mut W,
    records: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    let mut json = JsonLines::default();
    for r in records {
        json.push(w, &r)?;
    }
    json.finish(w)
}

/// Writes a JSON array one compact record per line, record by record.
#[derive(Default)]
struct JsonLines {
    any: bool,
    line: Vec<u8>,
}

impl JsonLines {
    fn push<T: Serialize, W: Write>(&mut self, w: &mut W, record: &T) -> std::io::Result<()> {
        self.line.clear();
        self.line
            .extend_from_slice(if self.any { b",\n" } else { b"[\n" });
        self.any = true;
        serde_json::to_writer(&mut self.line, record)?;
        w.write_all(&self.line)
    }

    fn finish<W: Write>(self, w: &mut W) -> std::io::Result<()> {
        w.write_all(if self.any { b"\n]\n" } else { b"[\n]\n" })
    }
}

fn json_bytes<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, Error> {
    let mut bytes = serde_json::to_vec_pretty(v)
        .map_err(|e| Error::Corrupt(format!("serialising evidence: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Vanta's Build Integrations shapes: one `VulnerableComponent` per host, one
/// `PackageVulnerabilityConnectors` record per open finding (package `kernel`).
pub fn vanta_export(f: &Figures) -> Value {
    let hosts: Vec<Value> = f
        .hosts
        .iter()
        .map(|h| {
            serde_json::json!({
                "displayName": h.hostname,
                "uniqueId": h.host_id,
                "externalUrl": format!("/ui/hosts/{}", h.host_id),
                "collectedTimestamp": f.summary.as_of,
                "name": h.hostname,
                "description": format!("kernel {} at klive level {}", h.kernel_release.as_deref().unwrap_or("unknown"),
                    h.applied_level.map_or("none".to_owned(), |l| l.to_string())),
                "targetType": "SERVER",
            })
        })
        .collect();
    let vulns: Vec<Value> = f
        .finding_records()
        .into_iter()
        .filter(|x| x.fixed_at.is_none() && x.verdict != Verdict::HostRetired)
        .map(|x| {
            serde_json::json!({
                "packageName": "kernel",
                "packageVersion": x.kernel_release,
                "severity": vanta_severity(x.severity),
                "cveId": x.cve,
                "vulnerableComponentUniqueId": x.host_id,
                "isResolvable": true,
                "remediationInstructions": "apply the klive live patch level that fixes it, or reboot into a fixed kernel",
                "detectedDate": x.detected_at,
                "remediateByDate": x.due_at,
            })
        })
        .collect();
    serde_json::json!({"vulnerable_components": hosts, "package_vulnerability_connectors": vulns})
}

fn vanta_severity(r: Rating) -> f64 {
    match r {
        Rating::Critical => 9.0,
        Rating::High => 7.0,
        Rating::Medium => 4.0,
        Rating::Low => 0.1,
        Rating::Unrated => 0.0,
    }
}

/// Drata custom-connection records: one per finding of the period.
pub fn drata_export(f: &Figures) -> Value {
    let records: Vec<Value> = f
        .finding_records()
        .into_iter()
        .map(|x| {
            serde_json::json!({
                "id": format!("{}:{}:{}", x.host_id, x.cve, x.detected_at),
                "hostId": x.host_id,
                "hostname": x.hostname,
                "cve": x.cve,
                "severity": x.severity.as_str(),
                "status": if x.fixed_at.is_some() { "RESOLVED" } else { "OPEN" },
                "firstFound": x.detected_at,
                "slaDueDate": x.due_at,
                "resolvedAt": x.fixed_at,
                "resolution": x.fix_method.map(|m| m.as_str()),
                "verdict": x.verdict.as_str(),
            })
        })
        .collect();
    serde_json::json!({"records": records})
}

#[derive(Template)]
#[template(path = "report.html")]
struct ReportPage<'a> {
    f: &'a Figures,
    s: &'a ReportSummary,
    generated_at: String,
    generated_by: &'a str,
    command: &'a str,
    generator: String,
    public_key: &'a str,
    severity_rows: Vec<[String; 11]>,
    top_findings: Vec<Finding>,
    findings_listed: usize,
    cve_rows: Vec<&'a CveRow>,
    silent_hosts: Vec<&'a HostRecord>,
    tainted_hosts: Vec<&'a HostRecord>,
    style: &'static str,
}

pub const REPORT_CSS: &str = include_str!("../../../templates/report.css");

/// Days with one decimal, or "no data".
pub fn days_text(secs: Option<u64>) -> String {
    secs.map_or("no data".into(), |s| format!("{:.1} d", s as f64 / 86400.0))
}

pub fn share_text(v: Option<f64>) -> String {
    v.map_or("no data".into(), |v| format!("{:.1}%", v * 100.0))
}

fn severity_rows(s: &ReportSummary) -> Vec<[String; 11]> {
    s.severities
        .iter()
        .map(|x| {
            [
                x.severity.as_str().to_owned(),
                x.sla_days.to_string(),
                x.fixed.to_string(),
                x.fixed_by_livepatch.to_string(),
                x.fixed_by_kernel.to_string(),
                share_text(x.on_time_share),
                days_text(x.p50_secs),
                days_text(x.p95_secs),
                x.open_at_end.to_string(),
                x.overdue_at_end.to_string(),
                x.excepted.to_string(),
            ]
        })
        .collect()
}

/// Renders the printable report.
pub fn render_html(
    f: &Figures,
    generated_at: i64,
    generated_by: &str,
    command: &str,
    public_key: &str,
) -> Result<String, Error> {
    // Earliest due first by the due date's text (as the populations show it), then host.
    let a = &f.assessment;
    let mut top: Vec<(String, &str, &FindingCalc)> = f
        .findings()
        .filter(|x| matches!(x.verdict, Verdict::OpenOverdue | Verdict::FixedLate))
        .map(|x| (rfc3339(x.due_at), a.hosts[x.host as usize].id.as_str(), x))
        .collect();
    top.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.cmp(y.1)));
    let listed = top.len().min(HTML_FINDINGS);
    let top: Vec<Finding> = top
        .into_iter()
        .take(HTML_FINDINGS)
        .map(|(_, _, x)| a.record(x))
        .collect();
    let page = ReportPage {
        f,
        s: &f.summary,
        generated_at: rfc3339(generated_at),
        generated_by,
        command,
        generator: format!("klive-server {}", env!("CARGO_PKG_VERSION")),
        public_key,
        severity_rows: severity_rows(&f.summary),
        findings_listed: listed,
        top_findings: top,
        cve_rows: f.cves.iter().take(200).collect(),
        silent_hosts: f
            .hosts
            .iter()
            .filter(|h| h.revoked_at.is_none())
            .filter(|h| {
                h.last_seen_at.as_deref().is_none_or(|t| {
                    t.parse::<jiff::Timestamp>()
                        .map(|t| t.as_millisecond() < f.as_of - SILENT_AFTER_MS)
                        .unwrap_or(true)
                })
            })
            .take(200)
            .collect(),
        tainted_hosts: f
            .hosts
            .iter()
            .filter(|h| h.taint.is_some_and(|t| t & FOREIGN_TAINT != 0))
            .take(200)
            .collect(),
        style: REPORT_CSS,
    };
    page.render()
        .map_err(|e| Error::Corrupt(format!("rendering the report: {e}")))
}

/// The command that regenerates a pack of this period.
pub fn reproduce_command(from: i64, to: i64) -> String {
    format!(
        "klive-server report soc2 --from {} --to {} --out DIR",
        rfc3339(from),
        rfc3339(to)
    )
}

/// Steps and their milliseconds.
pub type Timings = Vec<(&'static str, u128)>;

/// A pack that was written.
#[derive(Debug)]
pub struct PackOutcome {
    pub summary: ReportSummary,
    pub manifest: EvidenceManifest,
    pub command: String,
    /// Why the PDF is missing although Chromium was given.
    pub pdf_note: Option<String>,
    /// Where the time went, step by step (milliseconds).
    pub timings: Timings,
}

/// Computes the period's figures and writes the pack into `out` (which must not exist or be
/// empty). Needs the approver role: the pack is signed with the server's key and is the
/// organisation's formal evidence (viewers read the same figures on the dashboard).
///
/// The populations are streamed to disk record by record, each file hashed as its bytes go
/// out; the report is written first so Chromium prints the PDF while the populations are
/// written. Everything goes to a sibling temporary directory that is renamed into place once
/// the signed manifest is written, so a failed run leaves no partial pack.
pub async fn generate_pack(
    service: &Service,
    by: &AuthUser,
    key: &EvidenceKey,
    from: i64,
    to: i64,
    out: &Path,
    chromium: Option<&Path>,
) -> Result<PackOutcome, Error> {
    require(by, Role::Approver)?;
    let dir = PackDir::create(out)?;
    let started = std::time::Instant::now();
    let f = figures(service, from, to).await?;
    let mut timings = f.assessment.timings.clone();
    timings.push(("figures", started.elapsed().as_millis()));
    let generated_at = service.clock.now_ms();
    let command = reproduce_command(from, to);
    let computed = started.elapsed().as_millis();
    let html = render_html(&f, generated_at, &by.name, &command, &key.public_hex)?;
    timings.push(("report_html", started.elapsed().as_millis() - computed));
    let chromium = chromium.map(Path::to_path_buf);
    let (dir, f, pdf_note, steps) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let mut dir = dir;
        let (pdf_note, steps) = write_files(&mut dir, &f, &html, chromium.as_deref())?;
        Ok((dir, f, pdf_note, steps))
    })
    .await
    .map_err(|e| Error::Corrupt(format!("the pack writer failed: {e}")))??;
    timings.extend(steps);
    let manifest = dir.finish(
        EvidenceManifest {
            format: EVIDENCE_FORMAT,
            kind: "soc2".into(),
            generator: format!("klive-server {}", env!("CARGO_PKG_VERSION")),
            generated_at: rfc3339(generated_at),
            period_from: rfc3339(from),
            period_to: rfc3339(to),
            as_of: rfc3339(f.as_of),
            generated_by: by.name.clone(),
            command: command.clone(),
            public_key: key.public_hex.clone(),
            files: Vec::new(),
        },
        key,
    )?;
    timings.push(("total", started.elapsed().as_millis()));
    Ok(PackOutcome {
        summary: f.summary,
        manifest,
        command,
        pdf_note,
        timings,
    })
}

/// Writes the report, starts Chromium on it, then the summary and every population; waits
/// for the PDF last.
fn write_files(
    dir: &mut PackDir,
    f: &Figures,
    html: &str,
    chromium: Option<&Path>,
) -> Result<(Option<String>, Timings), Error> {
    let mut steps = Vec::new();
    let mut step = std::time::Instant::now();
    let mut lap = |name: &'static str, steps: &mut Vec<(&'static str, u128)>| {
        steps.push((name, step.elapsed().as_millis()));
        step = std::time::Instant::now();
    };
    dir.write("report.html", None, |w| w.write_all(html.as_bytes()))?;
    let mut pdf = None;
    let mut pdf_note = None;
    if let Some(chromium) = chromium {
        let html = std::fs::canonicalize(dir.path().join("report.html"))
            .map_err(io("locating report.html".into()))?;
        match start_pdf(chromium, &html, &dir.path().join("report.pdf")) {
            Ok(job) => pdf = Some(job),
            Err(e) => pdf_note = Some(e),
        }
    }
    let summary = json_bytes(&serde_json::json!({
        "summary": f.summary,
        "policies_in_force": f.policies,
        "cve_imports": f.imports,
        "daily_checkins": f.coverage.iter().map(|(d, n)| serde_json::json!({"day": rfc3339(*d), "hosts": n})).collect::<Vec<_>>(),
    }))?;
    dir.write("summary.json", None, |w| w.write_all(&summary))?;
    lap("report_and_summary", &mut steps);
    // Two writers, one per core: every CSV file on this thread, every JSON file on another;
    // each renders the findings record by record as it goes.
    let shared: &PackDir = dir;
    let (csv, json) = std::thread::scope(|scope| {
        let json = scope.spawn(|| write_json_files(shared, f));
        let csv = write_csv_files(shared, f);
        let json = json
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (csv, json)
    });
    dir.files.extend(csv?);
    dir.files.extend(json?);
    lap("populations", &mut steps);
    // The Vanta and Drata shapes repeat the findings population; they are served as
    // dashboard exports (/ui/exports/) rather than doubling the pack.
    if let Some(job) = pdf {
        match job.wait() {
            Ok(()) => dir.add_written("report.pdf")?,
            Err(e) => pdf_note = Some(e),
        }
        lap("pdf_wait", &mut steps);
    }
    Ok((pdf_note, steps))
}

fn write_csv_files(dir: &PackDir, f: &Figures) -> Result<Vec<ManifestFile>, Error> {
    let mut files = Vec::new();
    let mut small =
        |name: &str, rows: usize, write: &dyn Fn(&mut PackFile) -> std::io::Result<()>| {
            let mut file = dir.open_file(name)?;
            write(&mut file).map_err(io(format!("writing {name}")))?;
            files.push(file.finish(Some(rows as u64))?);
            Ok::<(), Error>(())
        };
    small("hosts.csv", f.hosts.len(), &|w| {
        write_csv(w, &f.hosts, HOST_COLUMNS)
    })?;
    small("changes.csv", f.changes.len(), &|w| {
        write_csv(w, &f.changes, CHANGE_COLUMNS)
    })?;
    small("exceptions.csv", f.exceptions.len(), &|w| {
        write_csv(w, &f.exceptions, EXCEPTION_COLUMNS)
    })?;
    small("audit.csv", f.audit.len(), &|w| {
        write_csv(w, &f.audit, AUDIT_COLUMNS)
    })?;
    let mut file = dir.open_file("findings.csv")?;
    let mut record = empty_finding();
    let mut line = FINDING_COLUMNS.join(",").into_bytes();
    line.push(b'\n');
    let mut rows = 0u64;
    (|| -> std::io::Result<()> {
        file.write_all(&line)?;
        for x in f.findings() {
            f.assessment.fill_record(x, &mut record);
            line.clear();
            finding_csv_line(&mut line, &record);
            file.write_all(&line)?;
            rows += 1;
        }
        Ok(())
    })()
    .map_err(io("writing findings.csv".into()))?;
    files.push(file.finish(Some(rows))?);
    Ok(files)
}

fn write_json_files(dir: &PackDir, f: &Figures) -> Result<Vec<ManifestFile>, Error> {
    let mut files = Vec::new();
    let mut small =
        |name: &str, rows: usize, write: &dyn Fn(&mut PackFile) -> std::io::Result<()>| {
            let mut file = dir.open_file(name)?;
            write(&mut file).map_err(io(format!("writing {name}")))?;
            files.push(file.finish(Some(rows as u64))?);
            Ok::<(), Error>(())
        };
    small("hosts.json", f.hosts.len(), &|w| {
        write_json_records(w, &f.hosts)
    })?;
    small("changes.json", f.changes.len(), &|w| {
        write_json_records(w, &f.changes)
    })?;
    small("exceptions.json", f.exceptions.len(), &|w| {
        write_json_records(w, &f.exceptions)
    })?;
    small("audit.json", f.audit.len(), &|w| {
        write_json_records(w, &f.audit)
    })?;
    let mut file = dir.open_file("findings.json")?;
    let mut record = empty_finding();
    let mut json = JsonLines::default();
    let mut rows = 0u64;
    (|| -> std::io::Result<()> {
        for x in f.findings() {
            f.assessment.fill_record(x, &mut record);
            json.push(&mut file, &record)?;
            rows += 1;
        }
        json.finish(&mut file)
    })()
    .map_err(io("writing findings.json".into()))?;
    files.push(file.finish(Some(rows))?);
    Ok(files)
}

fn empty_finding() -> Finding {
    Finding {
        host_id: String::new(),
        hostname: String::new(),
        cve: String::new(),
        severity: Rating::Unrated,
        severity_source: String::new(),
        kev: false,
        kernel_release: String::new(),
        detected_at: String::new(),
        clock_start_at: String::new(),
        clock_start_basis: String::new(),
        due_at: String::new(),
        policy_version: 0,
        fixed_at: None,
        fix_method: None,
        fixed_level: None,
        fixed_kernel: None,
        time_to_patch_secs: None,
        verdict: Verdict::OpenWithinSla,
        exception_id: None,
    }
}

/// A file of the pack being written: buffered, and hashed (SHA-256) and counted as its bytes
/// go to disk, so no file is read back to hash it.
pub struct PackFile {
    name: String,
    inner: BufWriter<HashedFile>,
}

impl std::fmt::Debug for PackFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackFile")
            .field("name", &self.name)
            .finish()
    }
}

impl PackFile {
    /// Flushes the file; its manifest entry with hash, size and data rows.
    pub fn finish(self, rows: Option<u64>) -> Result<ManifestFile, Error> {
        let what = format!("writing {}", self.name);
        let hashed = self.inner.into_inner().map_err(|e| Error::Io {
            what,
            source: e.into_error(),
        })?;
        Ok(ManifestFile {
            path: self.name,
            sha256: hex(&hashed.hasher.finalize()),
            size: hashed.size,
            rows,
        })
    }
}

struct HashedFile {
    file: std::fs::File,
    hasher: Sha256,
    size: u64,
}

impl Write for HashedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Write for PackFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A pack being written into a sibling temporary directory of its destination; removed
/// unless [`PackDir::finish`] moved it into place.
#[derive(Debug)]
pub struct PackDir {
    out: PathBuf,
    tmp: PathBuf,
    files: Vec<ManifestFile>,
    done: bool,
}

impl PackDir {
    /// Refuses a destination that exists and is not empty; creates the temporary directory.
    pub fn create(out: &Path) -> Result<PackDir, Error> {
        PackDir::check_destination(out)?;
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pack".into());
        let tmp = parent.join(format!(".{name}.partial"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(format!("removing {}", tmp.display())))?;
        }
        std::fs::create_dir(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        Ok(PackDir {
            out: out.to_path_buf(),
            tmp,
            files: Vec::new(),
            done: false,
        })
    }

    fn check_destination(out: &Path) -> Result<bool, Error> {
        if !out.exists() {
            return Ok(false);
        }
        let empty = std::fs::read_dir(out)
            .map_err(io(format!("reading {}", out.display())))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::BadRequest(format!(
                "{} exists and is not empty; choose a new directory for the pack",
                out.display()
            )));
        }
        Ok(true)
    }

    /// The temporary directory the files go to.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Opens a new file of the pack.
    pub fn open_file(&self, name: &str) -> Result<PackFile, Error> {
        let path = self.tmp.join(name);
        let file =
            std::fs::File::create(&path).map_err(io(format!("creating {}", path.display())))?;
        Ok(PackFile {
            name: name.to_owned(),
            inner: BufWriter::with_capacity(
                1 << 20,
                HashedFile {
                    file,
                    hasher: Sha256::new(),
                    size: 0,
                },
            ),
        })
    }

    /// Flushes a file and lists it.
    pub fn close(&mut self, file: PackFile, rows: Option<u64>) -> Result<(), Error> {
        let entry = file.finish(rows)?;
        self.files.push(entry);
        Ok(())
    }

    /// Writes a whole file.
    pub fn write(
        &mut self,
        name: &str,
        rows: Option<u64>,
        write: impl FnOnce(&mut PackFile) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        let mut file = self.open_file(name)?;
        write(&mut file).map_err(io(format!("writing {name}")))?;
        self.close(file, rows)
    }

    /// Lists a file something else wrote into the directory (the PDF), hashing it.
    pub fn add_written(&mut self, name: &str) -> Result<(), Error> {
        let path = self.tmp.join(name);
        let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        self.files.push(ManifestFile {
            path: name.to_owned(),
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            rows: None,
        });
        Ok(())
    }

    /// Writes `manifest.json` (with the files listed, by path) and its signature, and moves
    /// the pack into place.
    pub fn finish(
        mut self,
        mut manifest: EvidenceManifest,
        key: &EvidenceKey,
    ) -> Result<EvidenceManifest, Error> {
        let mut files = std::mem::take(&mut self.files);
        files.sort_by(|a, b| a.path.cmp(&b.path));
        manifest.files = files;
        let bytes = json_bytes(&manifest)?;
        std::fs::write(self.tmp.join("manifest.json"), &bytes)
            .map_err(io("writing manifest.json".into()))?;
        std::fs::write(
            self.tmp.join("manifest.sig"),
            format!("{}\n", key.sign(&bytes)),
        )
        .map_err(io("writing manifest.sig".into()))?;
        if PackDir::check_destination(&self.out)? {
            std::fs::remove_dir(&self.out)
                .map_err(io(format!("replacing {}", self.out.display())))?;
        }
        std::fs::rename(&self.tmp, &self.out)
            .map_err(io(format!("moving the pack into {}", self.out.display())))?;
        self.done = true;
        Ok(manifest)
    }
}

impl Drop for PackDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Finds Chromium for the PDF: `KLIVE_CHROMIUM`, else `chromium` / `chromium-browser` on PATH.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KLIVE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// Headless Chromium printing a report to PDF; killed if dropped before it finished.
#[derive(Debug)]
pub struct PdfJob {
    child: Option<std::process::Child>,
    profile: PathBuf,
    pdf: PathBuf,
    deadline: std::time::Instant,
}

/// Starts printing `html` to `pdf` with headless Chromium (at most 120 s).
pub fn start_pdf(chromium: &Path, html: &Path, pdf: &Path) -> Result<PdfJob, String> {
    let profile = tempfile_dir().map_err(|e| format!("creating a Chromium profile dir: {e}"))?;
    let child = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-pdf-header-footer",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(child) => Ok(PdfJob {
            child: Some(child),
            profile,
            pdf: pdf.to_path_buf(),
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(120),
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&profile);
            Err(format!("starting {}: {e}", chromium.display()))
        }
    }
}

impl PdfJob {
    /// Waits for Chromium; the error says why there is no PDF.
    pub fn wait(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Err("chromium was already waited for".into());
        };
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if std::time::Instant::now() < self.deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("chromium did not finish within 120 s".into());
                }
                Err(e) => return Err(format!("waiting for chromium: {e}")),
            }
        };
        if !status.success() || !self.pdf.is_file() {
            return Err(format!(
                "chromium exited with {status} without writing the PDF"
            ));
        }
        Ok(())
    }
}

impl Drop for PdfJob {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Prints `html` to `pdf` with headless Chromium; the error says why when it cannot.
pub fn print_pdf(chromium: &Path, html: &Path, pdf: &Path) -> Result<(), String> {
    start_pdf(chromium, html, pdf)?.wait()
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(std::io::Error::other)?;
    let dir = std::env::temp_dir().join(format!("klive-chromium-{}", hex(&raw)));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// What `report verify` found wrong, first problem only.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("{0}: cannot read it: {1}")]
    Unreadable(String, String),
    #[error("manifest.json is not a klive evidence manifest: {0}")]
    BadManifest(String),
    #[error(
        "manifest.sig does not verify against the manifest's public key: manifest.json was changed after signing"
    )]
    BadSignature,
    #[error(
        "the pack was signed by key {found}, not by the expected key {expected}: it did not come from this server"
    )]
    WrongKey { expected: String, found: String },
    #[error("{path}: sha256 is {actual}, the manifest says {expected}: the file was changed")]
    Changed {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{0}: listed in the manifest but missing")]
    Missing(String),
    #[error("{0}: present but not listed in the manifest")]
    Unlisted(String),
}

/// Checks the signature, then every file's hash; names the first bad file.
pub fn verify_pack(
    dir: &Path,
    expected_key: Option<&str>,
) -> Result<EvidenceManifest, VerifyError> {
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map_err(|e| VerifyError::Unreadable(name.into(), e.to_string()))
    };
    let bytes = read("manifest.json")?;
    let sig = read("manifest.sig")?;
    let manifest: EvidenceManifest =
        serde_json::from_slice(&bytes).map_err(|e| VerifyError::BadManifest(e.to_string()))?;
    if manifest.format != EVIDENCE_FORMAT {
        return Err(VerifyError::BadManifest(format!(
            "format {} (this build reads {EVIDENCE_FORMAT})",
            manifest.format
        )));
    }
    let public = unhex(&manifest.public_key)
        .ok_or_else(|| VerifyError::BadManifest("public_key is not hex".into()))?;
    let signature = std::str::from_utf8(&sig)
        .ok()
        .and_then(unhex)
        .ok_or(VerifyError::BadSignature)?;
    UnparsedPublicKey::new(&ED25519, &public)
        .verify(&bytes, &signature)
        .map_err(|_| VerifyError::BadSignature)?;
    if let Some(expected) = expected_key
        && expected != manifest.public_key
    {
        return Err(VerifyError::WrongKey {
            expected: expected.to_owned(),
            found: manifest.public_key.clone(),
        });
    }
    for f in &manifest.files {
        if f.path.contains('/') || f.path.starts_with('.') {
            return Err(VerifyError::BadManifest(format!(
                "unsafe path {:?}",
                f.path
            )));
        }
        let data =
            std::fs::read(dir.join(&f.path)).map_err(|_| VerifyError::Missing(f.path.clone()))?;
        let actual = sha256_hex(&data);
        if actual != f.sha256 {
            return Err(VerifyError::Changed {
                path: f.path.clone(),
                expected: f.sha256.clone(),
                actual,
            });
        }
    }
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| VerifyError::Unreadable(dir.display().to_string(), e.to_string()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manifest.json" && n != "manifest.sig")
        .collect();
    present.sort();
    if let Some(extra) = present
        .into_iter()
        .find(|n| !manifest.files.iter().any(|f| &f.path == n))
    {
        return Err(VerifyError::Unlisted(extra));
    }
    Ok(manifest)
}

/// A ustar archive of a pack directory's regular files (for the dashboard download).
pub fn tar_dir(dir: &Path, prefix: &str) -> Result<Vec<u8>, Error> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let data = std::fs::read(dir.join(&name)).map_err(io(format!("reading {name}")))?;
        let path = format!("{prefix}/{name}");
        if path.len() > 99 {
            return Err(Error::Corrupt(format!(
                "file name {path} is too long for tar"
            )));
        }
        let mut header = [0u8; 512];
        header[..path.len()].copy_from_slice(path.as_bytes());
        let mut field = |at: usize, len: usize, text: String| {
            header[at..at + text.len().min(len)]
                .copy_from_slice(&text.as_bytes()[..text.len().min(len)]);
        };
        field(100, 8, "0000644\0".into());
        field(108, 8, "0000000\0".into());
        field(116, 8, "0000000\0".into());
        field(124, 12, format!("{:011o}\0", data.len()));
        field(136, 12, format!("{:011o}\0", 0));
        field(156, 1, "0".into());
        field(257, 6, "ustar\0".into());
        field(263, 2, "00".into());
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        let mut checksum = String::new();
        let _ = write!(checksum, "{sum:06o}\0 ");
        header[148..156].copy_from_slice(checksum.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_csv_matches_the_generic_writer() {
        let f = Finding {
            host_id: "h1".into(),
            hostname: "web,1".into(),
            cve: "CVE-2024-1".into(),
            severity: Rating::High,
            severity_source: "release:x".into(),
            kev: true,
            kernel_release: "6.1".into(),
            detected_at: "2026-01-01T00:00:00Z".into(),
            clock_start_at: "2026-01-01T00:00:00Z".into(),
            clock_start_basis: "detected".into(),
            due_at: "2026-01-31T00:00:00Z".into(),
            policy_version: 2,
            fixed_at: Some("2026-01-02T00:00:00Z".into()),
            fix_method: Some(FixMethod::Livepatch),
            fixed_level: Some(3),
            fixed_kernel: None,
            time_to_patch_secs: Some(86400),
            verdict: Verdict::FixedOnTime,
            exception_id: None,
        };
        let mut open = f.clone();
        open.fixed_at = None;
        open.fix_method = None;
        open.fixed_level = None;
        open.time_to_patch_secs = None;
        open.verdict = Verdict::OpenOverdue;
        open.exception_id = Some("e1".into());
        let both = [f, open];
        assert_eq!(findings_csv(&both), csv(&both, FINDING_COLUMNS));
    }

    #[test]
    fn csv_quotes_and_guards_formulas() {
        #[derive(Serialize)]
        struct R {
            a: String,
            b: Option<u32>,
        }
        let text = csv(
            &[
                R {
                    a: "x,\"y\"".into(),
                    b: Some(1),
                },
                R {
                    a: "=cmd()".into(),
                    b: None,
                },
            ],
            &["a", "b"],
        );
        assert_eq!(text, "a,b\n\"x,\"\"y\"\"\",1\n'=cmd(),\n");
    }

    #[test]
    fn evidence_key_signs_and_a_pack_is_verified_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = EvidenceKey::load_or_create(dir.path()).unwrap();
        let again = EvidenceKey::load_or_create(dir.path()).unwrap();
        assert_eq!(key.public_hex, again.public_hex, "the key is kept");
        let manifest = EvidenceManifest {
            format: EVIDENCE_FORMAT,
            kind: "soc2".into(),
            generator: "test".into(),
            generated_at: String::new(),
            period_from: String::new(),
            period_to: String::new(),
            as_of: String::new(),
            generated_by: "t".into(),
            command: "c".into(),
            public_key: key.public_hex.clone(),
            files: Vec::new(),
        };
        let out = dir.path().join("pack");
        let mut pack = PackDir::create(&out).unwrap();
        // A file written in many small pieces is hashed exactly as its bytes on disk.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        pack.write("a.csv", Some(1), |w| {
            for chunk in big.chunks(7777) {
                w.write_all(chunk)?;
            }
            Ok(())
        })
        .unwrap();
        pack.write("b.json", Some(0), |w| w.write_all(b"[]\n"))
            .unwrap();
        assert!(
            !out.exists(),
            "nothing is in place before the manifest is signed"
        );
        let written = pack.finish(manifest.clone(), &key).unwrap();
        assert_eq!(written.files[0].sha256, sha256_hex(&big));
        assert_eq!(written.files[0].size, big.len() as u64);
        assert_eq!(std::fs::read(out.join("a.csv")).unwrap(), big);
        // A pack abandoned half-way leaves nothing behind.
        let other = dir.path().join("other");
        let mut partial = PackDir::create(&other).unwrap();
        partial.write("a.csv", None, |w| w.write_all(b"x")).unwrap();
        let tmp = partial.path().to_path_buf();
        assert!(tmp.join("a.csv").is_file());
        drop(partial);
        assert!(!tmp.exists() && !other.exists());
        let m = verify_pack(&out, Some(&key.public_hex)).unwrap();
        assert_eq!(m.files.len(), 2);
        assert!(matches!(
            verify_pack(&out, Some("00")),
            Err(VerifyError::WrongKey { .. })
        ));
        std::fs::write(out.join("b.json"), b"[ ]\n").unwrap();
        assert!(
            matches!(verify_pack(&out, None), Err(VerifyError::Changed { path, .. }) if path == "b.json")
        );
        std::fs::write(out.join("b.json"), b"[]\n").unwrap();
        std::fs::write(out.join("extra.txt"), b"").unwrap();
        assert_eq!(
            verify_pack(&out, None),
            Err(VerifyError::Unlisted("extra.txt".into()))
        );
        std::fs::remove_file(out.join("extra.txt")).unwrap();
        let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
        std::fs::write(
            out.join("manifest.json"),
            manifest.replace("\"generated_by\": \"t\"", "\"generated_by\": \"u\""),
        )
        .unwrap();
        assert_eq!(verify_pack(&out, None), Err(VerifyError::BadSignature));
        assert!(
            PackDir::create(&out).is_err(),
            "an existing pack is never overwritten"
        );
        let tar = tar_dir(&out, "p").unwrap();
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(&tar[257..262], b"ustar");
    }
}
