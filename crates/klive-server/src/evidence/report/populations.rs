//! The period's populations read from the append-only records: hosts, changes, the audit
//! extract and the CVE imports.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use klive_format::api::AuditEntry;
use klive_format::evidence::{ChangeRecord, HostRecord};

use super::series::{in_period, is_livepatch_apply};
use crate::clock::rfc3339;
use crate::domain::Service;
use crate::error::Error;
use crate::evidence::findings::Assessment;
use crate::store::audit;
use crate::store::history::DAY_MS;

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

pub(super) fn host_records(a: &Assessment, from: i64) -> Vec<HostRecord> {
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

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

pub(super) async fn changes(
    service: &Service,
    a: &Assessment,
    from: i64,
) -> Result<Vec<ChangeRecord>, Error> {
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

pub(super) async fn audit_extract(
    service: &Service,
    from: i64,
    to: i64,
) -> Result<Vec<AuditEntry>, Error> {
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

pub(super) async fn imports(service: &Service, until: i64) -> Result<Vec<ImportRow>, Error> {
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
