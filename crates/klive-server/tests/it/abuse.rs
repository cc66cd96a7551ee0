//! Defects found by abuse testing (issue 12): approval trail, idempotent revocation, search
//! wildcards, negative filters and refused privileged actions, on SQLite and PostgreSQL.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use klive_format::api::{PromoteRequest, PromotionStatus};
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
);

/// Sends one API request as the holder of `token`; the status and the JSON body.
async fn call(fx: &Fixture, method: Method, path: &str, token: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
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

async fn superseded_promotion_reads_as_superseded_and_is_audited(fx: Fixture) {
    let s = &fx.service;
    publish_as(&fx, &fx.carol, crate::common::BUILD, 1).await;
    let pending = s
        .promotions()
        .promote(
            &fx.carol,
            &build(crate::common::BUILD),
            level(1),
            &promote_to("stable"),
        )
        .await
        .unwrap();
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
