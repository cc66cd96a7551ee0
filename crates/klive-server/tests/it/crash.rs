//! A crash at each step of `klive-server release add` (a failpoint ends the process there,
//! as `kill -9` would) leaves the release either fully visible (channel entry, stored module,
//! audit record) or absent, the audit chain intact, and an absent release publishable again.
//! Each run checks that its failpoint was really hit (the process died of it) and where the
//! crash landed relative to the commit.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use klive_format::api::Role;
use klive_server::store::audit::{self, Verdict};

use crate::common::{BUILD, build, level, release};

/// The publish path's failpoints in order, and whether the release is visible after a crash
/// there (`None`: no crash, the command completes).
const STEPS: [(Option<&str>, bool); 5] = [
    (Some("publish.blob_stored"), false),
    (Some("publish.rows_written"), false),
    (Some("publish.before_commit"), false),
    (Some("publish.committed"), true),
    (None, true),
];

/// SIGABRT: how a failpoint ends the process (`std::process::abort`).
const SIGABRT: i32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs the failpoints feature: cargo xtask test builds the server with it"
)]
async fn a_crash_at_each_publish_step_leaves_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let s = klive_server::open(&data, None).await.unwrap();
        s.users()
            .add_user(None, "alice", Role::Publisher)
            .await
            .unwrap();
        s.db().pool.close().await;
    }
    let mut killed_before_commit = 0;
    let mut killed_after_commit = 0;
    let mut completed = 0;
    for (i, (point, visible_after)) in (1u32..).zip(STEPS) {
        let (manifest, ko) = release(BUILD, i);
        let m = dir.path().join(format!("l{i}.json"));
        let k = dir.path().join(format!("l{i}.ko"));
        std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
        std::fs::write(&k, &ko).unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_klive-server"))
            .arg("--data")
            .arg(&data)
            .args(["release", "add", "--as", "alice", "--manifest"])
            .arg(&m)
            .arg("--module")
            .arg(&k)
            .env("KLIVE_LOG", "error")
            .env("KLIVE_FAILPOINT", point.unwrap_or_default())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        match point {
            Some(p) => assert_eq!(
                status.signal(),
                Some(SIGABRT),
                "the failpoint {p} was not hit: {status}"
            ),
            None => assert!(status.success(), "{status}"),
        }

        let s = klive_server::open(&data, None).await.unwrap();
        let visible = s.releases().get(&build(BUILD), level(i)).await;
        assert_eq!(
            visible.is_ok(),
            visible_after,
            "after a crash at {point:?}: {visible:?}"
        );
        match visible {
            Ok(info) => {
                if point.is_some() {
                    killed_after_commit += 1;
                } else {
                    completed += 1;
                }
                assert_eq!(
                    info.channels.len(),
                    1,
                    "a visible release is in its channel"
                );
                assert_eq!(
                    s.blobs().get(&info.manifest.module.sha256).await.unwrap(),
                    ko
                );
                let audited =
                    audit::recent(s.db(), 1000).await.unwrap().iter().any(|e| {
                        e.action == "release.publish" && e.subject == format!("{BUILD}-{i}")
                    });
                assert!(audited, "a visible release has its audit record");
            }
            Err(e) => {
                assert_eq!(e.code(), "release_not_found");
                killed_before_commit += 1;
                let orphan: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM release_channels WHERE release_id = $1",
                )
                .bind(format!("{BUILD}-{i}"))
                .fetch_one(&s.db().pool)
                .await
                .unwrap();
                assert_eq!(orphan, 0);
                // Publishing again after the crash works.
                let alice = s.users().user_by_name("alice").await.unwrap();
                s.releases()
                    .publish_with_module(&alice, manifest, ko)
                    .await
                    .unwrap();
            }
        }
        assert!(matches!(
            audit::verify(s.db()).await.unwrap(),
            Verdict::Intact { .. }
        ));
        s.db().pool.close().await;
    }
    assert!(
        killed_before_commit >= 3 && killed_after_commit == 1 && completed == 1,
        "{killed_before_commit} killed before the commit, {killed_after_commit} after it, {completed} completed"
    );
}
