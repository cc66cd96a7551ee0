//! Exports for GRC platforms (Vanta, Drata), served from the dashboard.

use serde_json::Value;

use klive_format::evidence::{Rating, Verdict};

use super::figures::Figures;

/// Vanta's Build Integrations shapes: one `VulnerableComponent` per host, one
/// `PackageVulnerabilityConnectors` record per open finding (package `kernel`).
pub fn vanta_export(f: &Figures) -> Value {
    let hosts: Vec<Value> = f
        .hosts
        .iter()
        .map(|h| {
            serde_json::json!({
                "displayName": h.hostname,
                "uniqueId": h.host_id,
                "externalUrl": format!("/ui/hosts/{}", h.host_id),
                "collectedTimestamp": f.summary.as_of,
                "name": h.hostname,
                "description": format!("kernel {} at klive level {}", h.kernel_release.as_deref().unwrap_or("unknown"),
                    h.applied_level.map_or("none".to_owned(), |l| l.to_string())),
                "targetType": "SERVER",
            })
        })
        .collect();
    let vulns: Vec<Value> = f
        .finding_records()
        .into_iter()
        .filter(|x| x.fixed_at.is_none() && x.verdict != Verdict::HostRetired)
        .map(|x| {
            serde_json::json!({
                "packageName": "kernel",
                "packageVersion": x.kernel_release,
                "severity": vanta_severity(x.severity),
                "cveId": x.cve,
                "vulnerableComponentUniqueId": x.host_id,
                "isResolvable": true,
                "remediationInstructions": "apply the klive live patch level that fixes it, or reboot into a fixed kernel",
                "detectedDate": x.detected_at,
                "remediateByDate": x.due_at,
            })
        })
        .collect();
    serde_json::json!({"vulnerable_components": hosts, "package_vulnerability_connectors": vulns})
}

fn vanta_severity(r: Rating) -> f64 {
    match r {
        Rating::Critical => 9.0,
        Rating::High => 7.0,
        Rating::Medium => 4.0,
        Rating::Low => 0.1,
        Rating::Unrated => 0.0,
    }
}

/// Drata custom-connection records: one per finding of the period.
pub fn drata_export(f: &Figures) -> Value {
    let records: Vec<Value> = f
        .finding_records()
        .into_iter()
        .map(|x| {
            serde_json::json!({
                "id": format!("{}:{}:{}", x.host_id, x.cve, x.detected_at),
                "hostId": x.host_id,
                "hostname": x.hostname,
                "cve": x.cve,
                "severity": x.severity.as_str(),
                "status": if x.fixed_at.is_some() { "RESOLVED" } else { "OPEN" },
                "firstFound": x.detected_at,
                "slaDueDate": x.due_at,
                "resolvedAt": x.fixed_at,
                "resolution": x.fix_method.map(|m| m.as_str()),
                "verdict": x.verdict.as_str(),
            })
        })
        .collect();
    serde_json::json!({"records": records})
}
