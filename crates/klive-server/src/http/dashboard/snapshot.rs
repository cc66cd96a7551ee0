//! The fleet-wide snapshot behind the overview, CVE pages and `/metrics`: findings as of one
//! time with per-host and per-CVE aggregates, computed at most once per cache period.

use std::collections::HashMap;

use klive_format::evidence::{FixMethod, Rating, Verdict};

use crate::domain::Service;
use crate::error::Error;
use crate::evidence::findings::{Assessment, assess};
use crate::evidence::report;
use crate::store::audit;
use crate::store::history::DAY_MS;

/// Fleet-wide findings as of one time, with per-host and per-CVE aggregates.
#[derive(Debug)]
pub struct Snapshot {
    pub a: Assessment,
    /// host id -> (open, overdue)
    pub host_open: HashMap<String, (u64, u64)>,
    pub cves: Vec<CveAgg>,
    /// The audit chain's verification at the snapshot time: (text, intact).
    pub chain: (String, bool),
    /// Figures of the last 90 days and charts, computed once per snapshot.
    pub overview: OverviewFigures,
}

/// What the overview and `/metrics` show from the findings, computed once per snapshot.
#[derive(Debug, Clone, Default)]
pub struct OverviewFigures {
    pub severities: Vec<[String; 11]>,
    pub ttp_chart: String,
    pub open_chart: String,
    pub reboots_avoided_30d: u64,
    pub open_critical_high: u64,
    pub kev_open: u64,
    /// (severity, open, overdue)
    pub open_by_severity: Vec<(Rating, i64, i64)>,
    pub applies_ok: u64,
    pub applies_failed: u64,
    pub reboots: u64,
    /// build-id -> (hosts on it, [(applied level, hosts)]), from each active host's last state.
    pub rollout: HashMap<String, (i64, Vec<(i64, i64)>)>,
}

impl OverviewFigures {
    fn new(a: &Assessment) -> OverviewFigures {
        let since = a.as_of - 90 * DAY_MS;
        let mut f = OverviewFigures::default();
        for t in &a.timelines {
            let mut previous = None;
            for s in t {
                let apply = report::is_livepatch_apply(previous, s);
                f.applies_ok += u64::from(apply);
                if s.at >= a.as_of - 30 * DAY_MS {
                    f.reboots_avoided_30d += u64::from(apply);
                }
                f.applies_failed += u64::from(s.has_event("update_failed"));
                f.reboots += u64::from(s.has_event("reboot"));
                previous = Some(s);
            }
        }
        for (i, t) in a.timelines.iter().enumerate() {
            if a.hosts[i].revoked_at.is_some() {
                continue;
            }
            let Some(last) = t.last() else { continue };
            let Some(build) = &last.build_id else {
                continue;
            };
            let e = f.rollout.entry(build.clone()).or_default();
            e.0 += 1;
            if let Some(l) = last.effective_level() {
                match e.1.iter_mut().find(|(level, _)| *level == l) {
                    Some(x) => x.1 += 1,
                    None => e.1.push((l, 1)),
                }
            }
        }
        let mut by: HashMap<Rating, (i64, i64)> = HashMap::new();
        for x in a.findings.iter().filter(|x| x.fixed_at.is_none()) {
            let e = by.entry(x.severity).or_default();
            e.0 += 1;
            e.1 += i64::from(x.verdict == Verdict::OpenOverdue);
            f.open_critical_high += u64::from(x.severity >= Rating::High);
            f.kev_open += u64::from(x.kev);
        }
        f.open_by_severity = Rating::ALL
            .into_iter()
            .map(|r| {
                let (o, d) = by.get(&r).copied().unwrap_or_default();
                (r, o, d)
            })
            .collect();
        f.severities = report::severity_figures(a, since)
            .iter()
            .map(report::severity_row)
            .collect();
        let (days, open) = report::open_series(a, since);
        f.ttp_chart = crate::evidence::charts::time_to_patch(&report::ttp_series(a, since));
        f.open_chart = crate::evidence::charts::open_over_time(&days, &open);
        f
    }
}

#[derive(Debug, Clone)]
pub struct CveAgg {
    pub cve: String,
    pub severity: Rating,
    pub kev: bool,
    pub open: u64,
    pub ever: u64,
    pub livepatch: u64,
    pub kernel: u64,
    pub overdue: u64,
    pub first: i64,
}

impl Snapshot {
    /// Computes the findings as of `at` and the audit-chain check.
    pub async fn compute(service: &Service, at: i64) -> Result<Snapshot, Error> {
        let a = assess(service, at).await?;
        let chain = match audit::verify(service.db()).await? {
            audit::Verdict::Intact { records, .. } => {
                (format!("intact ({records} records verified)"), true)
            }
            audit::Verdict::Broken { seq, reason } => {
                (format!("BROKEN at record {seq}: {reason}"), false)
            }
        };
        Ok(Snapshot::new(a, chain))
    }

    pub fn new(a: Assessment, chain: (String, bool)) -> Snapshot {
        let mut host_open: HashMap<String, (u64, u64)> = HashMap::new();
        let mut cves: HashMap<u32, CveAgg> = HashMap::new();
        for f in &a.findings {
            let open = f.fixed_at.is_none();
            if open {
                let e = host_open
                    .entry(a.hosts[f.host as usize].id.clone())
                    .or_default();
                e.0 += 1;
                e.1 += u64::from(f.verdict == Verdict::OpenOverdue);
            }
            let c = cves.entry(f.cve).or_insert_with(|| CveAgg {
                cve: a.knowledge.cve_name(f.cve).to_owned(),
                severity: f.severity,
                kev: f.kev,
                open: 0,
                ever: 0,
                livepatch: 0,
                kernel: 0,
                overdue: 0,
                first: f.detected_at,
            });
            c.severity = c.severity.max(f.severity);
            c.ever += 1;
            c.open += u64::from(open);
            c.overdue += u64::from(f.verdict == Verdict::OpenOverdue);
            c.first = c.first.min(f.detected_at);
            match f.fix_method {
                Some(FixMethod::Livepatch) => c.livepatch += 1,
                Some(FixMethod::Kernel) => c.kernel += 1,
                _ => {}
            }
        }
        let mut cves: Vec<CveAgg> = cves.into_values().collect();
        cves.sort_by(|x, y| {
            report::worst_cve_first(
                (x.overdue, x.severity, x.open, &x.cve),
                (y.overdue, y.severity, y.open, &y.cve),
            )
        });
        let overview = OverviewFigures::new(&a);
        Snapshot {
            a,
            host_open,
            cves,
            chain,
            overview,
        }
    }
}
