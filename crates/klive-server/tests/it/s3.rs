//! Blobs in an S3-compatible bucket (moto on loopback, started by `cargo xtask test`): a
//! module stored and read back, refused once changed in the bucket, and a release published
//! with its module in the bucket served to a host. Built as an ignored test unless the `test-s3`
//! feature is on; then `KLIVE_TEST_S3_URL` (`s3://BUCKET`, with `AWS_ENDPOINT` and credentials
//! in the environment) must be set.

use bytes::Bytes;
use klive_format::api::{EnrollTokenRequest, Role};
use klive_server::Service;
use klive_server::store::db::Db;
use klive_server::trust::secrets::new_id;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use crate::common::{BUILD, build, kernel, level, register_and_authenticate, release};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "test-s3"),
    ignore = "S3 only: cargo xtask test runs it with --features test-s3 against moto"
)]
async fn s3_blobs_serve_releases_and_refuse_changed_objects() {
    let base = std::env::var("KLIVE_TEST_S3_URL").expect("KLIVE_TEST_S3_URL is unset");
    // A prefix per run: the bucket outlives the test.
    let prefix = format!("run-{}", new_id().unwrap());
    let url = format!("{}/{prefix}", base.trim_end_matches('/'));
    let blobs = klive_server::store::s3::blobs(&url).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite_dir(dir.path()).await.unwrap();
    let s = Service::new(db, blobs.clone());
    s.users()
        .add_user(None, "admin", Role::Admin)
        .await
        .unwrap();
    let admin = s.users().user_by_name("admin").await.unwrap();
    s.users()
        .add_user(Some(&admin), "alice", Role::Publisher)
        .await
        .unwrap();
    let alice = s.users().user_by_name("alice").await.unwrap();

    let (m, ko) = release(BUILD, 1);
    s.releases()
        .publish_with_module(&alice, m.clone(), ko.clone())
        .await
        .unwrap();
    let token = s
        .enrollment()
        .create_enroll_token(
            &admin,
            &EnrollTokenRequest {
                channel: "canary".into(),
                expires_in_secs: 60,
                max_uses: 1,
            },
        )
        .await
        .unwrap();
    let (_, host) =
        register_and_authenticate(&s, &token.token, "h", kernel(Some(BUILD)), "0").await;
    let served = s
        .delivery()
        .host_module(&host, &build(BUILD), level(1))
        .await
        .unwrap();
    assert_eq!(
        served, ko,
        "the module comes back from the bucket unchanged"
    );

    // Change the object in the bucket behind the server's back.
    let bucket = base
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let raw = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .unwrap();
    let digest = &m.module.sha256;
    let path = ObjectPath::from(format!("{prefix}/sha256/{}/{digest}", &digest[..2]));
    let mut bad = ko.to_vec();
    bad[0] ^= 0xff;
    raw.put(&path, PutPayload::from_bytes(Bytes::from(bad)))
        .await
        .unwrap();
    let err = s
        .delivery()
        .host_module(&host, &build(BUILD), level(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "blob_corrupt", "{err}");
    let err = blobs.get(digest).await.unwrap_err();
    assert_eq!(err.code(), "blob_corrupt", "{err}");
}
