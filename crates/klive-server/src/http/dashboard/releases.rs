//! The releases page (`/ui/releases`): channels, every release with its channels and rollout
//! (from the snapshot) and the promotion requests.

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use klive_format::api::{Channel, ReleaseInfo};

use super::{Chrome, Dashboard, Denied, Session, chrome, html};

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
    channels: Vec<Channel>,
    releases: Vec<ReleaseLine>,
    /// requested, release, to, requested by, status, approved by, approved, reason
    promotions: Vec<[String; 8]>,
}

/// Where release `r` stands: withdrawn, or the channels it is in and since when.
fn channels_text(r: &ReleaseInfo) -> String {
    if let Some(w) = &r.withdrawn {
        return format!("WITHDRAWN {} by {}: {}", w.at, w.by, w.reason);
    }
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
}

pub(super) async fn releases(
    State(d): State<Dashboard>,
    session: Session,
) -> Result<Response, Denied> {
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
            channels: channels_text(&r),
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
