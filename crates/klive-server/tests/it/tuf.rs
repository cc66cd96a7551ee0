//! The trust chain as an agent sees it: a `tough` client loads a channel's repository through
//! the HTTP API and must refuse tampered targets and metadata, unknown keys, rollback, freeze
//! and mix-and-match. Runs on SQLite and PostgreSQL.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tough::{
    IntoVec, RepositoryLoader, TargetName, Transport, TransportError, TransportErrorKind,
    TransportStream,
};
use tower::ServiceExt;
use url::Url;

use klive_format::api::{tuf_manifest_target, tuf_module_target};
use klive_server::Service;
use klive_server::trust::tuf::{Signer, init_keys, rotate};

use crate::common::{
    BUILD, Fixture, OTHER_BUILD, build, enroll_token, kernel, level, promote_as_bob, publish,
    register,
};

backend_tests!(
    agent_reads_verified_releases_of_its_channel,
    tampered_bytes_and_unknown_keys_are_refused,
    rollback_and_freeze_are_refused,
    root_rotation_is_followed_and_retired_keys_are_refused,
);

/// How the fake network treats a response.
#[derive(Clone, Debug)]
enum Mangle {
    None,
    /// Flip a byte of every response whose path contains this.
    Flip(&'static str),
    /// Answer this file with these bytes.
    Replace(&'static str, Arc<Vec<u8>>),
}

/// A `tough` transport that sends requests to the router in-process, with a host credential.
#[derive(Clone, Debug)]
struct RouterTransport {
    router: Router,
    credential: String,
    mangle: Mangle,
}

#[tough::async_trait]
impl Transport for RouterTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let request = Request::get(url.path())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.credential))
            .body(Body::empty())
            .map_err(|e| {
                TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e)
            })?;
        let response = self.router.clone().oneshot(request).await.map_err(|e| {
            TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e)
        })?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(TransportError::new(
                    TransportErrorKind::FileNotFound,
                    url.as_str(),
                ));
            }
            other => {
                return Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    url.as_str(),
                    format!("status {other}"),
                ));
            }
        }
        let mut body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map_err(|e| {
                TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e)
            })?
            .to_vec();
        match &self.mangle {
            Mangle::Flip(part) if url.path().contains(part) => {
                let i = body.len() / 2;
                body[i] ^= 0x01;
            }
            Mangle::Replace(part, bytes) if url.path().ends_with(part) => body = bytes.to_vec(),
            _ => {}
        }
        let item: Result<bytes::Bytes, TransportError> = Ok(body.into());
        Ok(Box::pin(futures_util::stream::iter([item])))
    }
}

struct Host {
    credential: String,
    channel: String,
}

async fn with_keys(fx: &mut Fixture, keys: &Path) {
    init_keys(keys, 3, 2, 365).await.unwrap();
    let signer = Signer::load(keys).unwrap();
    fx.service = fx.service.clone().with_signer(signer);
    fx.service.tuf_refresh(true).await.unwrap();
}

async fn host(s: &Service, fx: &Fixture, channel: &str) -> Host {
    let t = enroll_token(fx, channel, 60, 1).await;
    let r = register(s, &t, "h", kernel(Some(BUILD)), "0").await;
    Host {
        credential: r.credential,
        channel: r.channel,
    }
}

/// The module of `BUILD` at `level` as the host reads it from a fresh load of its channel
/// repository (`None` when the repository does not list it).
async fn module_in(
    s: &Service,
    h: &Host,
    root: &[u8],
    datastore: &Path,
    level: u32,
) -> Option<Vec<u8>> {
    let repo = load(s, h, root, datastore, Mangle::None).await.unwrap();
    read(&repo, &tuf_module_target(BUILD, level)).await.unwrap()
}

/// Loads the host's channel repository as the agent would, pinning `root`.
async fn load(
    s: &Service,
    h: &Host,
    root: &[u8],
    datastore: &Path,
    mangle: Mangle,
) -> Result<tough::Repository, tough::error::Error> {
    let base = format!("http://server/api/v1/tuf/{}/", h.channel);
    RepositoryLoader::new(
        &root.to_vec(),
        Url::parse(&format!("{base}metadata/")).unwrap(),
        Url::parse(&format!("{base}targets/")).unwrap(),
    )
    .transport(RouterTransport {
        router: klive_server::http::api::router(s.clone()),
        credential: h.credential.clone(),
        mangle,
    })
    .datastore(datastore.to_path_buf())
    .load()
    .await
}

async fn read(
    repo: &tough::Repository,
    name: &str,
) -> Result<Option<Vec<u8>>, tough::error::Error> {
    match repo.read_target(&TargetName::new(name).unwrap()).await? {
        Some(stream) => Ok(Some(stream.into_vec().await?)),
        None => Ok(None),
    }
}

fn store(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

async fn agent_reads_verified_releases_of_its_channel(mut fx: Fixture) {
    let dir = tempfile::tempdir().unwrap();
    with_keys(&mut fx, dir.path()).await;
    let s = fx.service.clone();
    let root = s.delivery().tuf_root().unwrap();
    let (m, ko) = publish(&fx, BUILD, 1).await;
    let canary = host(&s, &fx, "canary").await;
    let stable = host(&s, &fx, "stable").await;

    let repo = load(&s, &canary, &root, &store(dir.path(), "c"), Mangle::None)
        .await
        .unwrap();
    assert_eq!(
        read(&repo, &tuf_module_target(BUILD, 1))
            .await
            .unwrap()
            .unwrap(),
        ko.to_vec()
    );
    let manifest = read(&repo, &tuf_manifest_target(BUILD, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<klive_format::release::ReleaseManifest>(&manifest).unwrap(),
        m
    );

    // The stable channel's repository does not list the canary release.
    assert_eq!(
        module_in(&s, &stable, &root, &store(dir.path(), "s"), 1).await,
        None
    );
    // A host cannot read another channel's repository.
    let wrong = Host {
        credential: stable.credential.clone(),
        channel: "canary".into(),
    };
    assert!(
        load(&s, &wrong, &root, &store(dir.path(), "w"), Mangle::None)
            .await
            .is_err()
    );

    // Promotion adds the target to stable; withdrawal removes it everywhere.
    promote_as_bob(&fx, BUILD, 1, "stable").await;
    assert_eq!(
        module_in(&s, &stable, &root, &store(dir.path(), "s"), 1)
            .await
            .unwrap(),
        ko.to_vec()
    );
    s.releases()
        .withdraw(&fx.alice, &build(BUILD), level(1), "regression")
        .await
        .unwrap();
    assert_eq!(
        module_in(&s, &stable, &root, &store(dir.path(), "s"), 1).await,
        None
    );

    // Mix-and-match: a release for another build is listed under its own name only, and its
    // module served under this build's name fails verification.
    let (_, ko_other) = publish(&fx, OTHER_BUILD, 2).await;
    publish(&fx, BUILD, 2).await;
    assert_eq!(
        module_in(&s, &canary, &root, &store(dir.path(), "c"), 3).await,
        None
    );
    let swap = Mangle::Replace(".ko", Arc::new(ko_other.to_vec()));
    let repo = load(&s, &canary, &root, &store(dir.path(), "c"), swap)
        .await
        .unwrap();
    assert!(
        read(&repo, &tuf_module_target(BUILD, 2)).await.is_err(),
        "another build's module is refused"
    );
}

async fn tampered_bytes_and_unknown_keys_are_refused(mut fx: Fixture) {
    let dir = tempfile::tempdir().unwrap();
    with_keys(&mut fx, dir.path()).await;
    let s = fx.service.clone();
    let root = s.delivery().tuf_root().unwrap();
    publish(&fx, BUILD, 1).await;
    let h = host(&s, &fx, "canary").await;

    let repo = load(
        &s,
        &h,
        &root,
        &store(dir.path(), "a"),
        Mangle::Flip("/targets/"),
    )
    .await
    .unwrap();
    assert!(
        read(&repo, &tuf_module_target(BUILD, 1)).await.is_err(),
        "a flipped module byte is refused"
    );
    assert!(
        read(&repo, &tuf_manifest_target(BUILD, 1)).await.is_err(),
        "a flipped manifest byte is refused"
    );
    for file in ["timestamp.json", "snapshot.json", "targets.json"] {
        let r = load(&s, &h, &root, &store(dir.path(), file), Mangle::Flip(file)).await;
        assert!(r.is_err(), "tampered {file} is refused");
    }

    // Metadata signed by keys the pinned root does not know.
    let other = tempfile::tempdir().unwrap();
    init_keys(other.path(), 1, 1, 365).await.unwrap();
    let foreign_root = std::fs::read(other.path().join("tuf/root.json")).unwrap();
    let r = load(&s, &h, &foreign_root, &store(dir.path(), "f"), Mangle::None).await;
    assert!(r.is_err(), "metadata signed by unknown keys is refused");
}

async fn rollback_and_freeze_are_refused(mut fx: Fixture) {
    let dir = tempfile::tempdir().unwrap();
    with_keys(&mut fx, dir.path()).await;
    let s = fx.service.clone();
    let root = s.delivery().tuf_root().unwrap();
    let h = host(&s, &fx, "canary").await;
    let datastore = store(dir.path(), "d");
    load(&s, &h, &root, &datastore, Mangle::None).await.unwrap();
    let old_timestamp = Arc::new(
        s.delivery()
            .host_tuf_metadata(
                &s.enrollment()
                    .authenticate_host(&h.credential)
                    .await
                    .unwrap(),
                "canary",
                "timestamp.json",
            )
            .await
            .unwrap(),
    );
    publish(&fx, BUILD, 1).await;
    load(&s, &h, &root, &datastore, Mangle::None).await.unwrap();
    let r = load(
        &s,
        &h,
        &root,
        &datastore,
        Mangle::Replace("timestamp.json", old_timestamp),
    )
    .await;
    let err = r
        .expect_err("older metadata after newer was seen must be refused")
        .to_string();
    assert!(err.contains("version"), "{err}");

    // Freeze: metadata whose timestamp has expired is refused.
    s.clock().advance_secs(-2 * 86400);
    s.tuf_refresh(true).await.unwrap();
    s.clock().advance_secs(2 * 86400);
    let r = load(&s, &h, &root, &store(dir.path(), "fresh"), Mangle::None).await;
    let err = r
        .expect_err("expired timestamp must be refused")
        .to_string();
    assert!(err.to_lowercase().contains("expired"), "{err}");
}

async fn root_rotation_is_followed_and_retired_keys_are_refused(mut fx: Fixture) {
    let dir = tempfile::tempdir().unwrap();
    with_keys(&mut fx, dir.path()).await;
    let s = fx.service.clone();
    let pinned = s.delivery().tuf_root().unwrap();
    let (_, ko) = publish(&fx, BUILD, 1).await;
    let canary = host(&s, &fx, "canary").await;
    let datastore = store(dir.path(), "c");
    let repo = load(&s, &canary, &pinned, &datastore, Mangle::None)
        .await
        .unwrap();
    assert_eq!(repo.root().signed.version.get(), 1);

    let offline = dir.path().join("keys/offline");
    let root_key = |i: u32| offline.join(format!("root-{i}.pk8"));
    // Fewer keys than the threshold (2 of 3), the same key twice, or a key that is not a
    // root key: refused, nothing changes.
    for keys in [
        vec![root_key(1)],
        vec![root_key(2), root_key(2)],
        vec![root_key(1), dir.path().join("keys/online/timestamp.pk8")],
    ] {
        let err = rotate(dir.path(), &keys, true, 365).await.unwrap_err();
        assert!(
            err.to_string().contains("needs 2") || err.to_string().contains("not a root key"),
            "{err}"
        );
    }
    assert_eq!(Signer::load(dir.path()).unwrap().unwrap().root_version(), 1);

    // Version 2 with new online keys. A server still running with the old keys signs
    // metadata that clients which know root 2 refuse.
    let retired = Signer::load(dir.path()).unwrap();
    let done = rotate(dir.path(), &[root_key(1), root_key(3)], true, 365)
        .await
        .unwrap();
    assert_eq!((done.version, done.online_keys_replaced), (2, true));
    let signer = Signer::load(dir.path()).unwrap();
    assert_eq!(signer.as_ref().unwrap().root_version(), 2);
    let s = fx.service.clone().with_signer(signer);
    s.tuf_refresh(true).await.unwrap();
    // The agent still pins root 1 and follows the chain to 2.
    let repo = load(&s, &canary, &pinned, &datastore, Mangle::None)
        .await
        .unwrap();
    assert_eq!(repo.root().signed.version.get(), 2);
    assert_eq!(
        read(&repo, &tuf_module_target(BUILD, 1))
            .await
            .unwrap()
            .unwrap(),
        ko.to_vec()
    );
    // A client keeps the newest root it verified (the agent does) and from then on refuses
    // metadata signed by the retired keys, e.g. from a replica still running with them.
    let newest = serde_json::to_vec(repo.root()).unwrap();
    let old = fx.service.clone().with_signer(retired);
    old.tuf_refresh(true).await.unwrap();
    let err = load(
        &old,
        &canary,
        &newest,
        &store(dir.path(), "fresh"),
        Mangle::None,
    )
    .await
    .expect_err("metadata signed by retired keys must be refused");
    assert!(!err.to_string().is_empty());
    // Signed again with the keys root 2 names: accepted.
    s.tuf_refresh(true).await.unwrap();
    assert!(
        load(&s, &canary, &pinned, &datastore, Mangle::None)
            .await
            .is_ok()
    );

    // Version 3 renews the expiry only; the chain ends at the version in force.
    let done = rotate(dir.path(), &[root_key(2), root_key(3)], false, 30)
        .await
        .unwrap();
    assert_eq!((done.version, done.online_keys_replaced), (3, false));
    let s = fx
        .service
        .clone()
        .with_signer(Signer::load(dir.path()).unwrap());
    s.tuf_refresh(true).await.unwrap();
    let repo = load(
        &s,
        &canary,
        &pinned,
        &store(dir.path(), "later"),
        Mangle::None,
    )
    .await
    .unwrap();
    assert_eq!(repo.root().signed.version.get(), 3);
    let get = |name: &str| {
        let r = Request::get(format!("/api/v1/tuf/canary/metadata/{name}"))
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", canary.credential),
            )
            .body(Body::empty())
            .unwrap();
        klive_server::http::api::router(s.clone()).oneshot(r)
    };
    for (name, status) in [
        ("1.root.json", StatusCode::OK),
        ("3.root.json", StatusCode::OK),
        ("4.root.json", StatusCode::NOT_FOUND),
        ("0.root.json", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(get(name).await.unwrap().status(), status, "{name}");
    }
    // The anchor agents pin at registration stays version 1.
    assert_eq!(s.delivery().tuf_root().unwrap(), pinned);
}
