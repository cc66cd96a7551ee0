//! The `klive-server` command line as an operator uses it.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{BUILD, release};

fn run(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_klive-server"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env("KLIVE_LOG", "error")
        .env("RUST_BACKTRACE", "0")
        .env_remove("KLIVE_USER")
        .env_remove("KLIVE_DATABASE_URL")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_bootstraps_publishes_and_verifies_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let o = run(&data, &["user", "add", "root", "--role", "admin"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("api token (shown once): klu_"));
    let o = run(&data, &["user", "add", "eve", "--role", "admin"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("pass --as ADMIN"), "{}", text(&o));
    let o = run(
        &data,
        &[
            "user",
            "add",
            "alice",
            "--role",
            "publisher",
            "--as",
            "root",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));

    let (manifest, ko) = release(BUILD, 1);
    std::fs::write(
        dir.path().join("m.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("m.ko"), &ko).unwrap();
    std::fs::write(dir.path().join("bad.json"), b"{\"format\": 1}").unwrap();
    let m = dir.path().join("m.json");
    let k = dir.path().join("m.ko");
    let bad = dir.path().join("bad.json");
    let add = |manifest: &Path, who: &str| {
        run(
            &data,
            &[
                "release",
                "add",
                "--manifest",
                manifest.to_str().unwrap(),
                "--module",
                k.to_str().unwrap(),
                "--as",
                who,
            ],
        )
    };
    let o = add(&bad, "alice");
    assert!(!o.status.success());
    assert!(text(&o).contains("parsing the manifest"), "{}", text(&o));
    let o = add(&m, "nobody");
    assert!(!o.status.success());
    assert!(text(&o).contains("--as nobody"), "{}", text(&o));
    let o = add(&m, "alice");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("published level 1"), "{}", text(&o));
    let o = run(&data, &["release", "list"]);
    assert!(text(&o).contains("canary"), "{}", text(&o));

    let o = run(&data, &["audit", "verify"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("audit log intact"), "{}", text(&o));

    // Someone edits the database behind the server's back.
    let db = klive_server::store::db::Db::open_sqlite_dir(&data)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 2")
        .execute(&db.pool)
        .await
        .unwrap();
    db.pool.close().await;
    let o = run(&data, &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("broken at record 2"), "{}", text(&o));
}

#[test]
fn operator_rotates_the_tuf_root_with_the_offline_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = run(&data, &["keys", "init"]);
    assert!(o.status.success(), "{}", text(&o));
    let key = |i: u32| data.join(format!("keys/offline/root-{i}.pk8"));
    let key = |i: u32| key(i).to_str().unwrap().to_owned();
    // One key of a 2-of-3 root: refused, with what to do.
    let o = run(&data, &["keys", "rotate", "--root-key", &key(1)]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("needs 2 of its 3 root keys"),
        "{}",
        text(&o)
    );
    assert!(!data.join("tuf/roots/2.root.json").exists());
    let o = run(
        &data,
        &[
            "keys",
            "rotate",
            "--root-key",
            &key(1),
            "--root-key",
            &key(2),
            "--new-online-keys",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("root version 2 in force"), "{}", text(&o));
    assert!(data.join("tuf/roots/2.root.json").is_file());
    assert!(data.join("keys/online/v2/timestamp.pk8").is_file());
    // The rotation is in the audit log, and the log is intact.
    let o = run(&data, &["audit", "verify"]);
    assert!(o.status.success(), "{}", text(&o));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let recorded: i64 = rt.block_on(async {
        let s = klive_server::open(&data, None).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'tuf.root-rotated'")
            .fetch_one(&s.db().pool)
            .await
            .unwrap()
    });
    assert_eq!(recorded, 1);
}
