//! The append-only, hash-chained audit log. Each record's hash covers the previous record's
//! hash and every field of its own, so changing, removing or reordering any record breaks the
//! chain from that point on; `audit verify` finds the first break.

use serde_json::Value;

use klive_format::api::AuditEntry;

use crate::clock::rfc3339;
use crate::error::Error;
use crate::store::db::{Db, Tx};
use klive_format::digest::sha256_hex;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User(String),
    Host(String),
    System,
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Actor::User(u) => format!("user:{u}"),
            Actor::Host(h) => format!("host:{h}"),
            Actor::System => "system".into(),
        }
    }
}

/// The hash of one record: fields are length-prefixed so no two records encode alike.
fn record_hash(
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> String {
    let mut buf = Vec::with_capacity(256);
    for field in [
        prev,
        &seq.to_string(),
        &at.to_string(),
        actor,
        action,
        subject,
        detail,
    ] {
        buf.extend_from_slice(&(field.len() as u64).to_be_bytes());
        buf.extend_from_slice(field.as_bytes());
    }
    sha256_hex(&buf)
}

/// Appends one record inside `tx` (which [`Db::begin_audited`] opened, holding the head).
pub async fn append(
    tx: &mut Tx,
    at: i64,
    actor: &Actor,
    action: &str,
    subject: &str,
    detail: Value,
) -> Result<u64, Error> {
    let Head { seq, hash: prev } = sqlx::query_as::<_, Head>(
        "UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash",
    )
    .fetch_one(&mut **tx)
    .await?;
    let actor = actor.label();
    let detail = detail.to_string();
    let hash = record_hash(&prev, seq, at, &actor, action, subject, &detail);
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&hash)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, subject, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(at)
    .bind(&actor)
    .bind(action)
    .bind(subject)
    .bind(&detail)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    Ok(seq as u64)
}

/// Result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record links to the one before and the head matches the last record.
    Intact { records: u64, head: String },
    /// The first record (by sequence) where the chain does not hold, and why.
    Broken { seq: u64, reason: String },
}

/// Recomputes the chain from the first record.
pub async fn verify(db: &Db) -> Result<Verdict, Error> {
    let rows = sqlx::query_as::<_, Record>(
        "SELECT seq, at, actor, action, subject, detail, prev_hash, hash FROM audit_log ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut prev = GENESIS.to_owned();
    let mut expected_seq = 1i64;
    for r in &rows {
        let seq = r.seq;
        let broken = |reason: String| {
            Ok(Verdict::Broken {
                seq: seq.max(0) as u64,
                reason,
            })
        };
        if seq != expected_seq {
            return broken(format!(
                "record {expected_seq} is missing (next record is {seq})"
            ));
        }
        if r.prev_hash != prev {
            return broken("its prev_hash does not match the previous record's hash".into());
        }
        if record_hash(&prev, seq, r.at, &r.actor, &r.action, &r.subject, &r.detail) != r.hash {
            return broken("its content does not match its hash (the record was altered)".into());
        }
        prev.clone_from(&r.hash);
        expected_seq += 1;
    }
    let Head {
        seq: head_seq,
        hash: head_hash,
    } = sqlx::query_as::<_, Head>("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&db.pool)
        .await?;
    if head_seq != expected_seq - 1 || head_hash != prev {
        return Ok(Verdict::Broken {
            seq: expected_seq as u64,
            reason: format!(
                "the chain head says {head_seq} records but {} remain: records were removed from the end",
                expected_seq - 1
            ),
        });
    }
    Ok(Verdict::Intact {
        records: rows.len() as u64,
        head: prev,
    })
}

/// The newest `limit` records, newest first.
pub async fn recent(db: &Db, limit: i64) -> Result<Vec<AuditEntry>, Error> {
    let rows = sqlx::query_as::<_, Record>(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(entry).collect())
}

/// The records with `from <= at <= to`, oldest first.
pub async fn between(db: &Db, from: i64, to: i64) -> Result<Vec<AuditEntry>, Error> {
    let rows = sqlx::query_as::<_, Record>(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_log WHERE at >= $1 AND at <= $2 ORDER BY seq"
    )))
    .bind(from)
    .bind(to)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(entry).collect())
}

/// The columns every audit listing selects.
pub(crate) const ENTRY_COLUMNS: &str = "seq, at, actor, action, subject, detail, prev_hash, hash";

/// The chain's head: the last sequence number and hash.
#[derive(sqlx::FromRow)]
struct Head {
    seq: i64,
    hash: String,
}

/// One audit record as stored, a row with [`ENTRY_COLUMNS`].
#[derive(sqlx::FromRow)]
pub(crate) struct Record {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    subject: String,
    detail: String,
    prev_hash: String,
    hash: String,
}

/// One audit record as the API shows it.
pub(crate) fn entry(r: Record) -> AuditEntry {
    AuditEntry {
        seq: r.seq.max(0) as u64,
        at: rfc3339(r.at),
        actor: r.actor,
        action: r.action,
        subject: r.subject,
        detail: r.detail,
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_field_and_on_field_boundaries() {
        let base = record_hash(GENESIS, 1, 2, "user:a", "x", "s", "{}");
        assert_ne!(base, record_hash(GENESIS, 1, 2, "user:a", "x", "s", "{ }"));
        assert_ne!(base, record_hash(GENESIS, 2, 2, "user:a", "x", "s", "{}"));
        // moving a character from one field to the next changes the hash
        assert_ne!(
            record_hash(GENESIS, 1, 2, "ab", "c", "s", "{}"),
            record_hash(GENESIS, 1, 2, "a", "bc", "s", "{}")
        );
    }
}
