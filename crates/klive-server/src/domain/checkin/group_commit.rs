//! Group commit of check-ins. One writer task per [`crate::Service`] takes every check-in
//! queued while its previous transaction was committing and writes them all in ONE
//! transaction: the host rows, their history rows and hash-chained audit records (appended in
//! queue order), and the day's check-in count as one aggregate. Each check-in is answered only
//! after that commit, so an accepted sequence is durable before the host learns it was
//! accepted (replay protection holds across a crash). A check-in refused on its own merits
//! (replayed sequence, revoked host) gets its own error and does not disturb the batch; if
//! the batch transaction fails as a whole, every check-in in it is retried in a transaction of
//! its own, so one bad check-in cannot fail the others.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::error::Error;
use crate::store::audit::{self, Actor};
use crate::store::checkins::{self, HostUpdate};
use crate::store::db::{Db, Tx};
use crate::store::history::{DAY_MS, HostState};

/// Most check-ins in one transaction.
const MAX_BATCH: usize = 512;
/// Check-ins that may wait for the writer before senders wait too.
const QUEUE: usize = 4096;

/// One host's check-in, as it will be written.
#[derive(Debug)]
pub(crate) struct Write {
    pub host_id: String,
    pub sequence: i64,
    /// The host's last sequence when it was authenticated.
    pub seen_sequence: i64,
    /// The host's previous check-in time when it was authenticated (daily coverage).
    pub previous_checkin: Option<i64>,
    /// Only sequence, time and uptime differ from the row as authenticated: the write touches
    /// those three columns (no index changes) when the row is still as it was read.
    pub steady: bool,
    pub kernel_release: String,
    pub build_id: Option<String>,
    pub applied_level: Option<i64>,
    pub applied_state: Option<&'static str>,
    pub boot_id: String,
    pub uptime_secs: i64,
    pub agent_version: String,
    pub last_error: Option<String>,
    pub taint: Option<i64>,
    /// The history row (its time is set at commit) when the check-in changes the host's state.
    pub history: Option<HostState>,
    /// Audit events, in order.
    pub events: Vec<(&'static str, Value)>,
}

type Reply = oneshot::Sender<Result<i64, Error>>;

struct Job {
    write: Write,
    reply: Reply,
}

/// The queue to a service's check-in writer, started on first use in the caller's runtime
/// (and started again if that runtime has gone).
#[derive(Debug, Clone, Default)]
pub(crate) struct Writer {
    queue: Arc<Mutex<Option<mpsc::Sender<Job>>>>,
    stats: Arc<Stats>,
}

/// Transactions the writer ran and check-ins they carried, since the service started.
#[derive(Debug, Default)]
struct Stats {
    batches: AtomicU64,
    checkins: AtomicU64,
}

impl Writer {
    /// Queues `write` and waits until its batch committed; returns the time recorded for it.
    pub async fn write(&self, db: &Db, clock: &Clock, write: Write) -> Result<i64, Error> {
        let (reply, answer) = oneshot::channel();
        let mut job = Job { write, reply };
        loop {
            let sender = self.sender(db, clock);
            match sender.send(job).await {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => {
                    // The writer's runtime ended: forget it so the next call starts another.
                    job = back;
                    let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                    if queue.as_ref().is_some_and(|q| q.same_channel(&sender)) {
                        *queue = None;
                    }
                }
            }
        }
        answer.await.map_err(|_| checkins::writer_gone())?
    }

    /// (batches, check-ins) written so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.stats.batches.load(Ordering::Relaxed),
            self.stats.checkins.load(Ordering::Relaxed),
        )
    }

    fn sender(&self, db: &Db, clock: &Clock) -> mpsc::Sender<Job> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue
            .get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run(db.clone(), clock.clone(), Arc::clone(&self.stats), rx));
                tx
            })
            .clone()
    }
}

/// The writer: whatever is queued when the previous commit ends makes the next batch.
async fn run(db: Db, clock: Clock, stats: Arc<Stats>, mut queue: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let batch = std::mem::take(&mut jobs);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .checkins
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let now = clock.now_ms();
        let writes: Vec<&Write> = batch.iter().map(|j| &j.write).collect();
        match commit(&db, now, &writes).await {
            Ok(outcomes) => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome.map(|()| now));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(job) = batch.into_iter().next() {
                    let _ = job.reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(
                    "a batch of {} check-ins failed ({e}); writing them one by one",
                    batch.len()
                );
                for job in batch {
                    let outcome = match commit(&db, now, &[&job.write]).await {
                        Ok(mut one) => one.pop().unwrap_or(Ok(())),
                        Err(e) => Err(e),
                    };
                    let _ = job.reply.send(outcome.map(|()| now));
                }
            }
        }
    }
}

/// Writes `writes` in one transaction. The outer error means nothing was committed; the inner
/// results are each check-in's own verdict (committed with the others, or refused).
async fn commit(db: &Db, now: i64, writes: &[&Write]) -> Result<Vec<Result<(), Error>>, Error> {
    let audited = writes.iter().any(|w| !w.events.is_empty());
    let mut tx = if audited {
        db.begin_audited().await?
    } else {
        checkins::begin(db).await?
    };
    let mut outcomes = Vec::with_capacity(writes.len());
    // Hosts checking in for the first time today, each counted once.
    let mut counted: HashSet<&str> = HashSet::new();
    let day = now.div_euclid(DAY_MS);
    for w in writes {
        let outcome = write_one(&mut tx, now, w).await?;
        let counted_today = w
            .previous_checkin
            .is_some_and(|p| p.div_euclid(DAY_MS) == day);
        if outcome.is_ok() && !counted_today {
            counted.insert(&w.host_id);
        }
        outcomes.push(outcome);
    }
    if !counted.is_empty() {
        crate::store::history::count_daily(&mut tx, day, counted.len() as i64).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

async fn write_one(tx: &mut Tx, now: i64, w: &Write) -> Result<Result<(), Error>, Error> {
    let mut affected = 0;
    if w.steady {
        // The row is as authenticated (same last sequence): only these columns change.
        affected = checkins::touch(
            tx,
            &w.host_id,
            w.sequence,
            w.seen_sequence,
            now,
            w.uptime_secs,
        )
        .await?;
    }
    if affected == 0 {
        affected = checkins::update(
            tx,
            &HostUpdate {
                host_id: &w.host_id,
                sequence: w.sequence,
                now,
                kernel_release: &w.kernel_release,
                build_id: w.build_id.clone(),
                applied_level: w.applied_level,
                applied_state: w.applied_state,
                boot_id: &w.boot_id,
                uptime_secs: w.uptime_secs,
                agent_version: &w.agent_version,
                last_error: w.last_error.clone(),
                taint: w.taint,
            },
        )
        .await?;
    }
    if affected != 1 {
        // A check-in with this or a higher sequence landed first, or the host was revoked.
        let Some(stored) = checkins::sequence_state(tx, &w.host_id).await? else {
            return Ok(Err(Error::Unauthenticated));
        };
        if stored.revoked {
            return Ok(Err(Error::Unauthenticated));
        }
        return Ok(Err(Error::Replay {
            got: w.sequence.max(0) as u64,
            last: stored.last_sequence.max(0) as u64,
        }));
    }
    if let Some(history) = &w.history {
        let mut state = history.clone();
        state.at = now;
        crate::store::history::record(tx, &state).await?;
    }
    let actor = Actor::Host(w.host_id.clone());
    for (action, detail) in &w.events {
        audit::append(tx, now, &actor, action, &w.host_id, detail.clone()).await?;
    }
    Ok(Ok(()))
}
