//! The server's rules, through the service layer, on SQLite and PostgreSQL.

use bytes::Bytes;
use klive_format::api::{
    Action, AppliedReport, CheckIn, EnrollTokenRequest, HostListQuery, HostPolicy, PromoteRequest,
    PromotionStatus, RegisterRequest,
};
use klive_format::modinfo;
use klive_format::status::PatchState;
use klive_server::Error;
use klive_server::domain::AuthHost;
use klive_server::store::audit::{self, Verdict};
use klive_testkit::elf::ModuleBuilder;

use crate::common::{
    self, BUILD, Fixture, OTHER_BUILD, build, kernel, level, manifest_for, promote_as_bob,
    promote_to, publish, publish_as, release,
};

backend_tests!(
    publish_checks_the_module_against_its_manifest,
    promotion_needs_a_second_person_and_soak_time,
    emergency_promotion_is_flagged_until_approved,
    enrollment_tokens_expire_and_run_out,
    checkin_answers_the_level_the_host_should_run,
    replayed_and_revoked_checkins_are_refused,
    host_reads_only_its_channels_releases,
    audit_verify_finds_the_first_altered_record,
    concurrent_checkins_and_admin_writes_all_succeed,
    failed_sign_ins_are_audited_at_most_once_a_minute,
);

async fn counts(fx: &Fixture) -> (usize, u64) {
    let releases = fx.service.releases().list().await.unwrap().len();
    let records = match audit::verify(fx.service.db()).await.unwrap() {
        Verdict::Intact { records, .. } => records,
        Verdict::Broken { seq, reason } => panic!("audit chain broken at {seq}: {reason}"),
    };
    (releases, records)
}

async fn publish_checks_the_module_against_its_manifest(fx: Fixture) {
    let s = &fx.service;
    let (m, ko) = release(BUILD, 1);
    let info = s
        .releases()
        .publish_with_module(&fx.alice, m.clone(), ko.clone())
        .await
        .unwrap();
    assert_eq!(info.channels.len(), 1);
    assert_eq!(
        info.channels[0].channel, "canary",
        "a release enters the first channel"
    );
    assert_eq!(info.published_by, "alice");
    let before = counts(&fx).await;

    // Each bad input gets its own error and changes nothing.
    let err = s
        .releases()
        .publish_with_module(&fx.alice, m.clone(), ko.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::DuplicateRelease { level: 1, .. }),
        "{err}"
    );

    let (m2, ko2) = release(BUILD, 2);
    let truncated = ko2.slice(..ko2.len() - 10);
    let err = s
        .releases()
        .publish_with_module(&fx.alice, m2.clone(), truncated)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "module_digest_mismatch");

    let mut wrong_size = m2.clone();
    wrong_size.module.size += 1;
    let err = s
        .releases()
        .publish_with_module(&fx.alice, wrong_size, ko2.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "module_size_mismatch");

    // The module says level 2 but the manifest claims 3.
    let mut lying = m2.clone();
    lying.level = level(3);
    let err = s
        .releases()
        .publish_with_module(&fx.alice, lying, ko2.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::ModinfoMismatch {
                tag: "klive_level",
                ..
            }
        ),
        "{err}"
    );

    // A module built for another kernel.
    let other = ModuleBuilder::empty()
        .tag(modinfo::LEVEL, "2")
        .tag(modinfo::BUILD_ID, OTHER_BUILD)
        .build();
    let m_other = manifest_for(BUILD, 2, "klive_x", &other);
    let err = s
        .releases()
        .publish_with_module(&fx.alice, m_other, Bytes::from(other))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::ModinfoMismatch {
                tag: "klive_build_id",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(OTHER_BUILD));

    let garbage = Bytes::from_static(b"\x7fELF but not really");
    let m_garbage = manifest_for(BUILD, 2, "klive_x", &garbage);
    let err = s
        .releases()
        .publish_with_module(&fx.alice, m_garbage, garbage)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_module");

    let mut bad_cve = m2.clone();
    bad_cve.fixes[0].cve = "CVE-1".into();
    let err = s
        .releases()
        .publish_with_module(&fx.alice, bad_cve, ko2.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_manifest");

    let err = s
        .releases()
        .publish_with_module(&fx.vic, m2.clone(), ko2.clone())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Forbidden {
            needed: "publisher"
        }
    ));

    // Publishing by reference needs the blob first.
    let err = s
        .releases()
        .publish(&fx.alice, m2.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "blob_missing");

    assert_eq!(
        counts(&fx).await,
        before,
        "refused publications changed nothing"
    );

    s.releases().store_blob(&fx.alice, ko2).await.unwrap();
    s.releases().publish(&fx.alice, m2).await.unwrap();
    assert_eq!(counts(&fx).await, (before.0 + 1, before.1 + 1));
}

async fn promotion_needs_a_second_person_and_soak_time(fx: Fixture) {
    let s = &fx.service;
    publish(&fx, BUILD, 1).await;
    let to_stable = promote_to("stable");
    let to_canary = promote_to("canary");

    let err = s
        .promotions()
        .promote(&fx.alice, &build(BUILD), level(1), &to_canary)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        "promotion_refused",
        "the first channel is entered by publishing"
    );

    // The publisher can only ask.
    let p = s
        .promotions()
        .promote(&fx.alice, &build(BUILD), level(1), &to_stable)
        .await
        .unwrap();
    assert_eq!(p.status, PromotionStatus::Pending);
    let info = s.releases().get(&build(BUILD), level(1)).await.unwrap();
    assert_eq!(
        info.channels.len(),
        1,
        "a pending promotion is not effective"
    );
    let err = s.promotions().approve(&fx.alice, &p.id).await.unwrap_err();
    assert!(matches!(err, Error::Forbidden { needed: "approver" }));
    let err = s
        .promotions()
        .promote(&fx.alice, &build(BUILD), level(1), &to_stable)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&p.id),
        "a second request names the pending one: {err}"
    );

    // A soak time on stable holds the approval back until it has elapsed.
    s.channels()
        .set_channel_soak(&fx.admin, "stable", 3600)
        .await
        .unwrap();
    let err = s.promotions().approve(&fx.bob, &p.id).await.unwrap_err();
    assert!(
        matches!(err, Error::SoakNotElapsed { remaining_secs, .. } if remaining_secs > 3500),
        "{err}"
    );
    s.clock().advance_secs(3601);
    let p = s.promotions().approve(&fx.bob, &p.id).await.unwrap();
    assert_eq!(p.status, PromotionStatus::Approved);
    assert_eq!(p.approved_by.as_deref(), Some("bob"));
    let info = s.releases().get(&build(BUILD), level(1)).await.unwrap();
    assert_eq!(
        info.channels
            .iter()
            .map(|c| c.channel.as_str())
            .collect::<Vec<_>>(),
        ["canary", "stable"]
    );

    // An approver who published cannot approve their own release; one who did not promotes at once.
    publish_as(&fx, &fx.carol, BUILD, 2).await;
    s.clock().advance_secs(3601);
    let p2 = s
        .promotions()
        .promote(&fx.carol, &build(BUILD), level(2), &to_stable)
        .await
        .unwrap();
    assert_eq!(
        p2.status,
        PromotionStatus::Pending,
        "carol published level 2"
    );
    let err = s.promotions().approve(&fx.carol, &p2.id).await.unwrap_err();
    assert_eq!(err.code(), "maker_checker");
    let direct = s
        .promotions()
        .promote(&fx.bob, &build(BUILD), level(2), &to_stable)
        .await
        .unwrap();
    assert_eq!(direct.status, PromotionStatus::Approved);
    let err = s.promotions().approve(&fx.bob, &p2.id).await.unwrap_err();
    assert_eq!(
        err.code(),
        "promotion_refused",
        "the request was superseded: {err}"
    );

    // Promotion goes one channel at a time.
    s.channels()
        .add_channel(
            &fx.admin,
            &klive_format::api::ChannelRequest {
                name: "late".into(),
                min_soak_secs: 0,
            },
        )
        .await
        .unwrap();
    publish(&fx, BUILD, 3).await;
    let to_late = promote_to("late");
    let err = s
        .promotions()
        .promote(&fx.bob, &build(BUILD), level(3), &to_late)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not in stable"), "{err}");

    // A withdrawn release cannot be promoted.
    s.releases()
        .withdraw(&fx.alice, &build(BUILD), level(3), "broke networking")
        .await
        .unwrap();
    let err = s
        .promotions()
        .promote(&fx.bob, &build(BUILD), level(3), &to_stable)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "release_withdrawn");
}

async fn emergency_promotion_is_flagged_until_approved(fx: Fixture) {
    let s = &fx.service;
    s.channels()
        .set_channel_soak(&fx.admin, "stable", 86400)
        .await
        .unwrap();
    publish_as(&fx, &fx.bob, BUILD, 1).await;
    let mut req = PromoteRequest {
        to: "stable".into(),
        emergency: true,
        reason: None,
    };
    let err = s
        .promotions()
        .promote(&fx.bob, &build(BUILD), level(1), &req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "bad_request", "an emergency needs a reason");
    req.reason = Some("CVE under active exploitation".into());
    let err = s
        .promotions()
        .promote(&fx.alice, &build(BUILD), level(1), &req)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden { needed: "approver" }));

    // Bob published and may still push it through in an emergency, skipping the soak time.
    let p = s
        .promotions()
        .promote(&fx.bob, &build(BUILD), level(1), &req)
        .await
        .unwrap();
    assert_eq!(p.status, PromotionStatus::EmergencyUnapproved);
    let stable = |info: klive_format::api::ReleaseInfo| {
        info.channels
            .into_iter()
            .find(|c| c.channel == "stable")
            .unwrap()
    };
    let entry = stable(s.releases().get(&build(BUILD), level(1)).await.unwrap());
    assert!(entry.emergency && entry.awaiting_approval);

    let err = s.promotions().approve(&fx.bob, &p.id).await.unwrap_err();
    assert_eq!(err.code(), "maker_checker");
    let p = s.promotions().approve(&fx.carol, &p.id).await.unwrap();
    assert_eq!(p.status, PromotionStatus::EmergencyApproved);
    let entry = stable(s.releases().get(&build(BUILD), level(1)).await.unwrap());
    assert!(entry.emergency && !entry.awaiting_approval);
    let err = s.promotions().approve(&fx.admin, &p.id).await.unwrap_err();
    assert_eq!(
        err.code(),
        "promotion_refused",
        "nothing is left to approve"
    );
}

fn enroll(channel: &str, uses: u32, secs: u64) -> EnrollTokenRequest {
    EnrollTokenRequest {
        channel: channel.into(),
        expires_in_secs: secs,
        max_uses: uses,
    }
}

fn register_req(token: &str, name: &str) -> RegisterRequest {
    RegisterRequest {
        enrollment_token: token.into(),
        hostname: name.into(),
        kernel: kernel(Some(BUILD)),
        agent_version: "0.1.0".into(),
    }
}

async fn enrollment_tokens_expire_and_run_out(fx: Fixture) {
    let s = &fx.service;
    let err = s
        .enrollment()
        .create_enroll_token(&fx.bob, &enroll("canary", 1, 60))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden { needed: "admin" }));
    let err = s
        .enrollment()
        .create_enroll_token(&fx.admin, &enroll("nope", 1, 60))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "channel_not_found");

    let t = s
        .enrollment()
        .create_enroll_token(&fx.admin, &enroll("stable", 2, 60))
        .await
        .unwrap();
    let a = s
        .enrollment()
        .register(&register_req(&t.token, "web-1"))
        .await
        .unwrap();
    assert_eq!(a.channel, "stable");
    let b = s
        .enrollment()
        .register(&register_req(&t.token, "web-2"))
        .await
        .unwrap();
    assert_ne!(a.credential, b.credential);
    let err = s
        .enrollment()
        .register(&register_req(&t.token, "web-3"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        "enrollment_token_invalid",
        "used up after two hosts"
    );

    let t = s
        .enrollment()
        .create_enroll_token(&fx.admin, &enroll("canary", 5, 60))
        .await
        .unwrap();
    s.clock().advance_secs(61);
    let err = s
        .enrollment()
        .register(&register_req(&t.token, "web-4"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "enrollment_token_invalid", "expired");
    let err = s
        .enrollment()
        .register(&register_req("kle_0000", "web-5"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "enrollment_token_invalid");
    let all = s
        .hosts()
        .list(&fx.vic, &HostListQuery::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    // Paging by id: one host per page, in order, then nothing.
    let first = HostListQuery {
        after: None,
        limit: Some(1),
    };
    let page1 = s.hosts().list(&fx.vic, &first).await.unwrap();
    let next = HostListQuery {
        after: Some(page1[0].id.clone()),
        limit: Some(1),
    };
    let page2 = s.hosts().list(&fx.vic, &next).await.unwrap();
    assert_eq!(
        [page1[0].id.clone(), page2[0].id.clone()],
        [all[0].id.clone(), all[1].id.clone()]
    );
    let last = HostListQuery {
        after: Some(page2[0].id.clone()),
        limit: Some(1),
    };
    assert!(s.hosts().list(&fx.vic, &last).await.unwrap().is_empty());
    // Credentials are stored hashed only.
    let stored: Vec<String> = sqlx::query_scalar("SELECT credential_hash FROM hosts")
        .fetch_all(&s.db().pool)
        .await
        .unwrap();
    assert!(
        !stored.contains(&a.credential)
            && stored.contains(&klive_format::digest::sha256_hex(a.credential.as_bytes()))
    );
}

struct Agent {
    host: AuthHost,
    credential: String,
    seq: u64,
    boot_id: String,
    applied: Option<AppliedReport>,
}

impl Agent {
    async fn register(fx: &Fixture, channel: &str) -> Agent {
        let t = fx
            .service
            .enrollment()
            .create_enroll_token(&fx.admin, &enroll(channel, 1, 60))
            .await
            .unwrap();
        let r = fx
            .service
            .enrollment()
            .register(&register_req(&t.token, &format!("{channel}-host")))
            .await
            .unwrap();
        let host = fx
            .service
            .enrollment()
            .authenticate_host(&r.credential)
            .await
            .unwrap();
        Agent {
            host,
            credential: r.credential,
            seq: 0,
            boot_id: "boot-1".into(),
            applied: None,
        }
    }

    fn checkin(&mut self) -> CheckIn {
        self.seq += 1;
        CheckIn {
            sequence: self.seq,
            kernel: kernel(Some(BUILD)),
            applied: self.applied.clone(),
            uptime_secs: 100,
            boot_id: self.boot_id.clone(),
            agent_version: "0.1.0".into(),
            last_error: None,
            taint: None,
        }
    }

    /// Checks in and does what the server says; returns the action and the level now applied.
    async fn cycle(&mut self, fx: &Fixture) -> (Action, Option<u32>) {
        self.host = fx
            .service
            .enrollment()
            .authenticate_host(&self.credential)
            .await
            .unwrap();
        let c = self.checkin();
        let r = fx.service.checkins().checkin(&self.host, &c).await.unwrap();
        match r.action {
            Action::Apply => {
                let t = r.target.clone().unwrap();
                self.applied = Some(AppliedReport {
                    level: t.level,
                    state: PatchState::Applied,
                });
            }
            Action::Revert => self.applied = None,
            Action::None => {}
        }
        (r.action, self.applied.as_ref().map(|a| a.level.get()))
    }
}

/// The admin keeps host `id` on canary, pinned at `pinned` (if any), with an update delay.
async fn set_canary_policy(fx: &Fixture, id: &str, pinned: Option<u32>, update_delay_secs: u64) {
    let policy = HostPolicy {
        channel: "canary".into(),
        pinned_level: pinned.map(level),
        update_delay_secs,
    };
    fx.service
        .hosts()
        .set_host_policy(&fx.admin, id, &policy)
        .await
        .unwrap();
}

async fn checkin_answers_the_level_the_host_should_run(fx: Fixture) {
    let s = &fx.service;
    let mut canary = Agent::register(&fx, "canary").await;
    let mut stable = Agent::register(&fx, "stable").await;
    assert_eq!(
        canary.cycle(&fx).await,
        (Action::None, None),
        "nothing published yet"
    );

    publish(&fx, BUILD, 1).await;
    assert_eq!(canary.cycle(&fx).await, (Action::Apply, Some(1)));
    assert_eq!(
        canary.cycle(&fx).await,
        (Action::None, Some(1)),
        "already there"
    );
    assert_eq!(
        stable.cycle(&fx).await,
        (Action::None, None),
        "not promoted yet"
    );

    promote_as_bob(&fx, BUILD, 1, "stable").await;
    assert_eq!(stable.cycle(&fx).await, (Action::Apply, Some(1)));

    publish(&fx, BUILD, 2).await;
    assert_eq!(canary.cycle(&fx).await, (Action::Apply, Some(2)));

    // Withdrawal: back to the newest level still allowed, then revert when none is left.
    s.releases()
        .withdraw(&fx.alice, &build(BUILD), level(2), "oops")
        .await
        .unwrap();
    assert_eq!(canary.cycle(&fx).await, (Action::Apply, Some(1)));
    s.releases()
        .withdraw(&fx.alice, &build(BUILD), level(1), "oops too")
        .await
        .unwrap();
    assert_eq!(canary.cycle(&fx).await, (Action::Revert, None));
    assert_eq!(stable.cycle(&fx).await, (Action::Revert, None));

    // Pin and update delay.
    for n in [3, 4] {
        publish(&fx, BUILD, n).await;
    }
    set_canary_policy(&fx, &canary.host.id, Some(3), 0).await;
    assert_eq!(
        canary.cycle(&fx).await,
        (Action::Apply, Some(3)),
        "pinned at 3 although 4 exists"
    );
    set_canary_policy(&fx, &canary.host.id, None, 600).await;
    assert_eq!(
        canary.cycle(&fx).await,
        (Action::Revert, None),
        "3 and 4 are younger than the delay"
    );
    s.clock().advance_secs(601);
    assert_eq!(canary.cycle(&fx).await, (Action::Apply, Some(4)));

    // A host on another kernel build gets nothing.
    let mut c = canary.checkin();
    c.kernel = kernel(Some(OTHER_BUILD));
    let r = s.checkins().checkin(&canary.host, &c).await.unwrap();
    assert_eq!(r.action, Action::Revert);
    assert!(r.target.is_none());

    // The host's reports are kept, and state changes and reboots are audited.
    let mut c = canary.checkin();
    c.boot_id = "boot-2".into();
    c.applied = None;
    canary.host = s
        .enrollment()
        .authenticate_host(&canary.credential)
        .await
        .unwrap();
    s.checkins().checkin(&canary.host, &c).await.unwrap();
    let info = s.hosts().get(&fx.vic, &canary.host.id).await.unwrap();
    assert_eq!(info.boot_id.as_deref(), Some("boot-2"));
    assert_eq!(info.applied_level, None);
    let actions: Vec<String> = audit::recent(s.db(), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.iter().any(|a| a == "host.reboot"));
    assert!(actions.iter().filter(|a| *a == "host.applied").count() >= 5);
}

async fn replayed_and_revoked_checkins_are_refused(fx: Fixture) {
    let s = &fx.service;
    let mut agent = Agent::register(&fx, "canary").await;
    let c = agent.checkin();
    s.checkins().checkin(&agent.host, &c).await.unwrap();
    let host = s
        .enrollment()
        .authenticate_host(&agent.credential)
        .await
        .unwrap();
    let err = s.checkins().checkin(&host, &c).await.unwrap_err();
    assert!(matches!(err, Error::Replay { got: 1, last: 1 }), "{err}");
    // A stale view of the host (sequence read before another check-in landed) is refused too.
    let stale = host.clone();
    let c2 = agent.checkin();
    s.checkins().checkin(&host, &c2).await.unwrap();
    let mut c_old = c2.clone();
    c_old.sequence = 2;
    let err = s.checkins().checkin(&stale, &c_old).await.unwrap_err();
    assert_eq!(err.code(), "replayed_checkin");

    s.hosts()
        .revoke_host(&fx.admin, &agent.host.id)
        .await
        .unwrap();
    let err = s
        .enrollment()
        .authenticate_host(&agent.credential)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthenticated));
    // Failed host authentications are audited by kind, without the credential.
    s.enrollment()
        .authenticate_host("klh_guessed")
        .await
        .unwrap_err();
    s.enrollment()
        .authenticate_host("garbage")
        .await
        .unwrap_err();
    let failed: Vec<String> = audit::recent(s.db(), 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "auth.failed")
        .map(|e| {
            assert!(!e.detail.contains("klh_"), "{}", e.detail);
            e.subject
        })
        .collect();
    for kind in [
        "revoked host credential",
        "host credential",
        "malformed host credential",
    ] {
        assert!(failed.iter().any(|k| k == kind), "{kind}: {failed:?}");
    }
}

async fn host_reads_only_its_channels_releases(fx: Fixture) {
    let s = &fx.service;
    let stable = Agent::register(&fx, "stable").await;
    let canary = Agent::register(&fx, "canary").await;
    let (m, ko) = publish(&fx, BUILD, 1).await;
    let got = s
        .delivery()
        .host_module(&canary.host, &build(BUILD), level(1))
        .await
        .unwrap();
    assert_eq!(got, ko);
    assert_eq!(
        s.delivery()
            .host_manifest(&canary.host, &build(BUILD), level(1))
            .await
            .unwrap(),
        m
    );
    let err = s
        .delivery()
        .host_module(&stable.host, &build(BUILD), level(1))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        "release_not_found",
        "stable hosts cannot read canary releases"
    );
    s.releases()
        .withdraw(&fx.alice, &build(BUILD), level(1), "bad")
        .await
        .unwrap();
    let err = s
        .delivery()
        .host_manifest(&canary.host, &build(BUILD), level(1))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        "release_not_found",
        "withdrawn releases are not served"
    );
}

async fn audit_verify_finds_the_first_altered_record(fx: Fixture) {
    let s = &fx.service;
    publish(&fx, BUILD, 1).await;
    s.releases()
        .withdraw(&fx.alice, &build(BUILD), level(1), "bad")
        .await
        .unwrap();
    let (_, records) = counts(&fx).await;
    assert!(records >= 7, "users, tokens, publish, withdraw are audited");
    let publish_seq: i64 =
        sqlx::query_scalar("SELECT seq FROM audit_log WHERE action = 'release.publish'")
            .fetch_one(&s.db().pool)
            .await
            .unwrap();

    sqlx::query("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = $1")
        .bind(publish_seq)
        .execute(&s.db().pool)
        .await
        .unwrap();
    let verdict = audit::verify(s.db()).await.unwrap();
    assert!(
        matches!(&verdict, Verdict::Broken { seq, .. } if *seq == publish_seq as u64),
        "{verdict:?}"
    );
    sqlx::query("UPDATE audit_log SET actor = 'user:alice' WHERE seq = $1")
        .bind(publish_seq)
        .execute(&s.db().pool)
        .await
        .unwrap();
    assert!(matches!(
        audit::verify(s.db()).await.unwrap(),
        Verdict::Intact { .. }
    ));

    sqlx::query("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)")
        .execute(&s.db().pool)
        .await
        .unwrap();
    let verdict = audit::verify(s.db()).await.unwrap();
    assert!(
        matches!(&verdict, Verdict::Broken { seq, .. } if *seq == records),
        "{verdict:?}"
    );
}

async fn concurrent_checkins_and_admin_writes_all_succeed(fx: Fixture) {
    let s = fx.service.clone();
    publish(&fx, BUILD, 1).await;
    let mut agents = Vec::new();
    for _ in 0..8 {
        agents.push(Agent::register(&fx, "canary").await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for mut agent in agents {
        let s = s.clone();
        tasks.spawn(async move {
            for round in 0..10u32 {
                agent.host = s.enrollment().authenticate_host(&agent.credential).await?;
                let mut c = agent.checkin();
                // Alternate reports so that half the check-ins write audit records.
                c.applied = (round % 2 == 0).then(|| AppliedReport {
                    level: level(1),
                    state: PatchState::Applied,
                });
                s.checkins().checkin(&agent.host, &c).await?;
            }
            Ok::<_, Error>(())
        });
    }
    for n in 2..=5 {
        let s = s.clone();
        let alice = fx.alice.clone();
        tasks.spawn(async move {
            let (m, ko) = release(BUILD, n);
            s.releases().publish_with_module(&alice, m, ko).await?;
            s.releases()
                .withdraw(&alice, &build(BUILD), level(n), "test")
                .await?;
            Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let (releases, records) = counts(&fx).await;
    assert_eq!(releases, 5);
    assert!(records > 40, "{records} audit records");
}

async fn failed_sign_ins_are_audited_at_most_once_a_minute(fx: Fixture) {
    let s = &fx.service;
    let failed = async || -> Vec<(String, serde_json::Value)> {
        audit::recent(s.db(), 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "auth.failed")
            .map(|e| (e.subject, serde_json::from_str(&e.detail).unwrap()))
            .collect()
    };
    for _ in 0..5 {
        let err = s
            .users()
            .authenticate_user("klu_guessed")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unauthenticated));
    }
    s.users()
        .authenticate_user("not-a-token")
        .await
        .unwrap_err();
    let records = failed().await;
    assert_eq!(
        records.len(),
        2,
        "one per kind within the minute: {records:?}"
    );
    assert!(records.contains(&(
        "api token".into(),
        serde_json::json!({"failures": 1, "window_secs": 60})
    )));
    assert!(records.contains(&(
        "malformed token".into(),
        serde_json::json!({"failures": 1, "window_secs": 60})
    )));

    s.clock().advance_secs(61);
    s.users()
        .authenticate_user("klu_guessed")
        .await
        .unwrap_err();
    let records = failed().await;
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[0],
        (
            "api token".into(),
            serde_json::json!({"failures": 5, "window_secs": 60})
        ),
        "the next record counts the failures it stood for"
    );
    // A valid token is not affected, and the chain holds.
    s.users()
        .authenticate_user(
            &s.users()
                .create_token(Some(&fx.admin), "alice")
                .await
                .unwrap()
                .token,
        )
        .await
        .unwrap();
    counts(&fx).await;
}

/// Servers started at once on a new PostgreSQL database both come up, with every migration
/// applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "test-postgres"),
    ignore = "PostgreSQL only: cargo xtask test runs it with --features test-postgres"
)]
async fn postgres_servers_starting_at_once_migrate_once() {
    let url = common::postgres_url().await;
    let opened =
        futures_util::future::join_all((0..4).map(|_| klive_server::store::db::Db::connect(&url)))
            .await;
    let mut versions = Vec::new();
    for db in opened {
        versions.push(db.unwrap().schema_version().await.unwrap());
    }
    assert!(
        versions.iter().all(|v| *v == versions[0] && *v >= 4),
        "{versions:?}"
    );
    let db = klive_server::store::db::Db::connect(&url).await.unwrap();
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(applied, (1..=versions[0]).collect::<Vec<_>>());
}

/// A database made before sqlx's migrator (its migrations listed in `klive_schema`) opens
/// without running them again, keeps its data, and gets the newer migrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_the_old_runner_is_adopted() {
    use sqlx::Executor;
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("klive.db").display()
    );
    sqlx::any::install_default_drivers();
    {
        // What the old runner left: the first two migrations and its own bookkeeping.
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        pool.execute(
            "CREATE TABLE klive_schema (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .await
        .unwrap();
        for (version, sql) in [
            (1, include_str!("../../migrations/0001_init.sql")),
            (2, include_str!("../../migrations/0002_tuf.sql")),
        ] {
            pool.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
            sqlx::query("INSERT INTO klive_schema (version, name, applied_at) VALUES ($1, 'm', 0)")
                .bind(version)
                .execute(&pool)
                .await
                .unwrap();
        }
        sqlx::query("INSERT INTO channels (name, position, min_soak_secs) VALUES ('legacy', 9, 0)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let service = klive_server::open(dir.path(), None).await.unwrap();
    assert_eq!(
        service.db().schema_version().await.unwrap(),
        klive_server::store::db::latest_schema_version()
    );
    let channels = service.channels().list().await.unwrap();
    assert!(channels.iter().any(|c| c.name == "legacy"), "{channels:?}");
    drop(service);
    // Opening again changes nothing.
    let again = klive_server::open(dir.path(), None).await.unwrap();
    assert_eq!(
        again.db().schema_version().await.unwrap(),
        klive_server::store::db::latest_schema_version()
    );
}
