//! Fleet status with 100,000 registered hosts (the target: within 200 ms). Ignored by
//! default because filling the database takes a while; run with
//! `cargo test -p klive-server --release --test scale -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use common::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fills a database with 100,000 hosts"]
async fn sqlite_fleet_summary_of_100k_hosts() {
    fleet_summary_of_100k_hosts(Fixture::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fills a database with 100,000 hosts"]
async fn postgres_fleet_summary_of_100k_hosts() {
    let fx = Fixture::postgres()
        .await
        .expect("set KLIVE_TEST_DATABASE_URL to run this against PostgreSQL");
    fleet_summary_of_100k_hosts(fx).await;
}

async fn fleet_summary_of_100k_hosts(fx: Fixture) {
    let s = &fx.service;
    let started = Instant::now();
    let mut tx = s.db().pool.begin().await.unwrap();
    for chunk in 0..1000 {
        let mut sql = String::from(
            "INSERT INTO hosts (id, credential_hash, hostname, channel, update_delay_secs, registered_at, last_sequence, last_checkin_at, applied_level, applied_state) VALUES ",
        );
        for i in 0..100 {
            let n = chunk * 100 + i;
            let channel = if n % 10 == 0 { "canary" } else { "stable" };
            let level = n % 3 + 1;
            let sep = if i == 0 { "" } else { "," };
            sql.push_str(&format!(
                "{sep}('h{n}', 'c{n}', 'host-{n}', '{channel}', 0, 0, 0, {}, {level}, 'applied')",
                if n % 100 == 0 { 0 } else { i64::MAX / 2 }
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    eprintln!("inserted 100000 hosts in {:?}", started.elapsed());

    let mut best = std::time::Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let summary = s.hosts().fleet(&fx.vic).await.unwrap();
        best = best.min(t.elapsed());
        assert_eq!(summary.hosts, 100_000);
        assert_eq!(summary.stale_hosts, 1000);
        assert_eq!(summary.groups.len(), 6);
    }
    eprintln!("fleet summary of 100000 hosts: best of 5 {best:?}");
    assert!(best.as_millis() < 200, "fleet summary took {best:?}");
}

/// Check-ins per second through the router in-process (server logic + database, no network),
/// 1000 hosts, 32 concurrent clients, 5 seconds; prints rate and latency percentiles.
async fn checkin_rate(fx: Fixture) {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use klive_format::api::{EnrollTokenRequest, RegisterRequest};
    use tower::ServiceExt;

    let s = fx.service.clone();
    let (m, ko) = common::release(common::BUILD, 1);
    s.releases()
        .publish_with_module(&fx.alice, m, ko)
        .await
        .unwrap();
    let t = s
        .enrollment()
        .create_enroll_token(
            &fx.admin,
            &EnrollTokenRequest {
                channel: "canary".into(),
                expires_in_secs: 600,
                max_uses: 1000,
            },
        )
        .await
        .unwrap();
    let mut credentials = Vec::new();
    for i in 0..1000 {
        let r = s
            .enrollment()
            .register(&RegisterRequest {
                enrollment_token: t.token.clone(),
                hostname: format!("h{i}"),
                kernel: common::kernel(Some(common::BUILD)),
                agent_version: "0".into(),
            })
            .await
            .unwrap();
        credentials.push(r.credential);
    }
    let router = klive_server::http::api::router(s.clone());
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..32usize {
        let router = router.clone();
        let mine: Vec<String> = credentials.iter().skip(w).step_by(32).cloned().collect();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                for cred in &mine {
                    let body = serde_json::json!({"sequence": seq, "kernel": common::kernel(Some(common::BUILD)),
                        "applied": {"level": 1, "state": "applied"}, "uptime_secs": seq, "boot_id": "b", "agent_version": "0"});
                    let req = Request::post("/api/v1/checkin")
                        .header(header::AUTHORIZATION, format!("Bearer {cred}"))
                        .body(Body::from(body.to_string()))
                        .unwrap();
                    let t = Instant::now();
                    let r = router.clone().oneshot(req).await.unwrap();
                    assert_eq!(r.status(), StatusCode::OK);
                    latencies.push(t.elapsed());
                }
            }
            latencies
        });
    }
    let started = Instant::now();
    let mut all = Vec::new();
    while let Some(l) = workers.join_next().await {
        all.extend(l.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    eprintln!(
        "{} check-ins in {secs:.1} s: {:.0}/s, p50 {:?}, p99 {:?}",
        all.len(),
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 5-second load test"]
async fn sqlite_checkin_rate() {
    checkin_rate(Fixture::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 5-second load test"]
async fn postgres_checkin_rate() {
    let fx = Fixture::postgres()
        .await
        .expect("set KLIVE_TEST_DATABASE_URL to run this against PostgreSQL");
    checkin_rate(fx).await;
}
