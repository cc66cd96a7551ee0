//! The audit log page (`/ui/audit`): entries newest first, filtered by actor and action and
//! paged by sequence, under the hash chain's verdict from the snapshot.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use klive_format::api::AuditEntry;

use super::{Chrome, Dashboard, Denied, Session, chrome, html};
use crate::store::audit_search;

/// Entries on one page.
const PAGE: usize = 200;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct AuditQuery {
    actor: String,
    action: String,
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "ui/audit.html")]
struct AuditPage {
    c: Chrome,
    chain: String,
    chain_ok: bool,
    actor: String,
    action: String,
    rows: Vec<AuditEntry>,
    older: Option<u64>,
}

pub(super) async fn audit_page(
    State(d): State<Dashboard>,
    Query(q): Query<AuditQuery>,
    session: Session,
) -> Result<Response, Denied> {
    if q.before.is_some_and(|b| b < 0) {
        return Err(Denied::bad_request(
            "before must be a record sequence number, 0 or more",
        ));
    }
    let rows = audit_search::search(
        d.service.db(),
        q.before.unwrap_or(i64::MAX),
        q.actor.trim(),
        q.action.trim(),
        PAGE as i64 + 1,
    )
    .await?;
    let more = rows.len() > PAGE;
    // The page shows no hashes: the chain's verdict stands above the list.
    let entries: Vec<_> = rows
        .into_iter()
        .take(PAGE)
        .map(|e| AuditEntry {
            prev_hash: String::new(),
            hash: String::new(),
            ..e
        })
        .collect();
    let older = more.then(|| entries.last().map(|e| e.seq)).flatten();
    // The chain check is part of the snapshot: recomputing it on every view would read the
    // whole log each time.
    let snap = d.snapshot().await?;
    let (chain, chain_ok) = snap.chain.clone();
    html(&AuditPage {
        c: chrome(&session, "Audit log", "audit", snap.a.as_of),
        chain,
        chain_ok,
        actor: q.actor,
        action: q.action,
        rows: entries,
        older,
    })
}
