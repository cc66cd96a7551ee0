//! Per-severity figures and day series of a period, shared by the report and the dashboard.

use klive_format::evidence::{FixMethod, Rating, SeverityFigures, Verdict};

use crate::evidence::charts::TtpSeries;
use crate::evidence::findings::{Assessment, FindingCalc, percentile};
use crate::evidence::policy::in_force;
use crate::store::history::DAY_MS;

pub(super) fn in_period(t: i64, from: i64, to: i64) -> bool {
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
                sla_days: policy_now.map_or(0, |p| p.rules.days(rating)),
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
            sla_days: policy_now.map_or(0, |p| p.rules.days(rating)),
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
