//! `cargo xtask bench dashboard` runs this (release build): 100,000 hosts with a year of
//! history, every dashboard page timed through the real router (in process, no network), and
//! the SOC 2 pack for the whole year. Prints one `BENCH name millis` line per figure for xtask.
//!
//! Seeding: releases, promotions and CVE imports go through the service with a frozen clock
//! a year back; the hosts and the records a year of daily check-ins leaves behind (one
//! `host_history` row per state change — registration, each level applied, a reboot into a
//! newer kernel for a tenth of them — the per-day check-in counts and each host's last
//! check-in) are bulk-inserted with the same columns the check-in path writes, because
//! 36.5 million check-ins through the API would take hours on the 2-core machine.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use klive_format::release::{Fix, Severity};
use klive_server::clock::Clock;
use klive_server::store::history::DAY_MS;
use tower::ServiceExt;

use crate::common::{
    Fixture, cookie_pair, get_page, import_changelog, manifest_for, module, post_form,
    promote_as_bob, set_cookie, user_token,
};

/// `KLIVE_BENCH_HOSTS` overrides it for a quick run.
fn hosts() -> usize {
    std::env::var("KLIVE_BENCH_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}
const DAYS: i64 = 365;
const KERNELS: [(&str, &str); 4] = [
    ("a1a1a1a1a1a1a1a1", "6.1.187-1"),
    ("a2a2a2a2a2a2a2a2", "6.1.190-1"),
    ("a3a3a3a3a3a3a3a3", "6.1.192-1"),
    ("a4a4a4a4a4a4a4a4", "6.1.192-2"),
];
const LEVELS: u32 = 12;

const CHANGELOG: &str = "linux (6.1.192-2) bookworm-security; urgency=high

  * fs: fix an overflow (CVE-2026-0007, CVE-2026-0008)

 -- Ben Hutchings <benh@debian.org>  Sat, 14 Nov 2026 10:00:00 +0000

linux (6.1.192-1) bookworm-security; urgency=high

  * net: fix a use-after-free (CVE-2026-0006)

 -- Ben Hutchings <benh@debian.org>  Sat, 07 Nov 2026 10:00:00 +0000

linux (6.1.190-1) bookworm-security; urgency=high

  * mm: fix a race (CVE-2026-0001, CVE-2026-0002, CVE-2026-0003)

 -- Ben Hutchings <benh@debian.org>  Sat, 31 Oct 2026 10:00:00 +0000
";

fn severity(level: u32) -> Severity {
    match level % 4 {
        0 => Severity::Critical,
        1 => Severity::High,
        2 => Severity::Medium,
        _ => Severity::Low,
    }
}

async fn seed(fx: &Fixture, t0: i64) -> String {
    let s = &fx.service;
    import_changelog(fx, CHANGELOG).await;
    // Monthly levels for each kernel build, promoted to stable 3 days later.
    let mut publish_times = Vec::new();
    for level in 1..=LEVELS {
        let at = t0 + i64::from(level - 1) * 30 * DAY_MS + DAY_MS;
        s.clock().advance_secs((at - s.clock().now_ms()) / 1000);
        for (build, _) in KERNELS {
            let name = format!("klive_bench_l{level}");
            let ko = module(&name, level, build);
            let mut m = manifest_for(build, level, &name, &ko);
            m.fixes = vec![Fix {
                cve: format!("CVE-2026-2{level:03}"),
                severity: severity(level),
                cvss: None,
                summary: "bench fix".into(),
                reference: None,
            }];
            s.releases()
                .publish_with_module(&fx.alice, m, Bytes::from(ko))
                .await
                .unwrap();
        }
        s.clock().advance_secs(3 * 86400);
        for (build, _) in KERNELS {
            promote_as_bob(fx, build, level, "stable").await;
        }
        publish_times.push(at);
    }
    let end = t0 + DAYS * DAY_MS;
    s.clock().advance_secs((end - s.clock().now_ms()) / 1000);

    // Hosts and their history, in batches.
    let pool = &s.db().pool;
    let mut tx = pool.begin().await.unwrap();
    let mut host_rows = Vec::new();
    let mut history_rows = Vec::new();
    let hosts = hosts();
    for i in 0..hosts {
        let id = format!("{i:016x}");
        let mut kernel = i % KERNELS.len();
        let channel = if i % 10 == 0 { "canary" } else { "stable" };
        let registered = t0 + (i as i64 % 1000) * 60_000;
        let lag_days = (i as i64 * 7919) % 21;
        let mut seq = 0i64;
        let mut rows = vec![(seq, registered, "register", kernel, None::<i64>, 1i64)];
        let mut boot = 1;
        let mut level: Option<i64> = None;
        let rebooted_at = (i % 10 == 3 && kernel < 3).then_some(t0 + 200 * DAY_MS);
        for (l, published) in publish_times.iter().enumerate() {
            let at = published + (3 + lag_days) * DAY_MS + (i as i64 % 3600) * 1000;
            if let Some(r) = rebooted_at
                && r <= at
                && kernel < 3
            {
                kernel = 3;
                boot += 1;
                seq += 1;
                level = None;
                rows.push((seq, r, "reboot,kernel,applied", kernel, None, boot));
            }
            if at >= end {
                break;
            }
            seq += 1;
            level = Some(l as i64 + 1);
            rows.push((seq, at, "applied", kernel, level, boot));
        }
        let last_checkin = end - (i as i64 % 86_400) * 1000;
        host_rows.push((
            id.clone(),
            channel,
            registered,
            seq,
            kernel,
            level,
            boot,
            last_checkin,
        ));
        for (seq, at, events, kernel, level, boot) in rows {
            history_rows.push((id.clone(), seq, at, events, kernel, level, boot));
        }
        if host_rows.len() == 500 || i + 1 == hosts {
            insert_hosts(&mut tx, &host_rows).await;
            insert_history(&mut tx, &history_rows, t0).await;
            host_rows.clear();
            history_rows.clear();
        }
    }
    for day in 0..DAYS {
        sqlx::query("INSERT INTO checkin_daily (day, hosts) VALUES ($1, $2)")
            .bind((t0 + day * DAY_MS).div_euclid(DAY_MS))
            .bind(hosts as i64 - (day % 7) * 13)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    format!("{:016x}", 4242)
}

/// (host id, sequence, at, events, kernel index, level, boot)
type HistoryRow<'a> = (String, i64, i64, &'a str, usize, Option<i64>, i64);

type HostRow<'a> = (String, &'a str, i64, i64, usize, Option<i64>, i64, i64);

async fn insert_hosts(tx: &mut sqlx::Transaction<'static, sqlx::Any>, rows: &[HostRow<'_>]) {
    let mut sql = String::from(
        "INSERT INTO hosts (id, credential_hash, hostname, channel, update_delay_secs, registered_at, last_sequence, last_checkin_at, kernel_release, build_id, applied_level, applied_state, boot_id, uptime_secs, agent_version, taint) VALUES ",
    );
    for (n, r) in rows.iter().enumerate() {
        let (id, channel, registered, seq, kernel, level, boot, last) = r;
        if n > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "('{id}', 'h{id}', 'web-{n:06}-{id}', '{channel}', 0, {registered}, {seq}, {last}, '6.1.0-{k}-amd64', '{build}', {level}, {state}, 'boot-{boot}', {uptime}, '0.1.0', 0)",
            k = 50 + kernel,
            build = KERNELS[*kernel].0,
            level = level.map_or("NULL".into(), |l| l.to_string()),
            state = if level.is_some() { "'applied'" } else { "NULL" },
            uptime = 86400 * 30,
        ));
    }
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut **tx)
        .await
        .unwrap();
}

async fn insert_history(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    rows: &[HistoryRow<'_>],
    t0: i64,
) {
    for chunk in rows.chunks(800) {
        let mut sql = String::from(
            "INSERT INTO host_history (host_id, sequence, at, events, kernel_release, package_version, build_id, applied_level, applied_state, boot_id, uptime_secs, taint) VALUES ",
        );
        for (n, (id, seq, at, events, kernel, level, boot)) in chunk.iter().enumerate() {
            if n > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('{id}', {seq}, {at}, '{events}', '6.1.0-{k}-amd64', '{pv}', '{build}', {level}, {state}, 'boot-{boot}', {uptime}, 0)",
                k = 50 + kernel,
                pv = KERNELS[*kernel].1,
                build = KERNELS[*kernel].0,
                level = level.map_or("NULL".into(), |l| l.to_string()),
                state = if level.is_some() { "'applied'" } else { "NULL" },
                uptime = (at - t0) / 1000 % (90 * 86400),
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut **tx)
            .await
            .unwrap();
    }
}

async fn time_page(router: &axum::Router, path: &str, cookie: &str) -> (Duration, Duration) {
    let mut times = Vec::new();
    for _ in 0..5 {
        let request = Request::get(path)
            .header("cookie", cookie)
            .header("authorization", "")
            .body(Body::empty())
            .unwrap();
        let started = Instant::now();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        times.push(started.elapsed());
        assert_eq!(
            status,
            StatusCode::OK,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    times.sort();
    (times[2], times[4])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: cargo xtask bench dashboard runs it in release mode"]
async fn dashboard_pages_and_pack_over_100k_hosts_and_a_year() {
    let mut fx = Fixture::sqlite().await;
    let t0 = jiff::Timestamp::now().as_millisecond() - (DAYS + 1) * DAY_MS;
    fx.service = fx.service.clone().with_clock(Clock::frozen(t0));
    let started = Instant::now();
    seed(&fx, t0).await;
    let history: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM host_history")
        .fetch_one(&fx.service.db().pool)
        .await
        .unwrap();
    println!("BENCH seed_ms {}", started.elapsed().as_millis());
    println!("BENCH history_rows {history}");

    let data = fx.dir().unwrap().to_path_buf();
    let router = klive_server::http::dashboard::router(fx.service.clone(), data.clone());
    // sign in with a token
    let token = user_token(&fx, "vic").await;
    let login = get_page(&router, "/ui/login", None).await;
    let login_cookie = cookie_pair(&set_cookie(&login));
    let csrf = login_cookie.split_once('=').unwrap().1.to_owned();
    let response = post_form(
        &router,
        "/ui/login",
        &login_cookie,
        format!("token={token}&csrf={csrf}"),
    )
    .await;
    let cookie = cookie_pair(&set_cookie(&response));

    let cold = Instant::now();
    let first = get_page(&router, "/ui/", Some(&cookie)).await;
    assert_eq!(first.status(), StatusCode::OK);
    println!("BENCH snapshot_cold_ms {}", cold.elapsed().as_millis());

    let host = format!("{:016x}", hosts() / 2);
    for (name, path) in [
        ("overview", "/ui/".to_owned()),
        ("hosts", "/ui/hosts".to_owned()),
        (
            "hosts_filtered",
            "/ui/hosts?q=web-0004&channel=stable&state=online&level=12".to_owned(),
        ),
        ("host_detail", format!("/ui/hosts/{host}")),
        ("releases", "/ui/releases".to_owned()),
        ("cves", "/ui/cves".to_owned()),
        ("cve_detail", "/ui/cves/CVE-2026-2012".to_owned()),
        ("audit", "/ui/audit".to_owned()),
        ("evidence", "/ui/evidence".to_owned()),
        ("metrics", "/metrics".to_owned()),
    ] {
        let (median, worst) = time_page(&router, &path, &cookie).await;
        println!(
            "BENCH page_{name}_ms {:.1} {:.1}",
            median.as_secs_f64() * 1000.0,
            worst.as_secs_f64() * 1000.0
        );
    }

    let key = klive_server::evidence::report::EvidenceKey::load_or_create(&data).unwrap();
    let now = fx.service.clock().now_ms();
    let out = data.join("pack");
    let chromium = klive_server::evidence::report::find_chromium();
    let started = Instant::now();
    let pack = klive_server::evidence::report::generate_pack(
        &fx.service,
        &fx.bob,
        &key,
        now - DAYS * DAY_MS,
        now,
        &out,
        chromium.as_deref(),
    )
    .await
    .unwrap();
    println!("BENCH pack_ms {}", started.elapsed().as_millis());
    for (step, ms) in &pack.timings {
        println!("BENCH pack_step_{step} {ms}");
    }
    println!("BENCH pack_findings {}", pack.summary.findings);
    println!(
        "BENCH pack_bytes {}",
        pack.manifest.files.iter().map(|f| f.size).sum::<u64>()
    );
    println!(
        "BENCH pack_pdf {}",
        u8::from(out.join("report.pdf").is_file())
    );
    klive_server::evidence::report::verify_pack(&out, Some(&key.public_hex)).unwrap();
}
