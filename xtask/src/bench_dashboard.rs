//! `cargo xtask bench dashboard`: 100,000 hosts with a year of history (see
//! `crates/klive-server/tests/it/bench_dashboard.rs` for how it is seeded), every dashboard page
//! timed through the real router (release build, in process, median and worst of 5 after the
//! snapshot is warm), and the SOC 2 pack for the whole year. Targets: each page at most
//! 300 ms, the pack at most 30 s. The Markdown section is appended to BENCHMARKS.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

const PAGE_TARGET_MS: f64 = 300.0;
const PACK_TARGET_MS: f64 = 30_000.0;

pub fn run(root: &Path) -> Result<()> {
    let mut cmd = crate::cargo(&[
        "test",
        "--release",
        "-p",
        "klive-server",
        "--test",
        "it",
        "bench_dashboard::",
        "--",
        "--ignored",
        "--nocapture",
    ]);
    cmd.stdout(Stdio::piped());
    let output = cmd
        .spawn()
        .context("starting cargo test")?
        .wait_with_output()
        .context("running the dashboard benchmark")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the dashboard benchmark failed ({}):\n{text}",
            output.status
        );
    }
    let mut figures: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("BENCH ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap_or_default().to_owned();
            let values = parts.filter_map(|v| v.parse().ok()).collect();
            figures.insert(name, values);
        }
    }
    let get = |name: &str| figures.get(name).and_then(|v| v.first().copied());
    let mut md = String::new();
    let date = crate::bench_env::today();
    let _ = writeln!(
        md,
        "\n## klive-server dashboard and evidence pack (`cargo xtask bench dashboard`), {date}\n"
    );
    let _ = writeln!(md, "Machine: {}.\n", crate::bench_env::machine());
    let _ = writeln!(
        md,
        "Data: 100,000 hosts (4 kernel builds, 10% canary), a year of history: 12 monthly live patch levels per build each fixing one CVE, applied 3 to 23 days after publication, a tenth of the hosts rebooted into a newer kernel at day 200, a Debian changelog with 6 CVEs; {} `host_history` rows, 365 daily check-in counts. SQLite, release build. Pages are timed through the real axum router in process (no network), signed in, after the findings snapshot is warm; the cold snapshot (every finding of the fleet computed from the history) is listed separately; it is refreshed in the background at most once a minute.\n",
        get("history_rows").map_or("?".into(), |v| format!("{v:.0}"))
    );
    let _ = writeln!(md, "| figure | median | worst of 5 | target |");
    let _ = writeln!(md, "|---|---|---|---|");
    let mut failed = Vec::new();
    for (name, values) in &figures {
        let Some(page) = name
            .strip_prefix("page_")
            .and_then(|n| n.strip_suffix("_ms"))
        else {
            continue;
        };
        let (median, worst) = (
            values.first().copied().unwrap_or(0.0),
            values.get(1).copied().unwrap_or(0.0),
        );
        let ok = worst <= PAGE_TARGET_MS;
        if !ok {
            failed.push(format!("page {page}: {worst:.0} ms"));
        }
        let _ = writeln!(
            md,
            "| page `{page}` | {median:.1} ms | {worst:.1} ms | ≤ 300 ms {} |",
            if ok { "✓" } else { "✗" }
        );
    }
    if let Some(cold) = get("snapshot_cold_ms") {
        let _ = writeln!(
            md,
            "| findings snapshot, cold | {cold:.0} ms | | (background) |"
        );
    }
    let pack = get("pack_ms").unwrap_or(f64::MAX);
    let pack_ok = pack <= PACK_TARGET_MS;
    if !pack_ok {
        failed.push(format!("pack: {pack:.0} ms"));
    }
    let _ = writeln!(
        md,
        "| evidence pack, whole year ({} findings, {:.0} MB, PDF {}) | {:.1} s | | ≤ 30 s {} |",
        get("pack_findings").map_or("?".into(), |v| format!("{v:.0}")),
        get("pack_bytes").unwrap_or(0.0) / 1e6,
        if get("pack_pdf") == Some(1.0) {
            "printed by Chromium"
        } else {
            "not printed (no chromium)"
        },
        pack / 1000.0,
        if pack_ok { "✓" } else { "✗" }
    );
    if let Some(seed) = get("seed_ms") {
        let _ = writeln!(md, "\nSeeding took {:.0} s.", seed / 1000.0);
    }
    if !failed.is_empty() {
        let _ = writeln!(md, "\nTargets missed: {}.", failed.join(", "));
    }
    crate::bench_env::append_report(root, &md)
}
