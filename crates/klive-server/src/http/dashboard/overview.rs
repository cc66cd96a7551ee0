//! The fleet overview (`/ui/`): host counts and patch coverage from one scan of the host table,
//! the snapshot's findings tiles and charts, hosts by channel, level and state, and the most
//! common effective kernels.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::{Chrome, Dashboard, Denied, Session, chrome, html, level_text, stale_before};
use crate::store::rollout;

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

pub(super) async fn overview(
    State(d): State<Dashboard>,
    session: Session,
) -> Result<Response, Denied> {
    let snap = d.snapshot().await?;
    let a = &snap.a;
    let db = d.service.db();
    let now = d.service.clock().now_ms();
    // One scan of the host table, grouped finely enough to derive every tile and table.
    let host_groups = rollout::host_groups(db, stale_before(&d.service, now)).await?;
    let newest_level = rollout::newest_levels(db).await?;
    let (mut total, mut online, mut patched) = (0i64, 0i64, 0i64);
    let mut by_state: BTreeMap<(String, Option<i64>, Option<String>), i64> = Default::default();
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
                level_text(level),
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
                level_text(level),
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
