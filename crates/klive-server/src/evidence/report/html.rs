//! The printable report (HTML; Chromium prints it to PDF).

use askama::Template;

use klive_format::evidence::{Finding, HostRecord, ReportSummary, SeverityFigures, Verdict};

use super::figures::{CveRow, Figures};
use super::{FOREIGN_TAINT, SILENT_AFTER_MS};
use crate::clock::rfc3339;
use crate::error::Error;
use crate::evidence::findings::FindingCalc;

/// Findings listed by name in the HTML report (all of them are in findings.csv).
const HTML_FINDINGS: usize = 300;

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
    s.severities.iter().map(severity_row).collect()
}

/// One severity's row of the remediation table (the report's and the dashboard's).
pub fn severity_row(x: &SeverityFigures) -> [String; 11] {
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
