//! The dashboard in a real headless Chromium (Debian's `chromium`, driven by playwright-core
//! from `tests/it/browser/dashboard.mjs`) against the real router on 127.0.0.1 with a seeded
//! fleet: sign-in, every page, host filters, the evidence pack download (then verified),
//! CSRF refusal, no request leaving the server. Ignored by plain `cargo test`; `cargo xtask
//! test` installs chromium and playwright-core and runs it. Screenshots and the pack are kept
//! under `target/browser-artefacts/`.

use std::path::PathBuf;

use klive_format::api::{Action, AppliedReport, CheckIn};
use klive_format::status::PatchState;

use crate::common::{
    BUILD, Fixture, enroll_token, import_changelog, kernel, promote_as_bob, publish,
    register_and_authenticate, utc_date,
};

const HOSTS: usize = 60;

const CHANGELOG: &str = "linux (6.1.194-1) bookworm-security; urgency=high

  * New upstream stable update:
    - net: fix a use-after-free (CVE-2026-5001)
    - fs: fix an overflow (CVE-2026-5002, CVE-2026-5003)

 -- Ben Hutchings <benh@debian.org>  Sat, 07 Nov 2026 10:00:00 +0000
";

async fn seed(fx: &Fixture) {
    let s = &fx.service;
    publish(fx, BUILD, 1).await;
    promote_as_bob(fx, BUILD, 1, "stable").await;
    import_changelog(fx, CHANGELOG).await;
    for (channel, n) in [("canary", 20), ("stable", HOSTS - 20)] {
        let t = enroll_token(fx, channel, 600, n as u32).await;
        for i in 0..n {
            let (r, host) = register_and_authenticate(
                s,
                &t,
                &format!("{channel}-web-{i:02}"),
                kernel(Some(BUILD)),
                "0.1.0",
            )
            .await;
            let mut c = CheckIn {
                sequence: 1,
                kernel: kernel(Some(BUILD)),
                applied: None,
                uptime_secs: 86400 * (i as u64 + 1),
                boot_id: "boot-1".into(),
                agent_version: "0.1.0".into(),
                last_error: None,
                taint: Some(if i == 3 { 4096 } else { 0 }),
            };
            let answer = s.checkins().checkin(&host, &c).await.unwrap();
            // every other host applies its target
            if answer.action == Action::Apply && i % 2 == 0 {
                let host = s
                    .enrollment()
                    .authenticate_host(&r.credential)
                    .await
                    .unwrap();
                c.sequence = 2;
                c.applied = Some(AppliedReport {
                    level: answer.target.unwrap().level,
                    state: PatchState::Applied,
                });
                s.checkins().checkin(&host, &c).await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and playwright-core; `cargo xtask test` runs it"]
async fn dashboard_in_a_real_browser() {
    let playwright = std::env::var("KLIVE_PLAYWRIGHT_DIR").expect(
        "KLIVE_PLAYWRIGHT_DIR must name the directory holding node_modules/playwright-core",
    );
    let chromium = std::env::var("KLIVE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let out = PathBuf::from(
        std::env::var("KLIVE_BROWSER_ARTEFACTS").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/browser-artefacts"
            )
            .into()
        }),
    );
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();

    let fx = Fixture::sqlite().await;
    seed(&fx).await;
    let approver = fx
        .service
        .users()
        .create_token(None, "bob")
        .await
        .unwrap()
        .token;
    let viewer = fx
        .service
        .users()
        .create_token(None, "vic")
        .await
        .unwrap()
        .token;
    let data = fx.dir().unwrap().to_path_buf();
    let router = klive_server::http::api::router(fx.service.clone()).merge(
        klive_server::http::dashboard::router(fx.service.clone(), data),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let now = fx.service.clock().now_ms();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/browser/dashboard.mjs"
    );
    let mut cmd = std::process::Command::new("node");
    cmd.arg(script)
        .env("BASE_URL", &base)
        .env("OUT", &out)
        .env("PLAYWRIGHT_DIR", &playwright)
        .env("CHROMIUM", &chromium)
        .env("APPROVER_TOKEN", &approver)
        .env("VIEWER_TOKEN", &viewer)
        .env("HOSTS", HOSTS.to_string())
        .env("FILTER", "web-1")
        // canary-web-10 .. canary-web-19
        .env("EXPECT_FILTERED", "10")
        .env("FROM", utc_date(now - 7 * 86_400_000))
        .env("TO", utc_date(now));
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("starting node: install nodejs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    // The downloaded pack verifies, and has the PDF Chromium printed on the server.
    let tar = out.join("evidence.tar");
    let unpacked = out.join("evidence");
    std::fs::create_dir_all(&unpacked).unwrap();
    let status = std::process::Command::new("tar")
        .arg("xf")
        .arg(&tar)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    let dir = std::fs::read_dir(&unpacked)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let key =
        klive_server::evidence::report::EvidenceKey::load_or_create(fx.dir().unwrap()).unwrap();
    let manifest =
        klive_server::evidence::report::verify_pack(&dir, Some(&key.public_hex)).unwrap();
    assert!(
        manifest.files.iter().any(|f| f.path == "report.pdf"),
        "the pack has report.pdf"
    );
    let findings = std::fs::read_to_string(dir.join("findings.csv")).unwrap();
    // every host lacks the three CVEs of the newer Debian kernel and had the release's CVE
    // (fixed on half of them by applying level 1)
    assert_eq!(findings.lines().count(), 1 + HOSTS * 4);
    assert_eq!(findings.matches(",livepatch,").count(), HOSTS / 2);
    for shot in [
        "01-login",
        "04-overview",
        "05-hosts-filtered",
        "06-host",
        "11-evidence",
    ] {
        assert!(
            out.join(format!("{shot}.png")).is_file(),
            "{shot}.png saved"
        );
    }
}
