//! Defects found by abuse testing (issue 12): approval trail, idempotent revocation, search
//! wildcards, negative filters and refused privileged actions, on SQLite and PostgreSQL.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use klive_format::api::{PromoteRequest, Promotion, PromotionStatus};
use klive_server::http::api;
use klive_server::store::audit;
use serde_json::Value;
use tower::ServiceExt;

use crate::common::{
    Fixture, build, cookie_pair, enroll_token, get_page, kernel, level, post_form, promote_to,
    publish_as, register, set_cookie, user_token,
};

backend_tests!(
    superseded_promotion_reads_as_superseded_and_is_audited,
    revoking_a_revoked_host_is_idempotent,
    search_wildcards_match_only_themselves,
    negative_filters_are_refused,
    maker_checker_refusals_are_audited_at_most_once_a_minute,
    a_sequence_far_ahead_of_the_clock_is_refused_and_locks_nothing,
    taint_and_error_changes_are_audited_at_most_once_a_minute_per_host,
    releases_every_agent_would_refuse_are_refused_on_publish,
    dot_names_and_control_characters_are_refused_everywhere,
);

/// Sends one API request as the holder of `token`; the status and the JSON body.
async fn call(fx: &Fixture, method: Method, path: &str, token: &str) -> (StatusCode, Value) {
    call_json(fx, method, path, token, serde_json::json!({})).await
}

/// [`call`] with a JSON body.
async fn call_json(
    fx: &Fixture,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = api::router(fx.service.clone()).oneshot(req).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn audit_actions(fx: &Fixture, action: &str) -> Vec<klive_format::api::AuditEntry> {
    audit::recent(fx.service.db(), 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == action)
        .collect()
}

/// Carol publishes level 1 and asks for it in stable: a promotion pending a second approver.
async fn carol_publishes_and_asks_for_stable(fx: &Fixture) -> Promotion {
    publish_as(fx, &fx.carol, crate::common::BUILD, 1).await;
    fx.service
        .promotions()
        .promote(
            &fx.carol,
            &build(crate::common::BUILD),
            level(1),
            &promote_to("stable"),
        )
        .await
        .unwrap()
}

async fn superseded_promotion_reads_as_superseded_and_is_audited(fx: Fixture) {
    let s = &fx.service;
    let pending = carol_publishes_and_asks_for_stable(&fx).await;
    assert_eq!(pending.status, PromotionStatus::Pending);
    let emergency = s
        .promotions()
        .promote(
            &fx.bob,
            &build(crate::common::BUILD),
            level(1),
            &PromoteRequest {
                to: "stable".into(),
                emergency: true,
                reason: Some("actively exploited".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(emergency.status, PromotionStatus::EmergencyUnapproved);

    let read = s.promotions().get(&pending.id).await.unwrap();
    assert_eq!(read.status, PromotionStatus::Superseded, "{read:?}");
    assert_eq!(read.approved_by, None);
    assert_eq!(read.approved_at, None);
    assert_eq!(
        serde_json::to_value(read.status).unwrap(),
        serde_json::json!("superseded")
    );
    let listed = s.promotions().list().await.unwrap();
    let listed = listed.iter().find(|p| p.id == pending.id).unwrap();
    assert_eq!(listed.status, PromotionStatus::Superseded);

    let records: Vec<serde_json::Value> = audit::recent(s.db(), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "promotion.superseded")
        .map(|e| serde_json::from_str(&e.detail).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["promotion"], serde_json::json!(pending.id));
    assert_eq!(records[0]["superseded_by"], serde_json::json!(emergency.id));
    assert!(matches!(
        audit::verify(s.db()).await.unwrap(),
        audit::Verdict::Intact { .. }
    ));
}

async fn revoking_a_revoked_host_is_idempotent(fx: Fixture) {
    let token = enroll_token(&fx, "canary", 3600, 1).await;
    let host = register(&fx.service, &token, "web-1", kernel(None), "0.1.0").await;
    let admin = user_token(&fx, "admin").await;
    let path = format!("/api/v1/hosts/{}/revoke", host.host_id);
    let (status, first) = call(&fx, Method::POST, &path, &admin).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(first["revoked_at"].is_string(), "{first}");
    fx.service.clock().advance_secs(60);
    let (status, again) = call(&fx, Method::POST, &path, &admin).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "revoking again answers the host: {again}"
    );
    assert_eq!(
        again, first,
        "the host as it is: revoked when first revoked"
    );
    assert_eq!(
        audit_actions(&fx, "host.revoke").await.len(),
        1,
        "one record"
    );
    let (status, body) = call(&fx, Method::POST, "/api/v1/hosts/nosuchhost/revoke", &admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

async fn search_wildcards_match_only_themselves(fx: Fixture) {
    use klive_server::store::{audit_search, host_list};
    let token = enroll_token(&fx, "canary", 3600, 4).await;
    for name in ["a_b", "axb", "a%b"] {
        register(&fx.service, &token, name, kernel(None), "0.1.0").await;
    }
    let found = |search: &'static str| {
        let fx = &fx;
        async move {
            let f = host_list::HostFilter {
                search: search.into(),
                limit: 100,
                ..Default::default()
            };
            let mut names: Vec<String> = host_list::page(fx.service.db(), &f)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.hostname)
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(found("a_b").await, ["a_b"]);
    assert_eq!(found("a%b").await, ["a%b"]);
    assert_eq!(found("%").await, ["a%b"]);
    assert_eq!(found("_").await, ["a_b"]);
    assert_eq!(found("b").await, ["a%b", "a_b", "axb"]);

    // Audit search by prefix: `host_` is not `host.`, `%` is not everything.
    let admin = user_token(&fx, "admin").await;
    let host = register(&fx.service, &token, "web-9", kernel(None), "0.1.0").await;
    let path = format!("/api/v1/hosts/{}/revoke", host.host_id);
    assert_eq!(
        call(&fx, Method::POST, &path, &admin).await.0,
        StatusCode::OK
    );
    let search = |actor: &'static str, action: &'static str| {
        let fx = &fx;
        async move {
            audit_search::search(fx.service.db(), i64::MAX, actor, action, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.action)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        search("", "host.r").await[..2],
        ["host.revoke", "host.register"]
    );
    assert_eq!(search("", "host_").await, Vec::<String>::new());
    assert_eq!(search("", "%").await, Vec::<String>::new());
    assert_eq!(search("_", "").await, Vec::<String>::new());
}

/// A dashboard router and the session cookie of `user` signed in to it.
async fn dashboard_as(fx: &Fixture, user: &str) -> (axum::Router, String, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let router = klive_server::http::dashboard::router(fx.service.clone(), data.path().into());
    let token = user_token(fx, user).await;
    let login = get_page(&router, "/ui/login", None).await;
    let login_cookie = cookie_pair(&set_cookie(&login));
    let csrf = login_cookie.split_once('=').unwrap().1.to_owned();
    let signed_in = post_form(
        &router,
        "/ui/login",
        &login_cookie,
        format!("token={token}&csrf={csrf}"),
    )
    .await;
    let cookie = cookie_pair(&set_cookie(&signed_in));
    (router, cookie, data)
}

async fn page_text(response: axum::response::Response) -> (StatusCode, String) {
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn negative_filters_are_refused(fx: Fixture) {
    let (router, cookie, _data) = dashboard_as(&fx, "vic").await;
    let (status, body) = page_text(get_page(&router, "/ui/hosts", Some(&cookie)).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (query, says) in [
        ("uptime_days=-1", "0 or more"),
        ("uptime_days=999999999999999999", "days"),
        ("level=-3", "0 or more"),
    ] {
        let (status, body) =
            page_text(get_page(&router, &format!("/ui/hosts?{query}"), Some(&cookie)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }
    let (status, body) =
        page_text(get_page(&router, "/ui/audit?before=-5", Some(&cookie)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("0 or more"), "{body}");
    let (status, body) =
        page_text(get_page(&router, "/ui/hosts?uptime_days=0&level=0", Some(&cookie)).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let vic = user_token(&fx, "vic").await;
    let (status, body) = call(&fx, Method::GET, "/api/v1/hosts?limit=-1", &vic).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

async fn maker_checker_refusals_are_audited_at_most_once_a_minute(fx: Fixture) {
    // Approving your own promotion is refused and recorded, once a minute per user and action.
    let s = &fx.service;
    let pending = carol_publishes_and_asks_for_stable(&fx).await;
    for _ in 0..2 {
        let err = s
            .promotions()
            .approve(&fx.carol, &pending.id)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "maker_checker");
    }
    let refused = audit_actions(&fx, "promotion.refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].actor, "user:carol");
    assert_eq!(refused[0].subject, pending.id);
    let detail: Value = serde_json::from_str(&refused[0].detail).unwrap();
    assert_eq!(detail["action"], "promotion.approve", "{detail}");
    assert!(
        detail["reason"]
            .as_str()
            .unwrap()
            .contains("different approver"),
        "{detail}"
    );
    assert_eq!(detail["refusals"], 1, "{detail}");
    assert_eq!(detail["code"], "maker_checker", "{detail}");

    s.clock().advance_secs(61);
    let err = s
        .promotions()
        .approve(&fx.carol, &pending.id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "maker_checker");
    let refused = audit_actions(&fx, "promotion.refused").await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    let detail: Value = serde_json::from_str(&refused[0].detail).unwrap();
    assert_eq!(
        detail["refusals"], 2,
        "the one held back and this one: {detail}"
    );
    // The promotion itself is unchanged and a different approver can still approve it.
    assert_eq!(
        s.promotions().get(&pending.id).await.unwrap().status,
        PromotionStatus::Pending
    );
    assert!(matches!(
        audit::verify(s.db()).await.unwrap(),
        audit::Verdict::Intact { .. }
    ));
}

/// A check-in of a host without a build-id, with this taint and error.
fn report(sequence: u64, taint: Option<u64>, error: Option<&str>) -> klive_format::api::CheckIn {
    klive_format::api::CheckIn {
        sequence,
        kernel: kernel(None),
        applied: None,
        uptime_secs: 100,
        boot_id: "boot-1".into(),
        agent_version: "0.1.0".into(),
        last_error: error.map(str::to_owned),
        taint,
    }
}

/// Sequences are the agent's clock in milliseconds: one far ahead of the server's clock would
/// make every later honest check-in a replay until the host registers again.
async fn a_sequence_far_ahead_of_the_clock_is_refused_and_locks_nothing(fx: Fixture) {
    let token = enroll_token(&fx, "canary", 3600, 1).await;
    let (_, host) = crate::common::register_and_authenticate(
        &fx.service,
        &token,
        "web-1",
        kernel(None),
        "0.1.0",
    )
    .await;
    let checkin = |sequence: u64| report(sequence, None, None);
    let now = fx.service.now() as u64;
    for far in [i64::MAX as u64, now + 2 * 86_400_000] {
        let err = fx
            .service
            .checkins()
            .checkin(&host, &checkin(far))
            .await
            .unwrap_err();
        assert!(
            matches!(err, klive_server::error::Error::BadRequest(ref m) if m.contains("clock")),
            "{err:?}"
        );
    }
    // The host's next honest check-in (its clock now) is accepted: it is not locked out.
    fx.service
        .checkins()
        .checkin(&host, &checkin(now))
        .await
        .unwrap();
    // A little ahead (a host clock a few minutes fast) is fine.
    fx.service
        .checkins()
        .checkin(&host, &checkin(now + 5 * 60_000))
        .await
        .unwrap();
}

/// A host whose taint or error flips at every check-in must not flood the audit log: one
/// record per host and kind a minute, carrying how many changes it stands for. The host's
/// row always shows the latest value.
async fn taint_and_error_changes_are_audited_at_most_once_a_minute_per_host(fx: Fixture) {
    let token = enroll_token(&fx, "canary", 3600, 1).await;
    let (registered, mut host) = crate::common::register_and_authenticate(
        &fx.service,
        &token,
        "web-1",
        kernel(None),
        "0.1.0",
    )
    .await;
    let checkin =
        |sequence: u64, taint: u64, error: &str| report(sequence, Some(taint), Some(error));
    for n in 1..=50u64 {
        fx.service
            .checkins()
            .checkin(&host, &checkin(n, n, &format!("error {n}")))
            .await
            .unwrap();
        host = fx
            .service
            .enrollment()
            .authenticate_host(&registered.credential)
            .await
            .unwrap();
        fx.service.clock().advance_secs(1);
    }
    let taints = audit_actions(&fx, "host.taint").await;
    let errors = audit_actions(&fx, "host.update_failed").await;
    assert_eq!(taints.len(), 1, "{taints:?}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    // A minute on, the next change is recorded with the count of those in between.
    fx.service.clock().advance_secs(60);
    fx.service
        .checkins()
        .checkin(&host, &checkin(51, 51, "error 51"))
        .await
        .unwrap();
    let taints = audit_actions(&fx, "host.taint").await;
    assert_eq!(taints.len(), 2, "{taints:?}");
    assert!(
        taints[0].detail.contains("\"changes\":50"),
        "{}",
        taints[0].detail
    );
    let host = fx
        .service
        .enrollment()
        .authenticate_host(&registered.credential)
        .await
        .unwrap();
    assert_eq!(host.taint, Some(51), "the row shows the latest taint");
    assert_eq!(host.last_error.as_deref(), Some("error 51"));
}

/// What the agent checks before it loads a module is checked on publish: a release no host
/// can load never reaches a channel.
async fn releases_every_agent_would_refuse_are_refused_on_publish(fx: Fixture) {
    use crate::common::{manifest_for, module_builder};
    let build_id = "0123456789abcdef0123456789abcdef01234567";
    let publish = |m: klive_format::release::ReleaseManifest, ko: Vec<u8>| {
        let s = fx.service.clone();
        let alice = fx.alice.clone();
        async move {
            s.releases()
                .publish_with_module(&alice, m, bytes::Bytes::from(ko))
                .await
        }
    };
    let name = "klive_refused_l1";
    // Not a livepatch module.
    let ko = module_builder(name, 1, build_id)
        .without("livepatch")
        .build();
    let err = publish(manifest_for(build_id, 1, name, &ko), ko)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("livepatch=Y"), "{err}");
    // Built for another kernel release than its manifest names.
    let ko = module_builder(name, 1, build_id)
        .without("vermagic")
        .vermagic("6.12.117+deb12-amd64 SMP preempt mod_unload modversions ")
        .build();
    let err = publish(manifest_for(build_id, 1, name, &ko), ko)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            klive_server::error::Error::ModinfoMismatch {
                tag: "vermagic",
                ..
            }
        ),
        "{err}"
    );
    // An architecture klive does not patch.
    let ko = module_builder(name, 1, build_id).build();
    let mut m = manifest_for(build_id, 1, name, &ko);
    m.kernel.arch = "aarch64".into();
    let err = publish(m, ko).await.unwrap_err();
    assert!(err.to_string().contains("x86_64"), "{err}");
    // Nothing of it was kept; the good module publishes.
    let ko = module_builder(name, 1, build_id).build();
    publish(manifest_for(build_id, 1, name, &ko), ko)
        .await
        .unwrap();
}

/// Names that become directories on hosts, and text that reaches terminals, CSV exports and
/// the dashboard, are checked the same way by every entry point; a refusal spends nothing.
async fn dot_names_and_control_characters_are_refused_everywhere(fx: Fixture) {
    let admin = user_token(&fx, "admin").await;
    for name in [".", "..", ".hidden"] {
        let body = serde_json::json!({"name": name});
        let (status, answer) = call_json(&fx, Method::POST, "/api/v1/channels", &admin, body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "channel {name:?}: {answer}"
        );
    }
    // A host reporting an escape sequence in its kernel release: refused before its token
    // is spent, so it registers once it reports plain text.
    let token = enroll_token(&fx, "canary", 3600, 1).await;
    let mut k = kernel(None);
    k.release = "6.1.0-57-amd64\u{1b}[2J".into();
    let req = klive_format::api::RegisterRequest {
        enrollment_token: token.clone(),
        hostname: "web-1".into(),
        kernel: k,
        agent_version: "0.1.0".into(),
    };
    let err = fx.service.enrollment().register(&req).await.unwrap_err();
    assert!(err.to_string().contains("U+001B"), "{err}");
    let (registered, host) = crate::common::register_and_authenticate(
        &fx.service,
        &token,
        "web-1",
        kernel(None),
        "0.1.0",
    )
    .await;
    assert!(!registered.credential.is_empty());
    // The same in a check-in and in a manifest.
    let mut c = report(1, None, None);
    c.agent_version = "0.1\u{0}".into();
    let err = fx.service.checkins().checkin(&host, &c).await.unwrap_err();
    assert!(err.to_string().contains("agent version"), "{err}");
    let (mut m, ko) = crate::common::release("0123456789abcdef0123456789abcdef01234567", 1);
    m.fixes[0].summary = "fix\u{1b}]0;owned\u{7}".into();
    let err = fx
        .service
        .releases()
        .publish_with_module(&fx.alice, m, ko)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_manifest", "{err}");
}
