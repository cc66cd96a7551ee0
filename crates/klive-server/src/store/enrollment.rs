//! Enrollment tokens (stored as hashes), traded by hosts for a registration.

use crate::error::Error;
use crate::store::db::Tx;

pub async fn insert_token(
    tx: &mut Tx,
    token_hash: &str,
    channel: &str,
    created_by: &str,
    now: i64,
    expires_at: i64,
    max_uses: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO enroll_tokens (token_hash, channel, created_by, created_at, expires_at, max_uses, uses) VALUES ($1, $2, $3, $4, $5, $6, 0)",
    )
    .bind(token_hash)
    .bind(channel)
    .bind(created_by)
    .bind(now)
    .bind(expires_at)
    .bind(max_uses)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Counts one use of the token with this hash if it is unexpired and not used up; returns its
/// channel, or `None` when it cannot be used.
pub async fn use_token(tx: &mut Tx, token_hash: &str, now: i64) -> Result<Option<String>, Error> {
    Ok(sqlx::query_scalar(
        "UPDATE enroll_tokens SET uses = uses + 1 WHERE token_hash = $1 AND uses < max_uses AND expires_at > $2 RETURNING channel",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?)
}
