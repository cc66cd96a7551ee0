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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use askama::Template;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::Deserialize;
use serde_json::json;

use klive_format::api::Role;
use klive_format::evidence::Finding;

use crate::clock::rfc3339;
use crate::domain::{AuthUser, Service};
use crate::error::Error;
use crate::evidence::report::{self, EvidenceKey};
use crate::store::audit::{self, Actor};
use crate::store::history::DAY_MS;
use crate::store::host_list::{self, LevelFilter, StateFilter};
use crate::store::{audit_search, rollout, sessions};
use crate::trust::secrets::new_secret;

const SESSION_COOKIE: &str = "klive_session";
const LOGIN_COOKIE: &str = "klive_login";
const SESSION_SECS: i64 = 12 * 3600;
const CSS: &str = include_str!("../../../templates/ui/dashboard.css");
const PAGE: i64 = 100;

mod metrics;
mod snapshot;

pub use snapshot::{CveAgg, OverviewFigures, Snapshot};

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

    /// A cookie that only this site's pages get back and no script reads: HttpOnly,
    /// SameSite=Strict, scoped to `path`, kept `max_age_secs`, and `Secure` over HTTPS.
    fn cookie(
        &self,
        name: &'static str,
        value: String,
        path: &'static str,
        max_age_secs: i64,
    ) -> Cookie<'static> {
        Cookie::build((name, value))
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.https)
            .path(path)
            .max_age(time::Duration::seconds(max_age_secs))
            .build()
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

pub fn router(service: Service, data: PathBuf) -> Router {
    dashboard_router(Dashboard::new(service, data))
}

/// The dashboard's routes for `dash` (see [`Dashboard::over_https`]).
pub fn dashboard_router(dash: Dashboard) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route("/ui/hosts", get(hosts))
        .route("/ui/hosts/{id}", get(host))
        .route("/ui/releases", get(releases))
        .route("/ui/cves", get(cves))
        .route("/ui/cves/{cve}", get(cve))
        .route("/ui/audit", get(audit_page))
        .route("/ui/evidence", get(evidence_page).post(evidence_generate))
        .route("/ui/exports/{file}", get(export))
        .route("/metrics", get(metrics))
        .with_state(dash)
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[derive(Debug, Clone)]
pub struct Session {
    pub user: AuthUser,
    pub csrf: String,
}

/// The value of the request's cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    CookieJar::from_headers(headers)
        .get(name)
        .map(|c| c.value().to_owned())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Why a request has no session.
#[derive(Debug)]
pub enum Denied {
    Login,
    Error(StatusCode, String),
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

fn html(page: &impl Template) -> Result<Response, Denied> {
    let body = page
        .render()
        .map_err(|e| Denied::from(Error::Corrupt(format!("rendering a page: {e}"))))?;
    Ok(with_headers(
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
    ))
}

impl Dashboard {
    /// The signed-in user, from the session cookie or (for scripts) a bearer API token.
    pub async fn session(&self, headers: &HeaderMap) -> Result<Session, Denied> {
        if let Some(token) = bearer(headers) {
            let user = self.service.users().authenticate_user(token).await?;
            return Ok(Session {
                user,
                csrf: String::new(),
            });
        }
        let id = cookie(headers, SESSION_COOKIE).ok_or(Denied::Login)?;
        // A user whose every token was revoked is signed out too.
        let live = sessions::find(self.service.db(), &id, self.service.clock().now_ms())
            .await?
            .ok_or(Denied::Login)?;
        Ok(Session {
            user: AuthUser {
                name: live.user,
                role: live.role,
            },
            csrf: live.csrf,
        })
    }
}

fn check_csrf(session: &Session, form: &HashMap<String, String>) -> Result<(), Denied> {
    let sent = form.get("csrf").map(String::as_str).unwrap_or("");
    if session.csrf.is_empty() || !secret_eq(sent, &session.csrf) {
        return Err(Denied::Error(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong; reload the page and try again".into(),
        ));
    }
    Ok(())
}

/// Compares a secret sent by the client with the expected one in constant time.
fn secret_eq(sent: &str, expected: &str) -> bool {
    verify_slices_are_equal(sent.as_bytes(), expected.as_bytes()).is_ok()
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage<'a> {
    css: &'a str,
    csrf: String,
    error: Option<String>,
}

fn login_response(
    d: &Dashboard,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response, Denied> {
    let csrf = new_secret("").map_err(Denied::from)?;
    let mut r = html(&LoginPage {
        css: CSS,
        csrf: csrf.clone(),
        error,
    })?;
    *r.status_mut() = status;
    let jar = CookieJar::new().add(d.cookie(LOGIN_COOKIE, csrf, "/ui/login", 3600));
    Ok((jar, r).into_response())
}

async fn login_page(State(d): State<Dashboard>) -> Result<Response, Denied> {
    login_response(&d, None, StatusCode::OK)
}

async fn login(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Denied> {
    let sent = form.get("csrf").map(String::as_str).unwrap_or("");
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !secret_eq(sent, &expected) {
        return login_response(
            &d,
            Some("the sign-in form expired; sign in again".into()),
            StatusCode::FORBIDDEN,
        );
    }
    let token = form.get("token").map(|t| t.trim()).unwrap_or("");
    let user = match d.service.users().authenticate_user(token).await {
        Ok(u) => u,
        Err(Error::Unauthenticated) => {
            return login_response(
                &d,
                Some("unknown or revoked token; ask an admin for a new one".into()),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(e) => return Err(e.into()),
    };
    let id = new_secret("kls_").map_err(Denied::from)?;
    let csrf = new_secret("").map_err(Denied::from)?;
    let now = d.service.clock().now_ms();
    let mut tx = d.service.db().begin_audited().await.map_err(Denied::from)?;
    sessions::create(
        &mut tx,
        &id,
        &user.name,
        &csrf,
        now,
        now + SESSION_SECS * 1000,
    )
    .await?;
    audit::append(
        &mut tx,
        now,
        &Actor::User(user.name.clone()),
        "session.login",
        &user.name,
        json!({}),
    )
    .await?;
    tx.commit().await.map_err(Error::from)?;
    let jar = CookieJar::new().add(d.cookie(SESSION_COOKIE, id, "/", SESSION_SECS));
    Ok((jar, Redirect::to("/ui/")).into_response())
}

async fn logout(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Denied> {
    let session = d.session(&headers).await?;
    check_csrf(&session, &form)?;
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        let mut tx = d.service.db().begin_audited().await?;
        sessions::delete(&mut tx, &id).await?;
        tx.commit().await.map_err(Error::from)?;
    }
    // The same cookie, empty and already expired.
    let jar = CookieJar::new().add(d.cookie(SESSION_COOKIE, String::new(), "/", 0));
    Ok((jar, Redirect::to("/ui/login")).into_response())
}

// ---------------------------------------------------------------------------------------------
// Pages

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

fn stale_before(service: &Service, now: i64) -> i64 {
    now - 2 * service.checkin_interval_secs() as i64 * 1000
}

#[derive(Template)]
#[template(path = "ui/overview.html")]
struct OverviewPage {
    c: Chrome,
    total: i64,
    online: i64,
    stale: i64,
    stale_hours: u64,
    patched_share: String,
    out_of_sla: usize,
    open_critical_high: u64,
    kev_open: u64,
    reboots_avoided_30d: u64,
    groups: Vec<(String, String, String, i64)>,
    kernels: Vec<(String, String, i64)>,
    severities: Vec<[String; 11]>,
    ttp_chart: String,
    open_chart: String,
}

async fn overview(State(d): State<Dashboard>, headers: HeaderMap) -> Result<Response, Denied> {
    let session = d.session(&headers).await?;
    let snap = d.snapshot().await?;
    let a = &snap.a;
    let db = d.service.db();
    let now = d.service.clock().now_ms();
    // One scan of the host table, grouped finely enough to derive every tile and table.
    let host_groups = rollout::host_groups(db, stale_before(&d.service, now)).await?;
    let newest_level = rollout::newest_levels(db).await?;
    let (mut total, mut online, mut patched) = (0i64, 0i64, 0i64);
    let mut by_state: std::collections::BTreeMap<(String, Option<i64>, Option<String>), i64> =
        Default::default();
    let mut by_kernel: HashMap<(Option<String>, Option<i64>), i64> = HashMap::new();
    for g in host_groups {
        let n = g.hosts;
        total += n;
        online += if g.online { n } else { 0 };
        if g.applied_state.as_deref() == Some("applied")
            && let (Some(b), Some(l)) = (&g.build_id, g.applied_level)
            && newest_level.get(&(b.clone(), g.channel.clone())) == Some(&l)
        {
            patched += n;
        }
        *by_state
            .entry((g.channel, g.applied_level, g.applied_state))
            .or_default() += n;
        *by_kernel
            .entry((g.kernel_release, g.applied_level))
            .or_default() += n;
    }
    let groups: Vec<(String, String, String, i64)> = by_state
        .into_iter()
        .map(|((channel, level, state), n)| {
            (
                channel,
                level.map_or("none".into(), |l| l.to_string()),
                state.unwrap_or_else(|| "-".into()),
                n,
            )
        })
        .collect();
    let mut kernels: Vec<(String, String, i64)> = by_kernel
        .into_iter()
        .map(|((kernel, level), n)| {
            (
                kernel.unwrap_or_else(|| "unknown".into()),
                level.map_or("none".into(), |l| l.to_string()),
                n,
            )
        })
        .collect();
    kernels.sort_by(|x, y| y.2.cmp(&x.2).then(x.0.cmp(&y.0)).then(x.1.cmp(&y.1)));
    kernels.truncate(20);
    let o = &snap.overview;
    let page = OverviewPage {
        c: chrome(&session, "Fleet overview", "fleet", a.as_of),
        total,
        online,
        stale: total - online,
        stale_hours: 2 * d.service.checkin_interval_secs() / 3600,
        patched_share: if total == 0 {
            "no data".into()
        } else {
            format!("{:.1}%", patched as f64 * 100.0 / total as f64)
        },
        out_of_sla: snap.host_open.values().filter(|v| v.1 > 0).count(),
        open_critical_high: o.open_critical_high,
        kev_open: o.kev_open,
        reboots_avoided_30d: o.reboots_avoided_30d,
        groups,
        kernels,
        severities: o.severities.clone(),
        ttp_chart: o.ttp_chart.clone(),
        open_chart: o.open_chart.clone(),
    };
    html(&page)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HostFilter {
    q: String,
    channel: String,
    kernel: String,
    level: String,
    state: String,
    uptime_days: String,
    after: String,
}

#[derive(Debug)]
struct HostLine {
    id: String,
    hostname: String,
    channel: String,
    kernel: String,
    level: String,
    state: String,
    last_checkin: String,
    uptime: String,
    open: u64,
    overdue: u64,
}

#[derive(Template)]
#[template(path = "ui/hosts.html")]
struct HostsPage {
    c: Chrome,
    f: HostFilter,
    channels: Vec<String>,
    rows: Vec<HostLine>,
    more: bool,
    next_link: String,
}

/// `pairs` as a query string (`application/x-www-form-urlencoded`), leaving out empty values.
fn encode_query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().filter(|(_, v)| !v.is_empty()))
        .finish()
}

async fn hosts(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(f): Query<HostFilter>,
) -> Result<Response, Denied> {
    let session = d.session(&headers).await?;
    let snap = d.snapshot().await?;
    let now = d.service.clock().now_ms();
    let level = f.level.trim();
    let level = if level == "none" {
        LevelFilter::None
    } else if level.is_empty() || level == "any" {
        LevelFilter::Any
    } else {
        LevelFilter::Is(level.parse().map_err(|_| {
            Denied::Error(
                StatusCode::BAD_REQUEST,
                format!("level {level:?} is not a number; use a level, none or leave it empty"),
            )
        })?)
    };
    let state = match f.state.as_str() {
        "" => StateFilter::Any,
        "online" => StateFilter::Online,
        "stale" => StateFilter::Stale,
        "revoked" => StateFilter::Revoked,
        other => {
            return Err(Denied::Error(
                StatusCode::BAD_REQUEST,
                format!("state {other:?} is not one of online, stale, revoked"),
            ));
        }
    };
    let min_uptime_secs = match f.uptime_days.trim() {
        "" => None,
        days => Some(
            days.parse::<i64>().map_err(|_| {
                Denied::Error(
                    StatusCode::BAD_REQUEST,
                    "uptime must be a whole number of days".into(),
                )
            })? * 86400,
        ),
    };
    let stale_at = stale_before(&d.service, now);
    let rows = host_list::page(
        d.service.db(),
        &host_list::HostFilter {
            after: f.after.clone(),
            search: f.q.clone(),
            channel: f.channel.clone(),
            kernel_release: f.kernel.trim().to_owned(),
            level,
            state,
            stale_before: stale_at,
            min_uptime_secs,
            limit: PAGE + 1,
        },
    )
    .await?;
    let more = rows.len() as i64 > PAGE;
    let mut lines = Vec::new();
    for r in rows.into_iter().take(PAGE as usize) {
        let (open, overdue) = snap.host_open.get(&r.id).copied().unwrap_or_default();
        let (last, revoked) = (r.last_checkin_at, r.revoked_at);
        lines.push(HostLine {
            hostname: r.hostname,
            channel: r.channel,
            kernel: r.kernel_release.unwrap_or_default(),
            level: r.applied_level.map_or("none".into(), |l| {
                format!("{l} ({})", r.applied_state.unwrap_or_default())
            }),
            state: if revoked.is_some() {
                "revoked".into()
            } else if last.is_some_and(|t| t >= stale_at) {
                "online".into()
            } else {
                "stale".into()
            },
            last_checkin: last.map_or("never".into(), rfc3339),
            uptime: match (r.uptime_secs, last) {
                (Some(u), Some(l)) if revoked.is_none() => {
                    format!("{:.1}", (u * 1000 + now - l) as f64 / DAY_MS as f64)
                }
                _ => "-".into(),
            },
            open,
            overdue,
            id: r.id,
        });
    }
    let next_link = format!(
        "/ui/hosts?{}",
        encode_query(&[
            ("q", &f.q),
            ("channel", &f.channel),
            ("kernel", &f.kernel),
            ("level", &f.level),
            ("state", &f.state),
            ("uptime_days", &f.uptime_days),
            ("after", lines.last().map_or("", |l| l.id.as_str())),
        ])
    );
    let channels = d
        .service
        .channels()
        .list()
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    html(&HostsPage {
        c: chrome(&session, "Hosts", "hosts", now),
        f,
        channels,
        rows: lines,
        more,
        next_link,
    })
}

#[derive(Debug)]
struct HostDetail {
    id: String,
    channel: String,
    kernel: String,
    build_id: String,
    level: String,
    last_checkin: String,
    registered: String,
    revoked: String,
    agent: String,
    error: String,
}

#[derive(Template)]
#[template(path = "ui/host.html")]
struct HostPage {
    c: Chrome,
    h: HostDetail,
    findings: Vec<Finding>,
    knowledge: bool,
    timeline: Vec<(String, String, String, String, String, String, String)>,
}

async fn host(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Denied> {
    let session = d.session(&headers).await?;
    let info = d.service.hosts().get(&session.user, &id).await?;
    let snap = d.snapshot().await?;
    let now = d.service.clock().now_ms();
    let timeline = crate::store::history::host_timeline(d.service.db(), &id, i64::MAX).await?;
    let index = snap.a.hosts.iter().position(|h| h.id == id);
    let findings: Vec<Finding> = match index {
        Some(i) => snap
            .a
            .findings
            .iter()
            .filter(|f| f.host as usize == i)
            .map(|f| snap.a.record(f))
            .collect(),
        None => Vec::new(),
    };
    let knowledge = timeline.last().is_some_and(|s| {
        snap.a
            .knowledge
            .knows_kernel(s.package_version.as_deref(), s.build_id.as_deref())
    });
    let page = HostPage {
        c: chrome(&session, format!("Host {}", info.hostname), "hosts", now),
        h: HostDetail {
            id: info.id,
            channel: info.channel,
            kernel: info.kernel_release.unwrap_or_default(),
            build_id: info.build_id.map(|b| b.to_string()).unwrap_or_default(),
            level: info.applied_level.map_or("none".into(), |l| l.to_string()),
            last_checkin: info.last_checkin_at.unwrap_or_else(|| "never".into()),
            registered: info.registered_at,
            revoked: info.revoked_at.unwrap_or_else(|| "no".into()),
            agent: info.agent_version.unwrap_or_default(),
            error: info.last_error.unwrap_or_default(),
        },
        findings,
        knowledge,
        timeline: timeline
            .iter()
            .rev()
            .map(|s| {
                (
                    rfc3339(s.at),
                    s.events.replace(',', ", "),
                    s.kernel_release.clone().unwrap_or_default(),
                    s.applied_level.map_or("none".into(), |l| l.to_string()),
                    s.applied_state.clone().unwrap_or_default(),
                    s.uptime_secs.map_or(String::new(), |u| u.to_string()),
                    s.error.clone().unwrap_or_default(),
                )
            })
            .collect(),
    };
    html(&page)
}

#[derive(Debug)]
struct ReleaseLine {
    build: String,
    level: u32,
    kernel: String,
    published: String,
    channels: String,
    fixes: String,
    applied: i64,
    on_build: i64,
    percent: i64,
}

#[derive(Template)]
#[template(path = "ui/releases.html")]
struct ReleasesPage {
    c: Chrome,
    channels: Vec<klive_format::api::Channel>,
    releases: Vec<ReleaseLine>,
    /// requested, release, to, requested by, status, approved by, approved, reason
    promotions: Vec<[String; 8]>,
}

async fn releases(State(d): State<Dashboard>, headers: HeaderMap) -> Result<Response, Denied> {
    let session = d.session(&headers).await?;
    // Rollout from the snapshot (as of its time): two scans of the host table per view
    // would cost more than the page's budget at 100,000 hosts.
    let snap = d.snapshot().await?;
    let rollout = &snap.overview.rollout;
    let mut lines = Vec::new();
    for r in d.service.releases().list().await?.into_iter().rev() {
        let b = r.manifest.kernel.build_id.to_string();
        let level = r.manifest.level.get();
        let (total, levels) = rollout.get(&b).cloned().unwrap_or_default();
        let applied: i64 = levels
            .iter()
            .filter(|(l, _)| *l >= i64::from(level))
            .map(|(_, n)| n)
            .sum();
        lines.push(ReleaseLine {
            build: r.manifest.kernel.build_id.short().to_owned(),
            level,
            kernel: r.manifest.kernel.release.clone(),
            published: format!("{} by {}", r.published_at, r.published_by),
            channels: if let Some(w) = &r.withdrawn {
                format!("WITHDRAWN {} by {}: {}", w.at, w.by, w.reason)
            } else {
                r.channels
                    .iter()
                    .map(|c| {
                        format!(
                            "{} since {}{}",
                            c.channel,
                            c.since,
                            if c.awaiting_approval {
                                " (emergency, awaiting approval)"
                            } else if c.emergency {
                                " (emergency)"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            fixes: r
                .manifest
                .fixes
                .iter()
                .map(|f| f.cve.clone())
                .collect::<Vec<_>>()
                .join(" "),
            applied,
            on_build: total,
            percent: if total > 0 { applied * 100 / total } else { 0 },
        });
    }
    let promotions = d
        .service
        .promotions()
        .list()
        .await?
        .into_iter()
        .take(500)
        .map(|p| {
            [
                p.requested_at,
                format!("{}-{}", p.build_id.short(), p.level),
                p.to,
                p.requested_by,
                format!("{:?}", p.status).to_lowercase(),
                p.approved_by.unwrap_or_default(),
                p.approved_at.unwrap_or_default(),
                p.reason.unwrap_or_default(),
            ]
        })
        .collect();
    html(&ReleasesPage {
        c: chrome(&session, "Releases and channels", "releases", snap.a.as_of),
        channels: d.service.channels().list().await?,
        releases: lines,
        promotions,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CveQuery {
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

#[derive(Template)]
#[template(path = "ui/cves.html")]
struct CvesPage {
    c: Chrome,
    q: String,
    total: usize,
    rows: Vec<CveLine>,
}

async fn cves(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(q): Query<CveQuery>,
) -> Result<Response, Denied> {
    let session = d.session(&headers).await?;
    let snap = d.snapshot().await?;
    let needle = q.q.trim().to_ascii_uppercase();
    let matching: Vec<&CveAgg> = snap
        .cves
        .iter()
        .filter(|c| needle.is_empty() || c.cve.contains(&needle))
        .collect();
    let rows = matching
        .iter()
        .take(500)
        .map(|c| CveLine {
            cve: c.cve.clone(),
            severity: c.severity.as_str(),
            kev: c.kev,
            open: c.open,
            ever: c.ever,
            livepatch: c.livepatch,
            kernel: c.kernel,
            overdue: c.overdue,
            first: rfc3339(c.first),
        })
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

async fn cve(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(cve): Path<String>,
) -> Result<Response, Denied> {
    let session = d.session(&headers).await?;
    if !crate::evidence::cve::is_cve_id(&cve) {
        return Err(Denied::Error(
            StatusCode::NOT_FOUND,
            format!("{cve:?} is not a CVE id (CVE-YYYY-NNNN)"),
        ));
    }
    let snap = d.snapshot().await?;
    let all: Vec<Finding> = snap
        .a
        .findings
        .iter()
        .filter(|f| snap.a.knowledge.cve_name(f.cve) == cve)
        .take(1001)
        .map(|f| snap.a.record(f))
        .collect();
    let truncated = all.len() > 1000;
    html(&CvePage {
        c: chrome(&session, cve.clone(), "cves", snap.a.as_of),
        cve,
        findings: all.into_iter().take(1000).collect(),
        truncated,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuditQuery {
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
    rows: Vec<klive_format::api::AuditEntry>,
    older: Option<u64>,
}

async fn audit_page(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Denied> {
    let session = d.session(&headers).await?;
    let rows = audit_search::search(
        d.service.db(),
        q.before.unwrap_or(i64::MAX),
        q.actor.trim(),
        q.action.trim(),
        201,
    )
    .await?;
    let more = rows.len() > 200;
    // The page shows no hashes: the chain's verdict stands above the list.
    let entries: Vec<_> = rows
        .into_iter()
        .take(200)
        .map(|e| klive_format::api::AuditEntry {
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

fn day_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
        .unwrap_or_default()
}

fn evidence_view(
    d: &Dashboard,
    session: &Session,
    error: Option<String>,
) -> Result<Response, Denied> {
    let now = d.service.clock().now_ms();
    let key = EvidenceKey::load_or_create(&d.data)?;
    let mut r = html(&EvidencePage {
        c: chrome(session, "Evidence", "evidence", now),
        error: error.clone(),
        can_generate: session.user.role >= Role::Approver,
        pdf: report::find_chromium().is_some(),
        key: key.public_hex,
        from: day_text(now - 90 * DAY_MS),
        to: day_text(now),
    })?;
    if error.is_some() {
        *r.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(r)
}

async fn evidence_page(State(d): State<Dashboard>, headers: HeaderMap) -> Result<Response, Denied> {
    let session = d.session(&headers).await?;
    evidence_view(&d, &session, None)
}

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

async fn evidence_generate(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Denied> {
    let session = d.session(&headers).await?;
    check_csrf(&session, &form)?;
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
    let file = format!(
        "attachment; filename=\"klive-soc2-{}-{}.tar\"",
        day_text(from),
        day_text(to)
    );
    let mut r = ([(header::CONTENT_TYPE, "application/x-tar")], tar).into_response();
    r.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&file).map_err(|e| Denied::from(Error::Corrupt(e.to_string())))?,
    );
    Ok(with_headers(r))
}

async fn export(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Result<Response, Denied> {
    let session = d.session(&headers).await?;
    let _ = session;
    let now = d.service.clock().now_ms();
    let f = report::figures(&d.service, now - 90 * DAY_MS, now).await?;
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
            return Err(Denied::Error(
                StatusCode::NOT_FOUND,
                format!(
                    "no export named {other:?}: vanta.json, drata.json, findings.csv or hosts.csv"
                ),
            ));
        }
    };
    Ok(with_headers(
        ([(header::CONTENT_TYPE, kind)], body).into_response(),
    ))
}

/// Used by `/metrics`.
impl Dashboard {
    /// The `/metrics` text: live counts from the database and the snapshot's findings.
    pub async fn metrics_text(&self) -> Result<String, Error> {
        let snap = self.snapshot().await?;
        metrics::render(&self.service, &snap).await
    }

    pub fn service(&self) -> &Service {
        &self.service
    }
}

/// Prometheus `/metrics`, for a viewer's API token or session.
async fn metrics(State(d): State<Dashboard>, headers: HeaderMap) -> Result<Response, Denied> {
    d.session(&headers).await.map_err(|e| match e {
        Denied::Login => Denied::Error(
            axum::http::StatusCode::UNAUTHORIZED,
            "send a viewer's API token: authorization: Bearer klu_...".into(),
        ),
        other => other,
    })?;
    let text = d.metrics_text().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_queries_are_parsed_and_encoded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; klive_session=kls_x; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("kls_x"));
        assert_eq!(cookie(&h, "nope"), None);
        assert_eq!(
            encode_query(&[("q", "a b&c"), ("x", ""), ("y", "1")]),
            "q=a+b%26c&y=1"
        );
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "ab"));
    }
}
