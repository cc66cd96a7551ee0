//! The CVE pages, from the snapshot: every CVE seen in the fleet with its exposure counts
//! (`/ui/cves`, searchable) and one CVE's findings across hosts (`/ui/cves/{cve}`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use klive_format::evidence::Finding;

use super::{Chrome, CveAgg, Dashboard, Denied, Session, chrome, html};
use crate::clock::rfc3339;

/// CVEs listed on the list page at the most.
const MAX_CVES: usize = 500;
/// Findings listed on a CVE's page at the most.
const MAX_FINDINGS: usize = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct CveQuery {
    q: String,
}

#[derive(Debug)]
struct CveLine {
    cve: String,
    severity: &'static str,
    kev: bool,
    open: u64,
    ever: u64,
    livepatch: u64,
    kernel: u64,
    overdue: u64,
    first: String,
}

impl From<&CveAgg> for CveLine {
    fn from(c: &CveAgg) -> CveLine {
        CveLine {
            cve: c.cve.clone(),
            severity: c.severity.as_str(),
            kev: c.kev,
            open: c.open,
            ever: c.ever,
            livepatch: c.livepatch,
            kernel: c.kernel,
            overdue: c.overdue,
            first: rfc3339(c.first),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/cves.html")]
struct CvesPage {
    c: Chrome,
    q: String,
    total: usize,
    rows: Vec<CveLine>,
}

pub(super) async fn cves(
    State(d): State<Dashboard>,
    Query(q): Query<CveQuery>,
    session: Session,
) -> Result<Response, Denied> {
    let snap = d.snapshot().await?;
    let needle = q.q.trim().to_ascii_uppercase();
    let matching: Vec<&CveAgg> = snap
        .cves
        .iter()
        .filter(|c| needle.is_empty() || c.cve.contains(&needle))
        .collect();
    let rows = matching
        .iter()
        .take(MAX_CVES)
        .map(|c| CveLine::from(*c))
        .collect();
    html(&CvesPage {
        c: chrome(&session, "CVEs", "cves", snap.a.as_of),
        q: q.q,
        total: matching.len(),
        rows,
    })
}

#[derive(Template)]
#[template(path = "ui/cve.html")]
struct CvePage {
    c: Chrome,
    cve: String,
    findings: Vec<Finding>,
    truncated: bool,
}

pub(super) async fn cve(
    State(d): State<Dashboard>,
    Path(cve): Path<String>,
    session: Session,
) -> Result<Response, Denied> {
    if !crate::evidence::cve::is_cve_id(&cve) {
        return Err(Denied::not_found(format!(
            "{cve:?} is not a CVE id (CVE-YYYY-NNNN)"
        )));
    }
    let snap = d.snapshot().await?;
    let all: Vec<Finding> = snap
        .a
        .findings
        .iter()
        .filter(|f| snap.a.knowledge.cve_name(f.cve) == cve)
        .take(MAX_FINDINGS + 1)
        .map(|f| snap.a.record(f))
        .collect();
    let truncated = all.len() > MAX_FINDINGS;
    html(&CvePage {
        c: chrome(&session, cve.clone(), "cves", snap.a.as_of),
        cve,
        findings: all.into_iter().take(MAX_FINDINGS).collect(),
        truncated,
    })
}
