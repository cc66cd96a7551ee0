//! The host pages: the filtered, paged host list (`/ui/hosts`) and one host's details, open
//! findings and state timeline (`/ui/hosts/{id}`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use klive_format::evidence::Finding;

use super::{Chrome, Dashboard, Denied, Session, chrome, html, level_text, stale_before};
use crate::clock::rfc3339;
use crate::store::history::{self, DAY_MS};
use crate::store::host_list::{self, LevelFilter, StateFilter};

/// Hosts on one page of the list.
const PAGE: i64 = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct HostFilter {
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

/// The list's filter as the store reads it, or why the form's values are not valid.
fn store_filter(f: &HostFilter, stale_at: i64) -> Result<host_list::HostFilter, Denied> {
    let level = f.level.trim();
    let level = if level == "none" {
        LevelFilter::None
    } else if level.is_empty() || level == "any" {
        LevelFilter::Any
    } else {
        LevelFilter::Is(level.parse().ok().filter(|l: &i64| *l >= 0).ok_or_else(|| {
            Denied::bad_request(format!(
                "level {level:?} is not a whole number 0 or more; use a level, none or leave it empty"
            ))
        })?)
    };
    let state = match f.state.as_str() {
        "" => StateFilter::Any,
        "online" => StateFilter::Online,
        "stale" => StateFilter::Stale,
        "revoked" => StateFilter::Revoked,
        other => {
            return Err(Denied::bad_request(format!(
                "state {other:?} is not one of online, stale, revoked"
            )));
        }
    };
    let min_uptime_secs = match f.uptime_days.trim() {
        "" => None,
        days => Some(
            days.parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .and_then(|d| d.checked_mul(86400))
                .ok_or_else(|| {
                    Denied::bad_request(format!(
                        "uptime {days:?} is not a whole number of days 0 or more"
                    ))
                })?,
        ),
    };
    Ok(host_list::HostFilter {
        after: f.after.clone(),
        search: f.q.clone(),
        channel: f.channel.clone(),
        kernel_release: f.kernel.trim().to_owned(),
        level,
        state,
        stale_before: stale_at,
        min_uptime_secs,
        limit: PAGE + 1,
    })
}

pub(super) async fn hosts(
    State(d): State<Dashboard>,
    Query(f): Query<HostFilter>,
    session: Session,
) -> Result<Response, Denied> {
    let snap = d.snapshot().await?;
    let now = d.service.clock().now_ms();
    let stale_at = stale_before(&d.service, now);
    let filter = store_filter(&f, stale_at)?;
    let rows = host_list::page(d.service.db(), &filter).await?;
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

pub(super) async fn host(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    session: Session,
) -> Result<Response, Denied> {
    let info = d.service.hosts().get(&session.user, &id).await?;
    let snap = d.snapshot().await?;
    let now = d.service.clock().now_ms();
    let timeline = history::host_timeline(d.service.db(), &id, i64::MAX).await?;
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
            level: level_text(info.applied_level),
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
                    level_text(s.applied_level),
                    s.applied_state.clone().unwrap_or_default(),
                    s.uptime_secs.map_or(String::new(), |u| u.to_string()),
                    s.error.clone().unwrap_or_default(),
                )
            })
            .collect(),
    };
    html(&page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded_without_empty_values() {
        assert_eq!(
            encode_query(&[("q", "a b&c"), ("x", ""), ("y", "1")]),
            "q=a+b%26c&y=1"
        );
    }
}
