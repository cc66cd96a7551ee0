//! Prometheus `/metrics` (OpenMetrics text): hosts by state, apply outcomes, check-in
//! activity, findings and hosts out of SLA. Low-cardinality labels only (severity, state,
//! result); CVE ids and host ids are never labels. Needs a viewer token
//! (`authorization: Bearer klu_...` in the scrape config) or a dashboard session.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::snapshot::Snapshot;
use super::{Dashboard, Denied, stale_before, typed};
use crate::domain::Service;
use crate::error::Error;
use crate::store::history::DAY_MS;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Renders the metrics text from the database and the dashboard snapshot `snap`.
pub async fn render(service: &Service, snap: &Snapshot) -> Result<String, Error> {
    let now = service.now();
    let stale_at = stale_before(service, now);
    let mut registry = <Registry>::with_prefix("klive");

    let hosts = Family::<Labels, Gauge>::default();
    registry.register("hosts", "Hosts by state", hosts.clone());
    let counts = crate::store::fleet::host_counts(
        service.db(),
        stale_at,
        now - 300_000,
        now.div_euclid(DAY_MS),
    )
    .await?;
    let (online, active, revoked, failed) =
        (counts.online, counts.active, counts.revoked, counts.failed);
    hosts
        .get_or_create(&labels(&[("state", "online")]))
        .set(online);
    hosts
        .get_or_create(&labels(&[("state", "stale")]))
        .set(active - online);
    hosts
        .get_or_create(&labels(&[("state", "revoked")]))
        .set(revoked);
    hosts
        .get_or_create(&labels(&[("state", "failed")]))
        .set(failed);

    let checked_in = Gauge::<i64>::default();
    registry.register(
        "hosts_checked_in_last_5m",
        "Hosts whose last check-in is less than 5 minutes old (check-in activity)",
        checked_in.clone(),
    );
    checked_in.set(counts.checked_in_since);
    let today = Gauge::<i64>::default();
    registry.register(
        "hosts_checked_in_today",
        "Hosts that checked in during the current UTC day",
        today.clone(),
    );
    today.set(counts.checked_in_today);

    let a = &snap.a;
    let applies = Family::<Labels, Counter>::default();
    registry.register(
        "patch_apply",
        "Live patch applications reported by hosts, by result",
        applies.clone(),
    );
    let reboots = Counter::<u64>::default();
    registry.register("reboots", "Host reboots recorded", reboots.clone());
    let avoided = Counter::<u64>::default();
    registry.register(
        "reboots_avoided",
        "Live patch level increases on a running kernel (each a reboot avoided)",
        avoided.clone(),
    );
    let o = &snap.overview;
    let (ok, failed_applies, n_reboots) = (o.applies_ok, o.applies_failed, o.reboots);
    applies
        .get_or_create(&labels(&[("result", "success")]))
        .inc_by(ok);
    applies
        .get_or_create(&labels(&[("result", "failed")]))
        .inc_by(failed_applies);
    reboots.inc_by(n_reboots);
    avoided.inc_by(ok);

    let open = Family::<Labels, Gauge>::default();
    registry.register("findings_open", "Open findings by severity", open.clone());
    let overdue = Family::<Labels, Gauge>::default();
    registry.register(
        "findings_out_of_sla",
        "Open findings past their due date, by severity",
        overdue.clone(),
    );
    for (r, n_open, n_overdue) in &o.open_by_severity {
        let sev = [("severity", r.as_str())];
        open.get_or_create(&labels(&sev)).set(*n_open);
        overdue.get_or_create(&labels(&sev)).set(*n_overdue);
    }
    let out_of_sla = Gauge::<i64>::default();
    registry.register(
        "hosts_out_of_sla",
        "Hosts with at least one finding past its due date",
        out_of_sla.clone(),
    );
    out_of_sla.set(snap.host_open.values().filter(|v| v.1 > 0).count() as i64);
    let as_of = Gauge::<i64>::default();
    registry.register(
        "findings_as_of_timestamp_seconds",
        "When the findings above were computed",
        as_of.clone(),
    );
    as_of.set(a.as_of / 1000);

    let mut text = String::new();
    encode(&mut text, &registry).map_err(|e| Error::Corrupt(format!("encoding metrics: {e}")))?;
    Ok(text)
}

impl Dashboard {
    /// The `/metrics` text: live counts from the database and the snapshot's findings.
    pub async fn metrics_text(&self) -> Result<String, Error> {
        let snap = self.snapshot().await?;
        render(&self.service, &snap).await
    }
}

/// Prometheus `/metrics`, for a viewer's API token or session.
pub(super) async fn metrics(
    State(d): State<Dashboard>,
    headers: HeaderMap,
) -> Result<Response, Denied> {
    d.session(&headers).await.map_err(|e| match e {
        Denied::Login => Denied::Error(
            StatusCode::UNAUTHORIZED,
            "send a viewer's API token: authorization: Bearer klu_...".into(),
        ),
        other => other,
    })?;
    let text = d.metrics_text().await?;
    Ok(typed(
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        text,
    ))
}
