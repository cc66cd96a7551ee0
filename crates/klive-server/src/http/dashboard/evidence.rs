//! The evidence page (`/ui/evidence`): the signing key and a form that generates, signs and
//! downloads a SOC 2 evidence pack for a period (approvers and admins), and the GRC exports of
//! the last 90 days (`/ui/exports/{file}`: Vanta, Drata, findings and hosts CSV).

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use klive_format::api::Role;

use super::{Chrome, Dashboard, Denied, Session, chrome, html_with_status, typed, with_headers};
use crate::clock::rfc3339;
use crate::error::Error;
use crate::evidence::report::{self, EvidenceKey};
use crate::store::audit::{self, Actor};
use crate::store::history::DAY_MS;

/// The days before now that the form proposes and the exports cover.
const DEFAULT_DAYS: i64 = 90;

#[derive(Template)]
#[template(path = "ui/evidence.html")]
struct EvidencePage {
    c: Chrome,
    error: Option<String>,
    can_generate: bool,
    pdf: bool,
    key: String,
    from: String,
    to: String,
}

/// The UTC day of `ms` as `YYYY-MM-DD`.
fn day_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
        .unwrap_or_default()
}

/// The first (or with `end` the last) millisecond of the UTC day `s` (`YYYY-MM-DD`).
fn parse_day(s: &str, end: bool) -> Result<i64, String> {
    let date: jiff::civil::Date = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a date (YYYY-MM-DD)"))?;
    let start = date
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(|e| e.to_string())?
        .timestamp()
        .as_millisecond();
    Ok(if end { start + DAY_MS - 1 } else { start })
}

/// The evidence page, with `error` (and status 400) when the last form was refused.
fn evidence_view(
    d: &Dashboard,
    session: &Session,
    error: Option<String>,
) -> Result<Response, Denied> {
    let now = d.service.clock().now_ms();
    let key = EvidenceKey::load_or_create(&d.data)?;
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    html_with_status(
        &EvidencePage {
            c: chrome(session, "Evidence", "evidence", now),
            error,
            can_generate: session.user.role >= Role::Approver,
            pdf: report::find_chromium().is_some(),
            key: key.public_hex,
            from: day_text(now - DEFAULT_DAYS * DAY_MS),
            to: day_text(now),
        },
        status,
    )
}

pub(super) async fn evidence_page(
    State(d): State<Dashboard>,
    session: Session,
) -> Result<Response, Denied> {
    evidence_view(&d, &session, None)
}

/// Generates, signs and sends the pack for the form's period as a tar file.
pub(super) async fn evidence_generate(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Denied> {
    let session = d.form_session(&headers, &form).await?;
    if session.user.role < Role::Approver {
        return Err(Error::Forbidden { needed: "approver" }.into());
    }
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let period = parse_day(get("from"), false).and_then(|f| Ok((f, parse_day(get("to"), true)?)));
    let (from, to) = match period {
        Ok(p) => p,
        Err(e) => return evidence_view(&d, &session, Some(e)),
    };
    let key = EvidenceKey::load_or_create(&d.data)?;
    let name = format!("klive-soc2-{}-{}", day_text(from), day_text(to));
    let work = d.data.join("reports").join(format!(
        "{name}-{}",
        crate::trust::secrets::new_id().map_err(Denied::from)?
    ));
    let chromium = report::find_chromium();
    let generated = report::generate_pack(
        &d.service,
        &session.user,
        &key,
        from,
        to,
        &work,
        chromium.as_deref(),
    )
    .await;
    match generated {
        Ok(_) => {}
        Err(Error::BadRequest(m)) => return evidence_view(&d, &session, Some(m)),
        Err(e) => return Err(e.into()),
    }
    let file = format!("attachment; filename=\"{name}.tar\"");
    let tar = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, Error> {
        let tar = report::tar_dir(&work, &name);
        let _ = std::fs::remove_dir_all(&work);
        tar
    })
    .await
    .map_err(|e| Denied::from(Error::Corrupt(format!("the pack task failed: {e}"))))??;
    let mut tx = d.service.db().begin_audited().await?;
    audit::append(
        &mut tx,
        d.service.clock().now_ms(),
        &Actor::User(session.user.name.clone()),
        "report.soc2",
        &format!("{}..{}", rfc3339(from), rfc3339(to)),
        json!({"bytes": tar.len()}),
    )
    .await?;
    tx.commit().await.map_err(Error::from)?;
    let mut r = typed("application/x-tar", tar);
    r.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&file).map_err(|e| Denied::from(Error::Corrupt(e.to_string())))?,
    );
    Ok(with_headers(r))
}

/// A GRC export of the last 90 days, computed on request.
pub(super) async fn export(
    State(d): State<Dashboard>,
    Path(file): Path<String>,
    _session: Session,
) -> Result<Response, Denied> {
    let now = d.service.clock().now_ms();
    let f = report::figures(&d.service, now - DEFAULT_DAYS * DAY_MS, now).await?;
    let (body, kind) = match file.as_str() {
        "vanta.json" => (report::vanta_export(&f).to_string(), "application/json"),
        "drata.json" => (report::drata_export(&f).to_string(), "application/json"),
        "findings.csv" => (
            report::findings_csv(&f.finding_records()),
            "text/csv; charset=utf-8",
        ),
        "hosts.csv" => (
            report::csv(&f.hosts, report::HOST_COLUMNS),
            "text/csv; charset=utf-8",
        ),
        other => {
            return Err(Denied::not_found(format!(
                "no export named {other:?}: vanta.json, drata.json, findings.csv or hosts.csv"
            )));
        }
    };
    Ok(with_headers(typed(kind, body)))
}
