//! Check-ins written in groups (one transaction for whatever is queued): each check-in still
//! gets its own verdict, on SQLite and PostgreSQL.

use futures_util::future::join_all;
use klive_format::api::{AppliedReport, CheckIn};
use klive_format::status::PatchState;
use klive_server::Error;
use klive_server::domain::AuthHost;
use klive_server::store::audit::{self, Verdict};
use klive_server::store::db::Backend;

use crate::common::{
    self, BUILD, Fixture, enroll_token, kernel, level, publish, register_and_authenticate,
};

backend_tests!(
    concurrent_checkins_of_many_hosts_share_transactions,
    a_replay_inside_a_batch_is_refused_alone,
    a_revoked_host_inside_a_batch_is_refused_alone,
    a_failing_checkin_does_not_fail_its_batch,
    decisions_follow_changes_at_once_here_and_within_a_second_from_elsewhere,
);

const HOSTS: usize = 40;

struct Host {
    credential: String,
    auth: AuthHost,
}

async fn hosts(fx: &Fixture, n: usize) -> Vec<Host> {
    let t = enroll_token(fx, "canary", 600, u32::try_from(n).unwrap()).await;
    let mut out = Vec::new();
    for i in 0..n {
        let (r, auth) = register_and_authenticate(
            &fx.service,
            &t,
            &format!("batch-{i}"),
            kernel(Some(BUILD)),
            "0.1.0",
        )
        .await;
        out.push(Host {
            credential: r.credential,
            auth,
        });
    }
    out
}

fn report(sequence: u64, applied: bool) -> CheckIn {
    CheckIn {
        sequence,
        kernel: kernel(Some(BUILD)),
        applied: applied.then(|| AppliedReport {
            level: level(1),
            state: PatchState::Applied,
        }),
        uptime_secs: 100 + sequence,
        boot_id: "boot-1".into(),
        agent_version: "0.1.0".into(),
        last_error: None,
        taint: None,
    }
}

async fn chain_records(fx: &Fixture) -> u64 {
    match audit::verify(fx.service.db()).await.unwrap() {
        Verdict::Intact { records, .. } => records,
        Verdict::Broken { seq, reason } => panic!("audit chain broken at {seq}: {reason}"),
    }
}

async fn last_sequence(fx: &Fixture, host: &Host) -> i64 {
    sqlx::query_scalar("SELECT last_sequence FROM hosts WHERE id = $1")
        .bind(&host.auth.id)
        .fetch_one(&fx.service.db().pool)
        .await
        .unwrap()
}

/// Sends every (host, check-in) at once and returns the verdicts in the same order.
async fn all_at_once(
    fx: &Fixture,
    sends: &[(&AuthHost, CheckIn)],
) -> Vec<Result<klive_format::api::CheckInResponse, Error>> {
    join_all(
        sends
            .iter()
            .map(|(h, c)| fx.service.checkins().checkin(h, c)),
    )
    .await
}

async fn concurrent_checkins_of_many_hosts_share_transactions(fx: Fixture) {
    let s = &fx.service;
    publish(&fx, BUILD, 1).await;
    let hosts = hosts(&fx, HOSTS).await;
    let before = chain_records(&fx).await;
    let (batches_before, checkins_before) = s.checkins().checkin_batches();

    // First check-ins: every host reports a level and a boot (audited).
    let first: Vec<_> = hosts.iter().map(|h| (&h.auth, report(1, true))).collect();
    for r in all_at_once(&fx, &first).await {
        let r = r.unwrap();
        assert_eq!(r.target.unwrap().level, level(1));
    }
    // Then steady check-ins with nothing changed, from a fresh view of each host.
    let mut fresh = Vec::new();
    for h in &hosts {
        fresh.push(
            s.enrollment()
                .authenticate_host(&h.credential)
                .await
                .unwrap(),
        );
    }
    let steady: Vec<_> = fresh.iter().map(|h| (h, report(2, true))).collect();
    for r in all_at_once(&fx, &steady).await {
        r.unwrap();
    }

    let (batches, checkins) = s.checkins().checkin_batches();
    let (batches, checkins) = (batches - batches_before, checkins - checkins_before);
    assert_eq!(checkins, 2 * HOSTS as u64);
    assert!(
        batches < checkins,
        "{checkins} check-ins sent at once were written in {batches} transactions"
    );
    for h in &hosts {
        assert_eq!(last_sequence(&fx, h).await, 2);
        let info = s.hosts().get(&fx.vic, &h.auth.id).await.unwrap();
        assert_eq!(info.applied_level, Some(level(1)));
        assert_eq!(info.uptime_secs, Some(102), "the steady check-in is stored");
    }
    // One `host.applied` record per host, in a chain that still verifies.
    assert_eq!(chain_records(&fx).await, before + HOSTS as u64);
    let history: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM host_history WHERE events = 'applied'")
            .fetch_one(&s.db().pool)
            .await
            .unwrap();
    assert_eq!(history, HOSTS as i64);
    // Each host counted once in today's coverage, whatever the batches.
    let days: Vec<i64> = sqlx::query_scalar("SELECT hosts FROM checkin_daily")
        .fetch_all(&s.db().pool)
        .await
        .unwrap();
    assert_eq!(days.iter().sum::<i64>(), HOSTS as i64);
}

async fn a_replay_inside_a_batch_is_refused_alone(fx: Fixture) {
    let hosts = hosts(&fx, HOSTS).await;
    let before = chain_records(&fx).await;
    // Host 0 sends the same sequence twice within the batch; everyone else once.
    let mut sends: Vec<_> = hosts.iter().map(|h| (&h.auth, report(1, false))).collect();
    sends.insert(HOSTS / 2, (&hosts[0].auth, report(1, false)));
    let verdicts = all_at_once(&fx, &sends).await;
    let refused: Vec<usize> = verdicts
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_err())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(refused.len(), 1, "{verdicts:?}");
    let err = verdicts[refused[0]].as_ref().unwrap_err();
    assert!(matches!(err, Error::Replay { got: 1, last: 1 }), "{err}");
    assert!(
        refused[0] == 0 || refused[0] == HOSTS / 2,
        "only host 0's second copy is refused"
    );
    for h in &hosts {
        assert_eq!(last_sequence(&fx, h).await, 1);
    }
    // Nothing changed for these hosts (same kernel and boot as registered), so no records.
    assert_eq!(chain_records(&fx).await, before);

    // A stale view of a host cannot go back either, in a batch with others.
    let sends: Vec<_> = hosts.iter().map(|h| (&h.auth, report(1, false))).collect();
    for v in all_at_once(&fx, &sends).await {
        assert_eq!(v.unwrap_err().code(), "replayed_checkin");
    }
}

async fn a_revoked_host_inside_a_batch_is_refused_alone(fx: Fixture) {
    let s = &fx.service;
    let hosts = hosts(&fx, HOSTS).await;
    // Host 3 authenticated (its view is in hand) and is revoked before its check-in lands.
    s.hosts()
        .revoke_host(&fx.admin, &hosts[3].auth.id)
        .await
        .unwrap();
    let sends: Vec<_> = hosts.iter().map(|h| (&h.auth, report(1, true))).collect();
    let verdicts = all_at_once(&fx, &sends).await;
    for (i, v) in verdicts.iter().enumerate() {
        if i == 3 {
            assert!(
                matches!(v, Err(Error::Unauthenticated)),
                "the revoked host is refused: {v:?}"
            );
        } else {
            assert!(v.is_ok(), "host {i}: {v:?}");
        }
    }
    assert_eq!(last_sequence(&fx, &hosts[3]).await, 0);
    assert_eq!(last_sequence(&fx, &hosts[4]).await, 1);
    let revoked_records: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE subject = $1 AND action = 'host.applied'",
    )
    .bind(&hosts[3].auth.id)
    .fetch_one(&s.db().pool)
    .await
    .unwrap();
    assert_eq!(
        revoked_records, 0,
        "a refused check-in leaves no audit record"
    );
    chain_records(&fx).await;
}

/// A trigger makes the database refuse one host's update: the batch it was in fails as a
/// whole, and every other check-in of that batch is still written.
async fn a_failing_checkin_does_not_fail_its_batch(fx: Fixture) {
    let s = &fx.service;
    let statements: &[&str] = match s.db().backend {
        Backend::Sqlite => &[
            "CREATE TRIGGER poison BEFORE UPDATE ON hosts WHEN NEW.kernel_release = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned check-in'); END",
        ],
        Backend::Postgres => &[
            "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF NEW.kernel_release = 'poison' THEN RAISE EXCEPTION 'poisoned check-in'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER poison BEFORE UPDATE ON hosts FOR EACH ROW EXECUTE FUNCTION poison()",
        ],
    };
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(*sql))
            .execute(&s.db().pool)
            .await
            .unwrap();
    }
    let hosts = hosts(&fx, HOSTS).await;
    let mut sends: Vec<_> = hosts.iter().map(|h| (&h.auth, report(1, true))).collect();
    sends[5].1.kernel.release = "poison".into();
    let verdicts = all_at_once(&fx, &sends).await;
    for (i, v) in verdicts.iter().enumerate() {
        if i == 5 {
            assert!(matches!(v, Err(Error::Database(_))), "{v:?}");
        } else {
            assert!(v.is_ok(), "host {i}: {v:?}");
        }
    }
    assert_eq!(last_sequence(&fx, &hosts[5]).await, 0);
    for (i, h) in hosts.iter().enumerate().filter(|(i, _)| *i != 5) {
        assert_eq!(last_sequence(&fx, h).await, 1, "host {i}");
    }
    chain_records(&fx).await;
}

/// The release choice is cached: a change through this service shows in the next check-in;
/// a change another server made (here: straight in the database) within a second.
async fn decisions_follow_changes_at_once_here_and_within_a_second_from_elsewhere(mut fx: Fixture) {
    // A clock that moves only when told, so the cache's age is exact.
    let now = fx.service.now();
    fx.service = fx
        .service
        .clone()
        .with_clock(klive_server::clock::Clock::frozen(now));
    let s = &fx.service;
    publish(&fx, BUILD, 1).await;
    let hosts = hosts(&fx, 1).await;
    let host = &hosts[0];
    let mut seq = 0;
    let mut target = async || {
        seq += 1;
        let auth = s
            .enrollment()
            .authenticate_host(&host.credential)
            .await
            .unwrap();
        let r = s
            .checkins()
            .checkin(&auth, &report(seq, false))
            .await
            .unwrap();
        r.target.map(|t| t.level.get())
    };
    assert_eq!(target().await, Some(1));
    publish(&fx, BUILD, 2).await;
    assert_eq!(target().await, Some(2), "a publish here shows at once");
    s.releases()
        .withdraw(&fx.alice, &common::build(BUILD), level(2), "bad")
        .await
        .unwrap();
    assert_eq!(target().await, Some(1), "a withdrawal here shows at once");

    // Another replica withdraws level 1: seen after at most a second.
    sqlx::query("UPDATE releases SET withdrawn_at = $1, withdrawn_by = 'alice', withdraw_reason = 'elsewhere' WHERE level = 1")
        .bind(s.clock().now_ms())
        .execute(&s.db().pool)
        .await
        .unwrap();
    assert_eq!(
        target().await,
        Some(1),
        "within the second, the cached decision stands"
    );
    s.clock().advance_secs(1);
    assert_eq!(
        target().await,
        None,
        "a change made elsewhere shows within a second"
    );
}
