//! The period's populations read from the append-only records: hosts, changes, the audit
//! extract and the CVE imports.

use std::collections::HashMap;

use klive_format::api::AuditEntry;
use klive_format::evidence::{ChangeRecord, HostRecord, ImportRecord};

use super::series::{in_period, is_livepatch_apply};
use crate::clock::rfc3339;
use crate::domain::Service;
use crate::error::Error;
use crate::evidence::findings::{Assessment, ReleaseRow};
use crate::store::audit;
use crate::store::history::DAY_MS;

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

/// A release's own change (its publication or withdrawal) at `at`, made by `made_by`: no
/// approval step, so segregation of duties holds.
fn release_change(
    r: &ReleaseRow,
    kind: &str,
    channel: Option<String>,
    made_by: String,
    at: i64,
    note: String,
) -> (i64, ChangeRecord) {
    (
        at,
        ChangeRecord {
            kind: kind.into(),
            release: r.id.clone(),
            channel,
            made_by,
            made_at: rfc3339(at),
            published_by: r.published_by.clone(),
            approved_by: None,
            approved_at: None,
            emergency: false,
            reason: None,
            segregation_ok: true,
            note,
        },
    )
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
            out.push(release_change(
                r,
                "publish",
                r.channels.iter().min_by_key(|c| c.1).map(|c| c.0.clone()),
                r.published_by.clone(),
                r.published_at,
                format!("fixes: {}", fixes.join(" ")),
            ));
        }
        if let Some(w) = r.withdrawn_at.filter(|w| in_period(*w, from, a.as_of)) {
            out.push(release_change(
                r,
                "withdraw",
                None,
                String::new(),
                w,
                "withdrawn from every channel".into(),
            ));
        }
    }
    for row in crate::store::as_of::promotions(service.db(), a.as_of).await? {
        let requested_at = row.requested_at;
        let approved_at = row.approved_at.filter(|t| *t <= a.as_of);
        let touched = in_period(requested_at, from, a.as_of)
            || approved_at.is_some_and(|t| in_period(t, from, a.as_of));
        if !touched {
            continue;
        }
        let release = row.release_id;
        let requested_by = row.requested_by;
        let approved_by = approved_at.and(row.approved_by);
        let status = row.status;
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
                channel: Some(row.to_channel),
                made_by: requested_by,
                made_at: rfc3339(requested_at),
                published_by: published_by.to_owned(),
                approved_by,
                approved_at: approved_at.map(rfc3339),
                emergency,
                reason: row.reason,
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
    audit::between(service.db(), from, to).await
}

pub(super) async fn imports(service: &Service, until: i64) -> Result<Vec<ImportRecord>, Error> {
    Ok(crate::store::cve::imports_until(service.db(), until)
        .await?
        .into_iter()
        .map(|r| ImportRecord {
            source: r.source,
            file: r.file,
            sha256: r.sha256,
            imported_at: rfc3339(r.imported_at),
            imported_by: r.imported_by,
            records: r.records,
        })
        .collect())
}
