//! The HTTP API through `tower::ServiceExt::oneshot`: status codes, JSON errors, limits, auth,
//! and the agent's whole path (register, check in, download), on SQLite and PostgreSQL.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use klive_format::api::{Action, CheckInResponse, ErrorBody, RegisterResponse};
use klive_server::http::api::{self, JSON_LIMIT, OPENAPI, ROUTES};

use crate::common::{
    BUILD, Fixture, cookie_pair, enroll_token, get_page, kernel, post_form, publish, register,
    release, set_cookie, user_token,
};

backend_tests!(
    agent_path_over_http,
    errors_are_json_with_stable_codes,
    roles_are_enforced_over_http
);

struct Client {
    router: Router,
}

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl Reply {
    /// Asserts a 200 answer, showing the body otherwise.
    #[track_caller]
    fn assert_ok(&self) {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn error_code(&self) -> String {
        let e: ErrorBody = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an error body ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        });
        assert!(!e.error.message.is_empty());
        e.error.code
    }
}

impl Client {
    fn new(fx: &Fixture) -> Client {
        Client {
            router: api::router(fx.service.clone()),
        }
    }

    async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Body) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let response = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Reply { status, body }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(Method::GET, path, token, Body::empty()).await
    }

    /// A check-in `body` sent with the host credential `credential`.
    async fn post_checkin(&self, credential: &str, body: Value) -> Reply {
        self.post("/api/v1/checkin", Some(credential), body).await
    }

    /// Publishes `manifest` with the API token `token`.
    async fn post_manifest(
        &self,
        token: &str,
        manifest: &klive_format::release::ReleaseManifest,
    ) -> Reply {
        self.post(
            "/api/v1/releases",
            Some(token),
            serde_json::to_value(manifest).unwrap(),
        )
        .await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send(Method::POST, path, token, Body::from(body.to_string()))
            .await
    }
}

async fn agent_path_over_http(fx: Fixture) {
    let c = Client::new(&fx);
    let alice = user_token(&fx, "alice").await;
    let admin = user_token(&fx, "admin").await;
    let (manifest, ko) = release(BUILD, 1);

    // Publish: module first, then the manifest that names it.
    let r = c
        .send(
            Method::POST,
            "/api/v1/blobs",
            Some(&alice),
            Body::from(ko.clone()),
        )
        .await;
    r.assert_ok();
    assert_eq!(r.json()["sha256"], manifest.module.sha256);
    let r = c.post_manifest(&alice, &manifest).await;
    r.assert_ok();
    assert_eq!(r.json()["channels"][0]["channel"], "canary");

    // Enroll and register a host.
    let r = c
        .post(
            "/api/v1/enroll-tokens",
            Some(&admin),
            json!({"channel": "canary", "expires_in_secs": 600, "max_uses": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let enroll = r.json()["token"].as_str().unwrap().to_owned();
    let reg = json!({"enrollment_token": enroll, "hostname": "web-1", "kernel": kernel(Some(BUILD)), "agent_version": "0.1.0"});
    let r = c.post("/api/v1/register", None, reg.clone()).await;
    assert_eq!(r.status, StatusCode::OK);
    let host: RegisterResponse = serde_json::from_slice(&r.body).unwrap();
    let r = c.post("/api/v1/register", None, reg).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::UNAUTHORIZED, "enrollment_token_invalid")
    );

    // Check in: apply level 1, download and compare.
    let checkin = |seq: u64, applied: Value| json!({"sequence": seq, "kernel": kernel(Some(BUILD)), "applied": applied, "uptime_secs": 10, "boot_id": "b1", "agent_version": "0.1.0"});
    let r = c
        .post_checkin(&host.credential, checkin(1, Value::Null))
        .await;
    r.assert_ok();
    let answer: CheckInResponse = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer.action, Action::Apply);
    let target = answer.target.unwrap();
    let r = c.get(&target.module_path, Some(&host.credential)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, ko.to_vec());
    let r = c.get(&target.manifest_path, Some(&host.credential)).await;
    assert_eq!(
        serde_json::from_slice::<klive_format::release::ReleaseManifest>(&r.body).unwrap(),
        manifest
    );

    let r = c
        .post_checkin(
            &host.credential,
            checkin(2, json!({"level": 1, "state": "applied"})),
        )
        .await;
    assert_eq!(r.json()["action"], "none");
    let r = c
        .post_checkin(
            &host.credential,
            checkin(2, json!({"level": 1, "state": "applied"})),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::CONFLICT, "replayed_checkin")
    );

    // A user token is not a host credential and vice versa.
    let r = c
        .post("/api/v1/checkin", Some(&alice), checkin(3, Value::Null))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = c.get("/api/v1/releases", Some(&host.credential)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = c.get("/api/v1/hosts?limit=abc", Some(&admin)).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let r = c.get("/api/v1/hosts?limit=10", Some(&admin)).await;
    assert_eq!(r.json()[0]["id"], host.host_id.as_str());

    // Admins see the host's report.
    let r = c
        .get(&format!("/api/v1/hosts/{}", host.host_id), Some(&admin))
        .await;
    assert_eq!(r.json()["applied_level"], 1);
    assert_eq!(r.json()["applied_state"], "applied");
}

async fn errors_are_json_with_stable_codes(fx: Fixture) {
    let c = Client::new(&fx);
    let alice = user_token(&fx, "alice").await;

    let r = c.get("/api/v1/health", None).await;
    assert_eq!(r.json()["status"], "ok");
    let r = c.get("/api/v1/nope", None).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "no_such_route")
    );
    let r = c
        .send(
            Method::DELETE,
            "/api/v1/releases",
            Some(&alice),
            Body::empty(),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let r = c.get("/api/v1/releases", None).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let r = c.get("/api/v1/releases", Some("klu_0123")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Malformed, oversized and invalid bodies.
    let r = c
        .send(
            Method::POST,
            "/api/v1/releases",
            Some(&alice),
            Body::from("{not json"),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let big = json!({"reason": "x".repeat(JSON_LIMIT + 1)});
    let r = c
        .post(
            &format!("/api/v1/releases/{BUILD}/1/withdraw"),
            Some(&alice),
            big,
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    let r = c.get("/api/v1/releases/xyz/1", Some(&alice)).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let r = c
        .get(&format!("/api/v1/releases/{BUILD}/0"), Some(&alice))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "level 0 does not exist");
    let r = c
        .get(&format!("/api/v1/releases/{BUILD}/9"), Some(&alice))
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "release_not_found")
    );
    let (mut manifest, _) = release(BUILD, 1);
    manifest.format = 99;
    let r = c.post_manifest(&alice, &manifest).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_manifest")
    );

    // A module tampered with on the server's disk is refused, without internals in the message.
    let (manifest, _) = publish(&fx, BUILD, 2).await;
    let t = enroll_token(&fx, "canary", 60, 1).await;
    let reg = register(&fx.service, &t, "h", kernel(Some(BUILD)), "0").await;
    if let Some(dir) = fx.blob_dir() {
        let sha = &manifest.module.sha256;
        let path = dir.join("sha256").join(&sha[..2]).join(sha);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let r = c
            .get(
                &format!("/api/v1/host/releases/{BUILD}/2/module"),
                Some(&reg.credential),
            )
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "blob_corrupt")
        );
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            !text.contains(&dir.display().to_string()) && !text.contains(sha.as_str()),
            "{text}"
        );
    }
}

async fn roles_are_enforced_over_http(fx: Fixture) {
    let c = Client::new(&fx);
    let vic = user_token(&fx, "vic").await;
    let alice = user_token(&fx, "alice").await;
    let r = c
        .send(Method::POST, "/api/v1/blobs", Some(&vic), Body::from("x"))
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let r = c
        .post(
            "/api/v1/users",
            Some(&alice),
            json!({"name": "eve", "role": "admin"}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a publisher cannot make admins"
    );
    let r = c
        .post(
            "/api/v1/users",
            Some(&alice),
            json!({"name": "eve", "role": "root"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Revoked tokens stop working at once.
    let admin = user_token(&fx, "admin").await;
    let r = c
        .post("/api/v1/users/vic/tokens/revoke", Some(&alice), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = c.get("/api/v1/fleet", Some(&vic)).await;
    assert_eq!(r.json()["hosts"], 0);
    let vic2 = user_token(&fx, "vic").await;
    let r = c
        .post("/api/v1/users/vic/tokens/revoke", Some(&admin), json!({}))
        .await;
    assert_eq!(r.json()["revoked"], 2);
    let r = c.get("/api/v1/fleet", Some(&vic2)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let vic = user_token(&fx, "vic").await;
    let r = c.get("/api/v1/audit", Some(&vic)).await;
    assert_eq!(r.status, StatusCode::OK);
    let entries = r.json();
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "user.add")
    );
}

#[test]
fn openapi_document_lists_exactly_the_served_routes() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    // Every schema reference resolves.
    let text = OPENAPI;
    for part in text.split("\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "missing schema {name}"
        );
    }
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let fx = Fixture::sqlite().await;
    let c = Client::new(&fx);
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{build_id}", BUILD)
            .replace("{level}", "1")
            .replace("{id}", "x")
            .replace("{name}", "alice");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = c
            .send(method.clone(), &concrete, None, Body::from("{}"))
            .await;
        let code = if r.status.is_success() {
            String::new()
        } else {
            r.error_code()
        };
        assert!(
            code != "no_such_route" && code != "method_not_allowed",
            "{method} {path} is documented but not served ({code})"
        );
    }
}

/// Every dashboard cookie (sign-in form, session, sign-out) carries `Secure` when the
/// dashboard is served over HTTPS, and not over plain HTTP (where a browser would drop it).
#[tokio::test]
async fn dashboard_cookies_are_secure_over_https() {
    let fx = Fixture::sqlite().await;
    let token = user_token(&fx, "vic").await;
    let data = fx.dir().unwrap().to_path_buf();
    for https in [true, false] {
        let dash = klive_server::http::dashboard::Dashboard::new(fx.service.clone(), data.clone())
            .over_https(https);
        let router = klive_server::http::dashboard::dashboard_router(dash);
        let form = get_page(&router, "/ui/login", None).await;
        let login_cookie = set_cookie(&form);
        let csrf_cookie = cookie_pair(&login_cookie);
        let csrf = csrf_cookie.split_once('=').unwrap().1.to_owned();
        let signed_in = post_form(
            &router,
            "/ui/login",
            &csrf_cookie,
            format!("token={token}&csrf={csrf}"),
        )
        .await;
        assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
        let session_cookie = set_cookie(&signed_in);
        assert!(session_cookie.starts_with("klive_session=kls_"));
        let session = cookie_pair(&session_cookie);
        // The session's CSRF token is in the page's forms.
        let page = get_page(&router, "/ui/", Some(&session)).await;
        assert_eq!(page.status(), StatusCode::OK);
        let body = axum::body::to_bytes(page.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        let csrf = body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a form with the CSRF token")
            .to_owned();
        let signed_out = post_form(&router, "/ui/logout", &session, format!("csrf={csrf}")).await;
        let logout_cookie = set_cookie(&signed_out);
        assert!(logout_cookie.contains("Max-Age=0"), "{logout_cookie}");
        for c in [&login_cookie, &session_cookie, &logout_cookie] {
            let attrs: Vec<&str> = c.split(';').map(str::trim).collect();
            assert!(attrs.contains(&"HttpOnly"), "{c}");
            assert_eq!(attrs.contains(&"Secure"), https, "{c}");
        }
    }
}
