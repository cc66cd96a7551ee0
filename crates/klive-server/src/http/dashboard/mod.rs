//! The dashboard: server-rendered HTML under `/ui/` (askama templates compiled into the
//! binary, CSS embedded, SVG charts drawn on the server, no script and no external asset), the
//! evidence-pack download, GRC exports and Prometheus `/metrics`.
//!
//! Sign-in is with a user's API token; the session cookie is random, HttpOnly and
//! SameSite=Strict, only its SHA-256 is stored, and every form that changes something carries
//! the session's CSRF token (the sign-in form a double-submit cookie). Roles are the API's:
//! viewers read every page and export; generating a signed pack needs approver or admin.
//!
//! Fleet-wide findings come from a snapshot computed at most every `KLIVE_DASHBOARD_CACHE_SECS`
//! (default 60) seconds in the background; pages say "as of" that time.
//!
//! This module holds the [`Dashboard`] state, its router, the chrome around every page and the
//! HTML response helpers; `session` signs users in and out, one module serves each page or
//! page group (`overview`, `hosts`, `releases`, `cves`, `audit`, `evidence`), `snapshot` is the
//! cached fleet view and `metrics` the Prometheus endpoint.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use askama::Template;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::clock::rfc3339;
use crate::domain::Service;
use crate::error::Error;

mod audit;
mod cves;
mod evidence;
mod hosts;
mod metrics;
mod overview;
mod releases;
mod session;
mod snapshot;

pub use session::Session;
pub use snapshot::{CveAgg, OverviewFigures, Snapshot};

const CSS: &str = include_str!("../../../templates/ui/dashboard.css");

#[derive(Debug, Clone)]
pub struct Dashboard {
    service: Service,
    data: PathBuf,
    snapshot: Arc<tokio::sync::Mutex<Option<Arc<Snapshot>>>>,
    refreshing: Arc<AtomicBool>,
    max_age_ms: i64,
    /// Served over HTTPS: cookies carry `Secure`.
    https: bool,
}

impl Dashboard {
    pub fn new(service: Service, data: PathBuf) -> Dashboard {
        let secs = std::env::var("KLIVE_DASHBOARD_CACHE_SECS")
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(60);
        Dashboard {
            service,
            data,
            snapshot: Arc::default(),
            refreshing: Arc::default(),
            max_age_ms: secs.max(0) * 1000,
            https: false,
        }
    }

    /// Marks the dashboard as served over HTTPS: its cookies are then sent only over HTTPS.
    pub fn over_https(mut self, https: bool) -> Dashboard {
        self.https = https;
        self
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The current snapshot: computed now when there is none, else the last one (refreshed in
    /// the background when older than the cache age).
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, Error> {
        let mut guard = self.snapshot.lock().await;
        let now = self.service.clock().now_ms();
        match guard.as_ref() {
            Some(s) if now - s.a.as_of <= self.max_age_ms => Ok(s.clone()),
            Some(s) if self.max_age_ms > 0 => {
                let stale = s.clone();
                if !self.refreshing.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    tokio::spawn(async move {
                        match Snapshot::compute(&me.service, me.service.clock().now_ms()).await {
                            Ok(s) => *me.snapshot.lock().await = Some(Arc::new(s)),
                            Err(e) => {
                                tracing::error!(error = %e, "refreshing the dashboard snapshot failed")
                            }
                        }
                        me.refreshing.store(false, Ordering::Release);
                    });
                }
                Ok(stale)
            }
            _ => {
                let fresh = Arc::new(Snapshot::compute(&self.service, now).await?);
                *guard = Some(fresh.clone());
                Ok(fresh)
            }
        }
    }
}

/// Hosts whose last check-in is older than this (two check-in intervals before `now`) count as
/// stale: on the pages and in `/metrics` alike.
fn stale_before(service: &Service, now: i64) -> i64 {
    now - 2 * service.checkin_interval_secs() as i64 * 1000
}

pub fn router(service: Service, data: PathBuf) -> Router {
    dashboard_router(Dashboard::new(service, data))
}

/// The dashboard's routes for `dash` (see [`Dashboard::over_https`]).
pub fn dashboard_router(dash: Dashboard) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview::overview))
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/hosts", get(hosts::hosts))
        .route("/ui/hosts/{id}", get(hosts::host))
        .route("/ui/releases", get(releases::releases))
        .route("/ui/cves", get(cves::cves))
        .route("/ui/cves/{cve}", get(cves::cve))
        .route("/ui/audit", get(audit::audit_page))
        .route(
            "/ui/evidence",
            get(evidence::evidence_page).post(evidence::evidence_generate),
        )
        .route("/ui/exports/{file}", get(evidence::export))
        .route("/metrics", get(metrics::metrics))
        .with_state(dash)
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Why a request has no session.
#[derive(Debug)]
pub enum Denied {
    Login,
    Error(StatusCode, String),
}

impl Denied {
    fn bad_request(message: impl Into<String>) -> Denied {
        Denied::Error(StatusCode::BAD_REQUEST, message.into())
    }

    fn not_found(message: impl Into<String>) -> Denied {
        Denied::Error(StatusCode::NOT_FOUND, message.into())
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Login => Redirect::to("/ui/login").into_response(),
            Denied::Error(status, message) => error_page(status, &message),
        }
    }
}

impl From<Error> for Denied {
    fn from(e: Error) -> Denied {
        if e.code() == "internal" {
            tracing::error!(error = %e, "dashboard request failed");
        }
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Denied::Error(status, e.public_message())
    }
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>klive: {status}</title><style>{CSS}</style></head><body><main><h1>{}</h1><p class=\"error\">{}</p><p><a href=\"/ui/\">Back to the dashboard</a></p></main></body></html>",
        status.as_u16(),
        crate::evidence::charts::escape(message)
    );
    with_headers((status, body).into_response())
}

/// Adds the headers every dashboard response carries: a strict content security policy, no
/// sniffing, no referrer, no caching.
fn with_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `body` with content type `kind`.
fn typed(kind: &'static str, body: impl IntoResponse) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// `page` rendered, with status 200.
fn html(page: &impl Template) -> Result<Response, Denied> {
    html_with_status(page, StatusCode::OK)
}

/// `page` rendered, with `status`.
fn html_with_status(page: &impl Template, status: StatusCode) -> Result<Response, Denied> {
    let body = page
        .render()
        .map_err(|e| Denied::from(Error::Corrupt(format!("rendering a page: {e}"))))?;
    let mut r = with_headers(typed("text/html; charset=utf-8", body));
    *r.status_mut() = status;
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Page chrome and cells

/// What every page shows around its content.
#[derive(Debug)]
struct Chrome {
    title: String,
    nav: &'static str,
    user: String,
    role: &'static str,
    csrf: String,
    css: &'static str,
    as_of: String,
}

/// The chrome of a page titled `title` under the navigation entry `nav`, whose figures are as
/// of `as_of` (the snapshot's time, or now for pages read live).
fn chrome(s: &Session, title: impl Into<String>, nav: &'static str, as_of: i64) -> Chrome {
    Chrome {
        title: title.into(),
        nav,
        user: s.user.name.clone(),
        role: s.user.role.as_str(),
        csrf: s.csrf.clone(),
        css: CSS,
        as_of: rfc3339(as_of),
    }
}

/// A live patch level cell: the level, or `none`.
fn level_text(level: Option<impl Display>) -> String {
    level.map_or("none".into(), |l| l.to_string())
}
