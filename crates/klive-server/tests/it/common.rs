//! Shared test fixtures: a fresh service on the backends of this run (SQLite and local blobs,
//! or PostgreSQL and S3 with the `test-postgres` / `test-s3` features), users of every role,
//! modules with modinfo tags.
#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "test fixtures used by several test modules"
)]

use axum::body::Body;
use axum::http::{Request, header};
use axum::response::Response;
use bytes::Bytes;
use klive_format::api::{
    EnrollTokenRequest, PromoteRequest, Promotion, RegisterRequest, RegisterResponse, Role,
};
use klive_format::release::ReleaseManifest;
use klive_format::status::KernelInfo;
use klive_format::{BuildId, PatchLevel, modinfo};
use klive_server::Service;
use klive_server::domain::{AuthHost, AuthUser};
use klive_server::evidence::cve::{Cves, ImportSummary, Source};
use klive_server::store::blobs::Blobs;
use klive_server::store::db::Db;
use klive_server::trust::secrets::new_id;
use klive_testkit::elf::ModuleBuilder;
use tower::ServiceExt;

pub const BUILD: &str = "3e0c8f6a1b2c4d5e";
pub const OTHER_BUILD: &str = "aaaabbbbccccdddd";

/// Runs each listed async test body on the backends of this run (see [`Fixture::new`]): SQLite
/// and local blobs in a plain `cargo test`; PostgreSQL and S3 when `cargo xtask test` builds
/// the tests with the `test-postgres` and `test-s3` features. A backend that is not under test
/// is never reported as a passed test. Each invocation adds a module `on_backend` to the
/// calling module.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod on_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fx = $crate::common::Fixture::new().await;
                    super::$name(fx).await;
                }
            )*
        }
    };
}

/// The database this run tests: PostgreSQL with the `test-postgres` feature, else SQLite.
pub const BACKEND: &str = if cfg!(feature = "test-postgres") {
    "postgres"
} else {
    "sqlite"
};

pub struct Fixture {
    pub service: Service,
    pub admin: AuthUser,
    pub alice: AuthUser, // publisher
    pub bob: AuthUser,   // approver
    pub carol: AuthUser, // approver
    pub vic: AuthUser,   // viewer
    _dir: Option<tempfile::TempDir>,
    /// The blob store is the `blobs/` folder of the data directory (not S3).
    local_blobs: bool,
}

impl Fixture {
    pub async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite_dir(dir.path()).await.unwrap();
        let blobs = Blobs::local(&dir.path().join("blobs")).unwrap();
        Fixture::with(Service::new(db, blobs), Some(dir)).await
    }

    /// A service on the backends of this run: a fresh PostgreSQL database at
    /// `KLIVE_TEST_DATABASE_URL` with the `test-postgres` feature (else SQLite in a temporary
    /// directory), blobs under a fresh prefix of the bucket at `KLIVE_TEST_S3_URL` with the
    /// `test-s3` feature (else a local directory). A feature without its variable fails the
    /// test: nothing is skipped quietly.
    pub async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = if cfg!(feature = "test-postgres") {
            let url = postgres_url().await;
            Db::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL failed: {e}"))
        } else {
            Db::open_sqlite_dir(dir.path()).await.unwrap()
        };
        let blobs = if cfg!(feature = "test-s3") {
            s3_blobs()
        } else {
            Blobs::local(&dir.path().join("blobs")).unwrap()
        };
        let mut fx = Fixture::with(Service::new(db, blobs), Some(dir)).await;
        fx.local_blobs = !cfg!(feature = "test-s3");
        fx
    }

    async fn with(service: Service, dir: Option<tempfile::TempDir>) -> Fixture {
        let admin = service
            .users()
            .add_user(None, "admin", Role::Admin)
            .await
            .unwrap();
        let admin = service.users().user_by_name(&admin.name).await.unwrap();
        let make = async |name: &str, role| {
            service
                .users()
                .add_user(Some(&admin), name, role)
                .await
                .unwrap();
            service.users().user_by_name(name).await.unwrap()
        };
        let alice = make("alice", Role::Publisher).await;
        let bob = make("bob", Role::Approver).await;
        let carol = make("carol", Role::Approver).await;
        let vic = make("vic", Role::Viewer).await;
        Fixture {
            service,
            admin,
            alice,
            bob,
            carol,
            vic,
            _dir: dir,
            local_blobs: true,
        }
    }

    /// The data directory, for SQLite fixtures.
    pub fn blob_dir(&self) -> Option<std::path::PathBuf> {
        self.dir()
            .filter(|_| self.local_blobs)
            .map(|d| d.join("blobs"))
    }

    pub fn dir(&self) -> Option<&std::path::Path> {
        self._dir.as_ref().map(|d| d.path())
    }
}

/// The URL of a new empty database on the test PostgreSQL (`KLIVE_TEST_DATABASE_URL`, which
/// `cargo xtask test` sets for its `test-postgres` run; without it this panics).
pub async fn postgres_url() -> String {
    let url = std::env::var("KLIVE_TEST_DATABASE_URL").expect(
        "KLIVE_TEST_DATABASE_URL is unset: the test-postgres tests need a PostgreSQL (cargo xtask test starts one)",
    );
    fresh_database(&url).await
}

/// Blobs under a new prefix of the test bucket (`KLIVE_TEST_S3_URL`, `s3://BUCKET`, with
/// `AWS_ENDPOINT` and credentials in the environment; `cargo xtask test` starts moto for its
/// `test-s3` run). The prefix is per fixture because the bucket outlives the test.
pub fn s3_blobs() -> Blobs {
    let base = std::env::var("KLIVE_TEST_S3_URL").expect(
        "KLIVE_TEST_S3_URL is unset: the test-s3 tests need an S3 endpoint (cargo xtask test starts moto)",
    );
    let url = format!("{}/run-{}", base.trim_end_matches('/'), new_id().unwrap());
    klive_server::store::s3::blobs(&url).unwrap()
}

/// Creates an empty database next to the one in `url` and returns its URL.
async fn fresh_database(url: &str) -> String {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(url).await.unwrap_or_else(|e| {
        panic!("KLIVE_TEST_DATABASE_URL is set but connecting to {url} failed: {e}")
    });
    let name = format!("klive_test_{}", new_id().unwrap());
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap_or_else(|e| panic!("creating a test database on {url}: {e}"));
    admin.close().await;
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    format!("{base}/{name}{query}")
}

/// A module for `build` at `level` named `name`, written by klive-testkit's builder with the
/// `.modinfo` tags the server checks against a manifest: `license=GPL`, `name`, `klive_level`,
/// `klive_build_id`, `livepatch=Y` and the `vermagic` of [`kernel`]'s release, in this order.
pub fn module(name: &str, level: u32, build: &str) -> Vec<u8> {
    module_builder(name, level, build).build()
}

/// The builder of [`module`], for tests that change one tag.
pub fn module_builder(name: &str, level: u32, build: &str) -> ModuleBuilder {
    ModuleBuilder::empty()
        .tag("license", "GPL")
        .tag("name", name)
        .tag(modinfo::LEVEL, &level.to_string())
        .tag(modinfo::BUILD_ID, build)
        .tag("livepatch", "Y")
        .vermagic("6.1.0-56-amd64 SMP preempt mod_unload modversions ")
}

/// A module for `build` at `level` with matching tags, and its manifest.
pub fn release(build: &str, level: u32) -> (ReleaseManifest, Bytes) {
    let name = format!("klive_test_l{level}");
    let ko = module(&name, level, build);
    (manifest_for(build, level, &name, &ko), Bytes::from(ko))
}

pub fn manifest_for(build: &str, level: u32, name: &str, ko: &[u8]) -> ReleaseManifest {
    let mut m = klive_testkit::elf::manifest(build, "6.1.0-56-amd64", level, name, ko);
    m.kernel.distro = Some("debian".into());
    m
}

pub fn kernel(build: Option<&str>) -> KernelInfo {
    KernelInfo {
        release: "6.1.0-56-amd64".into(),
        version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2".into(),
        arch: "x86_64".into(),
        build_id: build.map(|b| b.parse::<BuildId>().unwrap()),
        package_version: Some("6.1.192-2".into()),
        distro: Some("Debian GNU/Linux 12 (bookworm)".into()),
    }
}

pub fn level(n: u32) -> PatchLevel {
    PatchLevel::new(n).unwrap()
}

pub fn build(b: &str) -> BuildId {
    b.parse().unwrap()
}

/// A request to promote into `channel`: not an emergency, no reason.
pub fn promote_to(channel: &str) -> PromoteRequest {
    PromoteRequest {
        to: channel.into(),
        emergency: false,
        reason: None,
    }
}

/// Publishes [`release`]`(build, level)` as `by`; returns that manifest and module.
pub async fn publish_as(
    fx: &Fixture,
    by: &AuthUser,
    build: &str,
    level: u32,
) -> (ReleaseManifest, Bytes) {
    let (m, ko) = release(build, level);
    fx.service
        .releases()
        .publish_with_module(by, m.clone(), ko.clone())
        .await
        .unwrap();
    (m, ko)
}

/// Publishes [`release`]`(build, level)` as alice (the publisher); returns that manifest and
/// module.
pub async fn publish(fx: &Fixture, build: &str, level: u32) -> (ReleaseManifest, Bytes) {
    publish_as(fx, &fx.alice, build, level).await
}

/// bob (an approver) promotes `build` at `level` into `channel`.
pub async fn promote_as_bob(fx: &Fixture, build: &str, level: u32, channel: &str) -> Promotion {
    fx.service
        .promotions()
        .promote(
            &fx.bob,
            &self::build(build),
            self::level(level),
            &promote_to(channel),
        )
        .await
        .unwrap()
}

/// An enrollment token into `channel` created by the admin.
pub async fn enroll_token(
    fx: &Fixture,
    channel: &str,
    expires_in_secs: u64,
    max_uses: u32,
) -> String {
    fx.service
        .enrollment()
        .create_enroll_token(
            &fx.admin,
            &EnrollTokenRequest {
                channel: channel.into(),
                expires_in_secs,
                max_uses,
            },
        )
        .await
        .unwrap()
        .token
}

/// Registers a host named `hostname` running `kernel` with `token`.
pub async fn register(
    s: &Service,
    token: &str,
    hostname: &str,
    kernel: KernelInfo,
    agent_version: &str,
) -> RegisterResponse {
    s.enrollment()
        .register(&RegisterRequest {
            enrollment_token: token.to_owned(),
            hostname: hostname.to_owned(),
            kernel,
            agent_version: agent_version.into(),
        })
        .await
        .unwrap()
}

/// Registers a host (see [`register`]) and authenticates it with its new credential.
pub async fn register_and_authenticate(
    s: &Service,
    token: &str,
    hostname: &str,
    kernel: KernelInfo,
    agent_version: &str,
) -> (RegisterResponse, AuthHost) {
    let r = register(s, token, hostname, kernel, agent_version).await;
    let auth = s
        .enrollment()
        .authenticate_host(&r.credential)
        .await
        .unwrap();
    (r, auth)
}

/// Imports a Debian changelog (`changelog`) as bob.
pub async fn import_changelog(fx: &Fixture, changelog: &str) -> ImportSummary {
    import_feed(
        fx,
        Source::DebianChangelog,
        "changelog",
        changelog.as_bytes(),
    )
    .await
}

/// Imports a CVE feed file as bob.
pub async fn import_feed(fx: &Fixture, source: Source, name: &str, bytes: &[u8]) -> ImportSummary {
    Cves::new(&fx.service)
        .import(&fx.bob, source, name, bytes)
        .await
        .unwrap()
}

/// A new API token of the user `name`, created by the system.
pub async fn user_token(fx: &Fixture, name: &str) -> String {
    fx.service
        .users()
        .create_token(None, name)
        .await
        .unwrap()
        .token
}

/// `GET path` on the dashboard `router`, sending `cookie` (none when `None`).
pub async fn get_page(router: &axum::Router, path: &str, cookie: Option<&str>) -> Response {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

/// A form `POST path` on the dashboard `router`: `cookie` and the url-encoded `form`.
pub async fn post_form(router: &axum::Router, path: &str, cookie: &str, form: String) -> Response {
    router
        .clone()
        .oneshot(
            Request::post(path)
                .header(header::COOKIE, cookie)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form))
                .unwrap(),
        )
        .await
        .unwrap()
}

/// The whole `Set-Cookie` header of `r`.
pub fn set_cookie(r: &Response) -> String {
    r.headers()[header::SET_COOKIE].to_str().unwrap().to_owned()
}

/// The `name=value` part of a `Set-Cookie` header: what a browser sends back.
pub fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// The UTC calendar date (`YYYY-MM-DD`) of a time in milliseconds since the epoch.
pub fn utc_date(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}
