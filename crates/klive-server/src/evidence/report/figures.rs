//! Every figure of a report, computed once as of the period end.

use std::collections::BTreeMap;

use klive_format::api::AuditEntry;
use klive_format::evidence::{
    ChangeRecord, ExceptionRecord, Finding, FixMethod, HostRecord, Rating, ReportSummary,
    SlaPolicy, Verdict,
};

use super::populations::{audit_extract, changes, host_records, imports};
use super::series::{
    in_period, is_livepatch_apply, open_series, period_findings, severity_figures, ttp_series,
};
use super::{FOREIGN_TAINT, SILENT_AFTER_MS};
use crate::clock::rfc3339;
use crate::domain::Service;
use crate::error::Error;
use crate::evidence::charts;
use crate::evidence::findings::{Assessment, FindingCalc, assess, percentile};
use crate::store::audit::{self, Verdict as ChainVerdict};

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

/// The order of a CVE table, on (overdue, severity, open, id): the most overdue first, then
/// the most severe, the most open, then by id (the report's and the dashboard's).
pub fn worst_cve_first(
    x: (u64, Rating, u64, &str),
    y: (u64, Rating, u64, &str),
) -> std::cmp::Ordering {
    y.0.cmp(&x.0)
        .then(y.1.cmp(&x.1))
        .then(y.2.cmp(&x.2))
        .then(x.3.cmp(y.3))
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
    pub imports: Vec<klive_format::evidence::ImportRecord>,
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
    let as_of = to.min(service.now());
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
    let chain = chain_text(&audit::verify(service.db()).await?);
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
    let coverage = crate::store::history::daily_coverage(service.db(), from, as_of).await?;

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
        worst_cve_first(
            (x.overdue, x.severity, x.open, &x.cve),
            (y.overdue, y.severity, y.open, &y.cve),
        )
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
