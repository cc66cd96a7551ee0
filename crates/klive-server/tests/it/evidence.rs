//! Evidence: a simulated fleet of 1,000 hosts over 90 days, driven through the service with a
//! moving clock, whose SOC 2 pack figures are checked against an independent model kept by
//! the simulation itself; `report verify` must catch one changed byte; CVE imports of real
//! Debian changelogs; bad input.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use klive_format::api::{Action, AppliedReport, CheckIn, PromoteRequest};
use klive_format::evidence::{Rating, ReportSummary};
use klive_format::release::{Fix, Severity};
use klive_format::status::{KernelInfo, PatchState};
use klive_server::domain::AuthHost;
use klive_server::evidence::cve::Source;
use klive_server::evidence::findings::assess;
use klive_server::evidence::policy::PolicyChange;
use klive_server::evidence::report::{self, EvidenceKey, VerifyError};
use klive_server::store::history::DAY_MS;

use crate::common::{
    self, Fixture, enroll_token, import_changelog, import_feed, manifest_for, module, register,
    register_and_authenticate, utc_date,
};

const HOSTS: usize = 1000;
const DAYS: i64 = 90;
const CANARY: usize = 100;

/// The simulated kernels: (build-id, Debian package version).
const KERNELS: [(&str, &str); 3] = [
    ("b1b1b1b1b1b1b1b1", "6.1.187-1"),
    ("b2b2b2b2b2b2b2b2", "6.1.190-1"),
    ("b3b3b3b3b3b3b3b3", "6.1.192-1"),
];

/// A small changelog in the real format: 6.1.190-1 fixes 0001..0005, 6.1.192-1 fixes 0006..0008.
const CHANGELOG: &str = "linux (6.1.192-1) bookworm-security; urgency=high

  * New upstream stable update:
    - net: fix a use-after-free (CVE-2026-0006)
    - fs: fix an overflow (CVE-2026-0007, CVE-2026-0008)

 -- Ben Hutchings <benh@debian.org>  Sat, 07 Nov 2026 10:00:00 +0000

linux (6.1.190-1) bookworm-security; urgency=high

  * New upstream stable update:
    - mm: fix a race (CVE-2026-0001)
    - bpf: fix a bounds check (CVE-2026-0002)
    - io_uring: fix a leak (CVE-2026-0003)
      (CVE-2026-0004)
    - ext4: fix a NULL dereference (CVE-2026-0005)

 -- Ben Hutchings <benh@debian.org>  Sat, 31 Oct 2026 10:00:00 +0000

linux (6.1.187-1) bookworm-security; urgency=high

  * New upstream stable update (CVE-2025-9999)

 -- Ben Hutchings <benh@debian.org>  Sat, 24 Oct 2026 10:00:00 +0000
";

const DEBIAN_LATER: [(&str, &[&str]); 2] = [
    (
        "6.1.190-1",
        &[
            "CVE-2026-0001",
            "CVE-2026-0002",
            "CVE-2026-0003",
            "CVE-2026-0004",
            "CVE-2026-0005",
        ],
    ),
    (
        "6.1.192-1",
        &["CVE-2026-0006", "CVE-2026-0007", "CVE-2026-0008"],
    ),
];

fn osv_sample() -> &'static str {
    r#"{"schema_version":"1.6.0","id":"DEBIAN-CVE-2026-0001","modified":"2026-11-01T00:00:00Z",
        "published":"2026-10-20T00:00:00Z","upstream":["CVE-2026-0001"],"summary":"mm: fix a race",
        "severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"}],
        "affected":[{"package":{"ecosystem":"Debian:12","name":"linux"},
          "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"6.1.190-1"}]}]}]}"#
}

/// The CVEs each level fixes (same for every kernel build).
fn level_fixes(level: u32) -> Vec<(String, Severity)> {
    let a = if level % 2 == 1 {
        Severity::Critical
    } else {
        Severity::High
    };
    let b = if level % 2 == 1 {
        Severity::Medium
    } else {
        Severity::Low
    };
    vec![
        (format!("CVE-2026-10{level}1"), a),
        (format!("CVE-2026-10{level}2"), b),
    ]
}

const PUBLISH_DAYS: [i64; 5] = [1, 16, 31, 46, 61];

#[derive(Debug, Clone)]
struct SimHost {
    auth: AuthHost,
    seq: u64,
    boot: u32,
    kernel: usize,
    level: Option<u32>,
    slow: bool,
    revoked: bool,
    taint: u64,
}

impl SimHost {
    /// Registers and authenticates a host on `kernel` with `token`: first boot, no level yet.
    async fn register(
        s: &klive_server::Service,
        token: &str,
        hostname: &str,
        kernel: usize,
        slow: bool,
        taint: u64,
    ) -> SimHost {
        let (_, auth) =
            register_and_authenticate(s, token, hostname, kernel_info(kernel), "0.1.0").await;
        SimHost {
            auth,
            seq: 0,
            boot: 1,
            kernel,
            level: None,
            slow,
            revoked: false,
            taint,
        }
    }
}

#[derive(Debug, Clone)]
struct Open {
    detected: i64,
}

#[derive(Debug, Clone)]
struct ModelFinding {
    cve: String,
    detected: i64,
    fixed: Option<(i64, &'static str)>,
}

type LevelFixes = Vec<(String, Severity)>;

/// What the simulation knows, kept without reading the server's database.
#[derive(Default)]
struct Model {
    /// (kernel index, level) -> (published_at, fixes)
    releases: BTreeMap<(usize, u32), (i64, LevelFixes)>,
    debian_known_at: Option<i64>,
    osv_high: HashSet<String>,
    kev_due: HashMap<String, i64>,
    /// (effective_at, critical, high, medium, low, unrated)
    policies: Vec<(i64, [i64; 5])>,
    /// (cve, created, expires)
    exceptions: Vec<(String, i64, i64)>,
    open: HashMap<(usize, String), Open>,
    findings: Vec<(usize, ModelFinding)>,
    applies: u64,
    reboots: u64,
    publishes: u64,
    promotions: u64,
    emergency: u64,
    emergency_unapproved: u64,
}

impl Model {
    fn exposed(&self, kernel: usize, level: Option<u32>, now: i64) -> HashMap<String, i64> {
        let mut out = HashMap::new();
        if let Some(known) = self.debian_known_at.filter(|k| *k <= now) {
            let pv = KERNELS[kernel].1;
            for (version, cves) in DEBIAN_LATER {
                if klive_format::debver::compare(version, pv).is_gt() {
                    for c in cves {
                        out.insert((*c).to_owned(), known);
                    }
                }
            }
        }
        let mut fixed = HashSet::new();
        for ((k, l), (published, fixes)) in &self.releases {
            if *k != kernel || *published > now {
                continue;
            }
            for (cve, _) in fixes {
                let e = out.entry(cve.clone()).or_insert(*published);
                *e = (*e).min(*published);
                if level.is_some_and(|applied| *l <= applied) {
                    fixed.insert(cve.clone());
                }
            }
        }
        out.retain(|c, _| !fixed.contains(c));
        out
    }

    /// Re-evaluates a host at `now`: opens new exposures, closes ended ones.
    fn observe(&mut self, host: usize, h: &SimHost, now: i64, kernel_changed: bool) {
        let exposed = self.exposed(h.kernel, h.level, now);
        let open_here: Vec<String> = self
            .open
            .keys()
            .filter(|(i, _)| *i == host)
            .map(|(_, c)| c.clone())
            .collect();
        for cve in open_here {
            if !exposed.contains_key(&cve) {
                let o = self.open.remove(&(host, cve.clone())).unwrap();
                if o.detected == now {
                    // exposed for no time at all (e.g. a reboot and the live patch in the
                    // same instant): never observable, so never a finding
                    continue;
                }
                let method = if kernel_changed {
                    "kernel"
                } else {
                    "livepatch"
                };
                self.findings.push((
                    host,
                    ModelFinding {
                        cve,
                        detected: o.detected,
                        fixed: Some((now, method)),
                    },
                ));
            }
        }
        for (cve, known) in exposed {
            self.open.entry((host, cve)).or_insert(Open {
                detected: now.max(known),
            });
        }
    }

    fn retire(&mut self, host: usize, now: i64) {
        let keys: Vec<_> = self
            .open
            .keys()
            .filter(|(i, _)| *i == host)
            .cloned()
            .collect();
        for key in keys {
            let o = self.open.remove(&key).unwrap();
            self.findings.push((
                host,
                ModelFinding {
                    cve: key.1,
                    detected: o.detected,
                    fixed: Some((now, "host_revoked")),
                },
            ));
        }
    }

    fn severity(&self, cve: &str) -> Rating {
        for (_, fixes) in self.releases.values() {
            if let Some((_, s)) = fixes.iter().find(|(c, _)| c == cve) {
                return Rating::from(*s);
            }
        }
        if self.osv_high.contains(cve) {
            return Rating::High;
        }
        Rating::Unrated
    }

    fn due(&self, cve: &str, detected: i64, severity: Rating) -> i64 {
        let (_, days) = self
            .policies
            .iter()
            .rev()
            .find(|(at, _)| *at <= detected)
            .unwrap();
        let d = match severity {
            Rating::Critical => days[0],
            Rating::High => days[1],
            Rating::Medium => days[2],
            Rating::Low => days[3],
            Rating::Unrated => days[4],
        };
        let mut due = detected + d * DAY_MS;
        if let Some(kev) = self.kev_due.get(cve) {
            due = due.min((*kev).max(detected + DAY_MS));
        }
        due
    }
}

/// The model's own nearest-rank percentile (`q` in 0..=100) of ascending `sorted`: the first
/// value with at least q % of the values at or below it. Written here rather than taken from
/// the server, so that the pack's p50/p95 are checked against a definition they do not share.
fn model_percentile(sorted: &[i64], q: usize) -> Option<i64> {
    let n = sorted.len();
    sorted
        .iter()
        .enumerate()
        .find(|(i, _)| (i + 1) * 100 >= q * n)
        .map(|(_, v)| *v)
}

fn kernel_info(kernel: usize) -> KernelInfo {
    KernelInfo {
        release: format!("6.1.0-{}-amd64", 50 + kernel),
        version: format!("#1 SMP PREEMPT_DYNAMIC Debian {}", KERNELS[kernel].1),
        arch: "x86_64".into(),
        build_id: Some(KERNELS[kernel].0.parse().unwrap()),
        package_version: Some(KERNELS[kernel].1.into()),
        distro: Some("Debian GNU/Linux 12 (bookworm)".into()),
    }
}

async fn checkin(fx: &Fixture, h: &mut SimHost) -> klive_format::api::CheckInResponse {
    h.seq += 1;
    let c = CheckIn {
        sequence: h.seq,
        kernel: kernel_info(h.kernel),
        applied: h.level.map(|l| AppliedReport {
            level: common::level(l),
            state: PatchState::Applied,
        }),
        uptime_secs: 3600,
        boot_id: format!("boot-{}", h.boot),
        agent_version: "0.1.0".into(),
        last_error: None,
        taint: Some(h.taint),
    };
    // the host's stored state moves with every check-in
    let r = fx.service.checkins().checkin(&h.auth, &c).await.unwrap();
    h.auth.last_sequence = h.seq as i64;
    h.auth.build_id = Some(KERNELS[h.kernel].0.into());
    h.auth.applied_level = h.level.map(i64::from);
    h.auth.applied_state = h.level.map(|_| "applied".into());
    h.auth.boot_id = Some(c.boot_id.clone());
    h.auth.taint = Some(h.taint as i64);
    h.auth.last_checkin_at = Some(fx.service.clock().now_ms());
    r
}

async fn publish(fx: &Fixture, model: &mut Model, kernel: usize, level: u32) {
    let build = KERNELS[kernel].0;
    let name = format!("klive_sim_l{level}");
    let ko = module(&name, level, build);
    let mut m = manifest_for(build, level, &name, &ko);
    m.fixes = level_fixes(level)
        .into_iter()
        .map(|(cve, severity)| Fix {
            cve,
            severity,
            cvss: None,
            summary: "simulated fix".into(),
            reference: None,
        })
        .collect();
    fx.service
        .releases()
        .publish_with_module(&fx.alice, m, Bytes::from(ko))
        .await
        .unwrap();
    model.releases.insert(
        (kernel, level),
        (fx.service.clock().now_ms(), level_fixes(level)),
    );
    model.publishes += 1;
}

fn promote_req(emergency: bool) -> PromoteRequest {
    PromoteRequest {
        to: "stable".into(),
        emergency,
        reason: emergency.then(|| "actively exploited".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_fleet_report_matches_an_independent_model() {
    let mut fx = Fixture::sqlite().await;
    let t0 = jiff::Timestamp::now().as_millisecond() - 120 * DAY_MS;
    fx.service = fx
        .service
        .clone()
        .with_clock(klive_server::clock::Clock::frozen(t0));
    let s = &fx.service;
    let mut model = Model {
        policies: vec![(0, [7, 30, 90, 180, 90])],
        ..Model::default()
    };

    // Day 0: 1,000 hosts enroll (100 canary, 900 stable), CVE knowledge arrives.
    let mut hosts = Vec::with_capacity(HOSTS);
    for (channel, n) in [("canary", CANARY), ("stable", HOSTS - CANARY)] {
        let token = enroll_token(&fx, channel, 3600, n as u32).await;
        for _ in 0..n {
            let i = hosts.len();
            let kernel = i % 3;
            let taint = if i % 50 == 7 { 4096 } else { 0 };
            let host = format!("web-{i:04}");
            hosts.push(SimHost::register(s, &token, &host, kernel, i % 5 == 0, taint).await);
        }
    }
    import_changelog(&fx, CHANGELOG).await;
    model.debian_known_at = Some(s.clock().now_ms());
    import_feed(&fx, Source::Osv, "osv.json", osv_sample().as_bytes()).await;
    model.osv_high.insert("CVE-2026-0001".into());
    // KEV: the level-2 high CVE must be fixed by day 20.
    let kev_date = utc_date(t0 + 20 * DAY_MS);
    let kev = format!(
        r#"{{"title":"CISA Catalog of Known Exploited Vulnerabilities","catalogVersion":"2026.11.22","dateReleased":"2026-11-22T00:00:00Z","count":1,
        "vulnerabilities":[{{"cveID":"CVE-2026-1021","vendorProject":"Linux","product":"Kernel","vulnerabilityName":"Linux Kernel simulated","dateAdded":"{}","shortDescription":"x","requiredAction":"patch","dueDate":"{kev_date}","knownRansomwareCampaignUse":"Unknown","notes":"","cwes":[]}}]}}"#,
        utc_date(t0)
    );
    import_feed(&fx, Source::Kev, "kev.json", kev.as_bytes()).await;
    let kev_due: jiff::civil::Date = kev_date.parse().unwrap();
    model.kev_due.insert(
        "CVE-2026-1021".into(),
        kev_due
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_millisecond()
            + DAY_MS
            - 1,
    );
    let known_now = s.clock().now_ms();
    for (i, h) in hosts.iter().enumerate() {
        model.observe(i, h, known_now, false);
    }

    let mut snapshot_day30 = None;
    let mut promotion_for_approval: Option<String> = None;
    let mut emergency_to_approve: Option<String> = None;
    for day in 0..DAYS {
        let now = s.clock().now_ms();
        // Admin work of the day.
        if let Some(pos) = PUBLISH_DAYS.iter().position(|d| *d == day) {
            let level = pos as u32 + 1;
            for k in 0..3 {
                publish(&fx, &mut model, k, level).await;
            }
            if level == 5 {
                // emergency promotion of B1's level 5, never approved afterwards
                s.promotions()
                    .promote(
                        &fx.bob,
                        &common::build(KERNELS[0].0),
                        common::level(5),
                        &promote_req(true),
                    )
                    .await
                    .unwrap();
                model.promotions += 1;
                model.emergency += 1;
                model.emergency_unapproved += 1;
            }
            if level == 4 {
                let p = s
                    .promotions()
                    .promote(
                        &fx.bob,
                        &common::build(KERNELS[1].0),
                        common::level(4),
                        &promote_req(true),
                    )
                    .await
                    .unwrap();
                emergency_to_approve = Some(p.id);
                model.promotions += 1;
                model.emergency += 1;
            }
            let known = s.clock().now_ms();
            for (i, h) in hosts.iter().enumerate().filter(|(_, h)| !h.revoked) {
                model.observe(i, h, known, false);
            }
        }
        if let Some(pos) = PUBLISH_DAYS.iter().position(|d| *d + 2 == day) {
            let level = pos as u32 + 1;
            for (k, (build, _)) in KERNELS.iter().enumerate() {
                if (level == 5 && k == 0) || (level == 4 && k == 1) {
                    continue; // already in stable by emergency
                }
                if level == 3 && k == 2 {
                    // requested by the publisher, approved by a second approver the next day
                    let p = s
                        .promotions()
                        .promote(
                            &fx.alice,
                            &common::build(build),
                            common::level(3),
                            &promote_req(false),
                        )
                        .await
                        .unwrap();
                    promotion_for_approval = Some(p.id);
                    model.promotions += 1;
                    continue;
                }
                s.promotions()
                    .promote(
                        &fx.bob,
                        &common::build(build),
                        common::level(level),
                        &promote_req(false),
                    )
                    .await
                    .unwrap();
                model.promotions += 1;
            }
        }
        if day == 34 {
            s.promotions()
                .approve(&fx.carol, &promotion_for_approval.take().unwrap())
                .await
                .unwrap();
        }
        if day == 50 {
            s.promotions()
                .approve(&fx.carol, &emergency_to_approve.take().unwrap())
                .await
                .unwrap();
        }
        if day == 5 {
            // risk accepted for the level-1 critical CVE while slow hosts catch up
            klive_server::evidence::policy::Policies::new(s)
                .add_exception(
                    &fx.bob,
                    "CVE-2026-1011",
                    None,
                    "compensating control: WAF rule",
                    100 * 86400,
                )
                .await
                .unwrap();
            let now = s.clock().now_ms();
            model
                .exceptions
                .push(("CVE-2026-1011".into(), now, now + 100 * DAY_MS));
        }
        if day == 45 {
            klive_server::evidence::policy::Policies::new(s)
                .set_sla_policy(
                    &fx.admin,
                    &PolicyChange {
                        critical_days: 3,
                        high_days: 14,
                        medium_days: 90,
                        low_days: 180,
                        unrated_days: 90,
                        kev_shortens: true,
                        kev_floor_days: 1,
                        clock_start: klive_format::evidence::ClockStart::Detected,
                        note: "tightened".into(),
                    },
                )
                .await
                .unwrap();
            model
                .policies
                .push((s.clock().now_ms(), [3, 14, 90, 180, 90]));
        }
        if day == 60 {
            for (i, h) in hosts.iter_mut().enumerate() {
                if i % 97 == 5 {
                    s.hosts().revoke_host(&fx.admin, &h.auth.id).await.unwrap();
                    h.revoked = true;
                    model.retire(i, s.clock().now_ms());
                }
            }
        }
        // Hosts: every other day; a tenth of the B1 hosts reboot into B3 on day 40.
        for (i, h) in hosts.iter_mut().enumerate() {
            if h.revoked || (day + i as i64) % 2 != 0 {
                continue;
            }
            if day >= 40 && h.kernel == 0 && i % 10 == 0 && h.boot == 1 {
                h.kernel = 2;
                h.boot = 2;
                h.level = None;
                model.reboots += 1;
                checkin(&fx, h).await;
                model.observe(i, h, s.clock().now_ms(), true);
            }
            let r = checkin(&fx, h).await;
            if r.action == Action::Apply && (!h.slow || day % 10 == 0) {
                let target = r.target.unwrap().level.get();
                if h.level.is_none_or(|l| l < target) {
                    model.applies += 1;
                }
                h.level = Some(target);
                checkin(&fx, h).await;
                model.observe(i, h, s.clock().now_ms(), false);
            }
        }
        if day == 30 {
            snapshot_day30 = Some((now, model.open.len()));
        }
        s.clock().advance_secs(86400);
    }

    // The period is the 90 days; as of its end.
    let from = t0;
    let to = t0 + DAYS * DAY_MS - 1;
    assert!(s.clock().now_ms() > to);
    let as_of = to;

    // As-of query: findings open at day 30, from the history alone.
    let (day30, open30) = snapshot_day30.unwrap();
    let past = assess(s, day30).await.unwrap();
    assert_eq!(
        past.findings.iter().filter(|f| f.open_at(day30)).count(),
        open30,
        "open findings as of day 30"
    );

    // Viewers may not generate the signed pack.
    let key = EvidenceKey::load_or_create(fx.dir().unwrap()).unwrap();
    let out = fx.dir().unwrap().join("pack");
    let err = report::generate_pack(s, &fx.vic, &key, from, to, &out, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "forbidden");
    assert!(!out.exists());

    let started = std::time::Instant::now();
    report::generate_pack(s, &fx.bob, &key, from, to, &out, None)
        .await
        .unwrap();
    eprintln!(
        "evidence pack for {HOSTS} hosts x {DAYS} days in {:?}",
        started.elapsed()
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let summary: ReportSummary = serde_json::from_value(summary["summary"].clone()).unwrap();

    // --- the independent computation -----------------------------------------------------
    let mut all: Vec<(usize, ModelFinding)> = model.findings.clone();
    for ((host, cve), o) in &model.open {
        all.push((
            *host,
            ModelFinding {
                cve: cve.clone(),
                detected: o.detected,
                fixed: None,
            },
        ));
    }
    assert_eq!(summary.findings as usize, all.len(), "finding population");
    let revoked = hosts.iter().filter(|h| h.revoked).count() as u64;
    assert_eq!(summary.hosts_in_scope, HOSTS as u64);
    assert_eq!(summary.hosts_at_end, HOSTS as u64 - revoked);
    assert_eq!(summary.reboots, model.reboots);
    assert_eq!(summary.reboots_avoided, model.applies);
    assert_eq!(summary.changes, model.publishes + model.promotions);
    assert_eq!(summary.emergency_changes, model.emergency);
    assert_eq!(summary.emergency_unapproved, model.emergency_unapproved);
    assert_eq!(
        summary.promotions_segregation_violations,
        model.emergency_unapproved
    );
    assert_eq!(
        summary.hosts_foreign_or_unsigned_modules,
        (0..HOSTS).filter(|i| i % 50 == 7).count() as u64
    );
    assert!(summary.audit_chain.starts_with("intact"));
    assert!(!summary.no_data);

    let excepted = |cve: &str, end: i64| {
        model
            .exceptions
            .iter()
            .any(|(c, created, expires)| c == cve && *created <= end && *expires >= end)
    };
    for rating in Rating::ALL {
        let fig = summary
            .severities
            .iter()
            .find(|f| f.severity == rating)
            .unwrap();
        let mut ttp = Vec::new();
        let (mut fixed, mut on_time, mut lp, mut kernel, mut open, mut overdue, mut exc) =
            (0, 0, 0, 0, 0, 0, 0);
        for (_, f) in all.iter().filter(|(_, f)| model.severity(&f.cve) == rating) {
            let due = model.due(&f.cve, f.detected, rating);
            match f.fixed {
                Some((at, method)) if method != "host_revoked" => {
                    fixed += 1;
                    ttp.push(at - f.detected);
                    if method == "livepatch" {
                        lp += 1;
                    } else {
                        kernel += 1;
                    }
                    if at <= due {
                        on_time += 1;
                    } else if excepted(&f.cve, at) {
                        exc += 1;
                    }
                }
                Some(_) => {}
                None => {
                    open += 1;
                    if as_of > due {
                        if excepted(&f.cve, as_of) {
                            exc += 1;
                        } else {
                            overdue += 1;
                        }
                    }
                }
            }
        }
        ttp.sort_unstable();
        let what = rating.as_str();
        assert_eq!(fig.fixed, fixed, "{what}: fixed");
        assert_eq!(fig.fixed_on_time, on_time, "{what}: on time");
        assert_eq!(fig.fixed_by_livepatch, lp, "{what}: by live patch");
        assert_eq!(fig.fixed_by_kernel, kernel, "{what}: by kernel");
        assert_eq!(fig.open_at_end, open, "{what}: open at end");
        assert_eq!(fig.overdue_at_end, overdue, "{what}: overdue at end");
        assert_eq!(fig.excepted, exc, "{what}: excepted");
        assert_eq!(
            fig.p50_secs,
            model_percentile(&ttp, 50).map(|v| (v / 1000) as u64),
            "{what}: p50"
        );
        assert_eq!(
            fig.p95_secs,
            model_percentile(&ttp, 95).map(|v| (v / 1000) as u64),
            "{what}: p95"
        );
    }
    // The simulation exercised every path the figures claim to cover.
    let sev = |r: Rating| summary.severities.iter().find(|f| f.severity == r).unwrap();
    assert!(
        sev(Rating::Critical).fixed > 0
            && sev(Rating::Critical).fixed_on_time < sev(Rating::Critical).fixed
    );
    assert!(
        sev(Rating::Critical).excepted > 0,
        "the exception covered late fixes"
    );
    assert!(
        sev(Rating::High).fixed_by_kernel > 0,
        "reboots into a fixed kernel closed findings"
    );
    assert!(sev(Rating::Unrated).open_at_end > 0);
    assert!(summary.kev_findings > 0);

    // Populations: one row per finding and host, and the pack verifies.
    let findings_csv = std::fs::read_to_string(out.join("findings.csv")).unwrap();
    assert_eq!(findings_csv.lines().count(), all.len() + 1);
    assert_eq!(
        std::fs::read_to_string(out.join("hosts.csv"))
            .unwrap()
            .lines()
            .count(),
        HOSTS + 1
    );
    let manifest = report::verify_pack(&out, Some(&key.public_hex)).unwrap();
    assert!(manifest.files.iter().any(|f| f.path == "report.html"));
    assert!(
        manifest
            .command
            .starts_with("klive-server report soc2 --from ")
    );

    // The streamed populations are the records' generic CSV and JSON forms.
    let f = report::figures(s, from, to).await.unwrap();
    let records = f.finding_records();
    assert_eq!(records.len(), all.len());
    assert_eq!(
        findings_csv,
        report::csv(&records, report::FINDING_COLUMNS),
        "findings.csv"
    );
    let mut json = Vec::new();
    report::write_json_records(&mut json, &records).unwrap();
    assert_eq!(std::fs::read(out.join("findings.json")).unwrap(), json);
    let parsed: Vec<klive_format::evidence::Finding> = serde_json::from_slice(&json).unwrap();
    assert_eq!(parsed, records);
    assert_eq!(
        std::fs::read_to_string(out.join("hosts.csv")).unwrap(),
        report::csv(&f.hosts, report::HOST_COLUMNS)
    );

    // The same command later gives byte-identical populations.
    let again = fx.dir().unwrap().join("again");
    report::generate_pack(s, &fx.bob, &key, from, to, &again, None)
        .await
        .unwrap();
    for file in &manifest.files {
        let path = &file.path;
        if path.ends_with(".csv") || (path.ends_with(".json") && path != "summary.json") {
            let bytes = std::fs::read(out.join(path)).unwrap();
            assert!(
                bytes == std::fs::read(again.join(path)).unwrap(),
                "{path} differs on a second run"
            );
        }
    }
    assert!(
        report::generate_pack(s, &fx.bob, &key, from, to, &again, None)
            .await
            .is_err(),
        "an existing pack is never overwritten"
    );

    // One changed byte is caught and named.
    let mut bytes = std::fs::read(out.join("findings.csv")).unwrap();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(out.join("findings.csv"), &bytes).unwrap();
    match report::verify_pack(&out, Some(&key.public_hex)) {
        Err(VerifyError::Changed { path, .. }) => assert_eq!(path, "findings.csv"),
        other => panic!("a changed byte was not caught: {other:?}"),
    }

    // A period before anything happened: an explicit "no data" report, nothing invented.
    let empty = report::figures(s, t0 - 30 * DAY_MS, t0 - DAY_MS)
        .await
        .unwrap();
    assert!(empty.summary.no_data);
    assert_eq!(empty.summary.findings, 0);
    assert!(
        report::render_html(&empty, t0, "bob", "x", "k")
            .unwrap()
            .contains("No data")
    );
    assert_eq!(
        report::figures(s, to, from).await.unwrap_err().code(),
        "bad_request"
    );
}

#[tokio::test]
async fn real_debian_changelog_imports_and_bad_feeds_change_nothing() {
    let fx = Fixture::sqlite().await;
    let s = &fx.service;
    let path = "/usr/share/doc/linux-image-6.1.0-56-amd64/changelog.gz";
    let Ok(bytes) = std::fs::read(path) else {
        eprintln!("{path} is missing: install linux-image-6.1.0-56-amd64 (cargo xtask test does)");
        return;
    };
    // Independent count of the CVE ids in the file.
    let text = klive_server::evidence::cve::decompress("c", &bytes).unwrap();
    let ids = klive_server::evidence::cve::cve_ids(&text);
    let summary = import_feed(&fx, Source::DebianChangelog, "changelog.gz", &bytes).await;
    assert_eq!(summary.cves, ids.len());
    assert!(
        summary.cves > 1000,
        "a Debian 6.1 changelog names thousands of CVEs"
    );
    let again = klive_server::evidence::cve::Cves::new(s)
        .import(&fx.bob, Source::DebianChangelog, "changelog.gz", &bytes)
        .await
        .unwrap_err();
    assert_eq!(again.code(), "already_imported");
    // Viewers and publishers may not import.
    assert_eq!(
        klive_server::evidence::cve::Cves::new(s)
            .import(&fx.alice, Source::Osv, "o", b"{}")
            .await
            .unwrap_err()
            .code(),
        "forbidden"
    );

    // A truncated changelog, a KEV file given as OSV, garbage: refused, nothing stored.
    let cut = &text[..text.len() / 2];
    let cut = &cut[..cut.rfind("\n -- ").unwrap() - 10];
    for (source, body) in [
        (Source::DebianChangelog, cut.as_bytes().to_vec()),
        (
            Source::Osv,
            br#"{"title":"x","catalogVersion":"1","vulnerabilities":[]}"#.to_vec(),
        ),
        (Source::Kev, b"\x00\x01garbage".to_vec()),
    ] {
        let err = klive_server::evidence::cve::Cves::new(s)
            .import(&fx.bob, source, "bad", &body)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_feed", "{err}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cve_imports")
        .fetch_one(&s.db().pool)
        .await
        .unwrap();
    assert_eq!(stored, 1, "only the good import is recorded");

    // A host on an older version lacks exactly the CVEs of later entries that are not
    // also named at or below its version.
    let entries = klive_server::evidence::cve::parse_debian_changelog("c", &text).unwrap();
    let host_version = "6.1.170-1";
    let (later, upto): (Vec<_>, Vec<_>) = entries
        .iter()
        .filter(|e| e.package == "linux")
        .partition(|e| klive_format::debver::compare(&e.version, host_version).is_gt());
    let fixed_upto: HashSet<&String> = upto.iter().flat_map(|e| e.cves.iter()).collect();
    let lacking: HashSet<&String> = later
        .iter()
        .flat_map(|e| e.cves.iter())
        .filter(|c| !fixed_upto.contains(c))
        .collect();
    let token = enroll_token(&fx, "stable", 60, 1).await;
    let mut k = kernel_info(0);
    k.package_version = Some(host_version.into());
    register(s, &token, "old", k, "0.1.0").await;
    s.clock().advance_secs(60);
    let a = assess(s, s.clock().now_ms()).await.unwrap();
    assert_eq!(a.findings.len(), lacking.len());
    assert!(!lacking.is_empty());
}

backend_tests!(small_fleet_evidence_on_both_databases);

/// The evidence queries (history, CVE knowledge, findings, pack, metrics) on SQLite and
/// PostgreSQL.
async fn small_fleet_evidence_on_both_databases(fx: Fixture) {
    let s = &fx.service;
    import_changelog(&fx, CHANGELOG).await;
    import_feed(&fx, Source::Osv, "osv.json", osv_sample().as_bytes()).await;
    let mut model = Model::default();
    publish(&fx, &mut model, 0, 1).await;
    let token = enroll_token(&fx, "canary", 600, 3).await;
    let mut hosts = Vec::new();
    for kernel in 0..3 {
        hosts.push(SimHost::register(s, &token, &format!("h{kernel}"), kernel, false, 0).await);
    }
    s.clock().advance_secs(3600);
    let answer = checkin(&fx, &mut hosts[0]).await;
    assert_eq!(answer.action, Action::Apply);
    s.clock().advance_secs(3600);
    hosts[0].level = Some(1);
    checkin(&fx, &mut hosts[0]).await;
    s.clock().advance_secs(60);

    let a = assess(s, s.clock().now_ms()).await.unwrap();
    // h0 lacks the 8 CVEs of later Debian versions and had the release's 2 (fixed by level 1);
    // h1 lacks the 3 of 6.1.192-1; h2 is current.
    assert_eq!(a.findings.len(), 13);
    assert_eq!(
        a.findings
            .iter()
            .filter(|f| f.fix_method == Some(klive_format::evidence::FixMethod::Livepatch))
            .count(),
        2
    );
    let now = s.clock().now_ms();
    let f = report::figures(s, now - DAY_MS, now).await.unwrap();
    assert_eq!(f.summary.findings, 13);
    assert_eq!(f.summary.reboots_avoided, 1);
    assert_eq!(f.summary.changes, 1);
    assert_eq!(f.imports.len(), 2);
    assert!(f.summary.audit_chain.starts_with("intact"));

    let dir = tempfile::tempdir().unwrap();
    let dash = klive_server::http::dashboard::Dashboard::new(s.clone(), dir.path().to_path_buf());
    let text = dash.metrics_text().await.unwrap();
    assert!(
        text.contains("klive_findings_open{severity=\"unrated\"} 10"),
        "{text}"
    );
    assert!(
        text.contains("klive_findings_open{severity=\"high\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("klive_patch_apply_total{result=\"success\"} 1"),
        "{text}"
    );
    assert!(!text.contains("CVE-"), "no CVE id in metrics");
}
