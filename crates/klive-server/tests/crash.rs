//! `kill -9` of `klive-server release add` at many points: every release is either fully
//! visible (channel entry, stored module, audit record) or absent, and the audit chain holds.

mod common;

use std::process::Command;
use std::time::Duration;

use klive_format::api::Role;
use klive_server::store::audit::{self, Verdict};

use common::{BUILD, build, level, release};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_publish_leaves_no_partial_release() {
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
    let mut completed = 0;
    for i in 1..=24u32 {
        let (manifest, ko) = release(BUILD, i);
        let m = dir.path().join(format!("l{i}.json"));
        let k = dir.path().join(format!("l{i}.ko"));
        std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
        std::fs::write(&k, &ko).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_klive-server"))
            .arg("--data")
            .arg(&data)
            .args(["release", "add", "--as", "alice", "--manifest"])
            .arg(&m)
            .arg("--module")
            .arg(&k)
            .env("KLIVE_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(u64::from(i % 12) * 3));
        let _ = child.kill(); // SIGKILL; it may have finished already
        let status = child.wait().unwrap();
        if status.success() {
            completed += 1;
        }

        let s = klive_server::open(&data, None).await.unwrap();
        let visible = s.releases().get(&build(BUILD), level(i)).await;
        match visible {
            Ok(info) => {
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
    eprintln!("{killed_before_commit} publications killed before commit, {completed} completed");
}
