//! Dashboard sign-in sessions. Only the SHA-256 of a session id is stored, beside the user,
//! the session's CSRF token and its expiry.

use klive_format::api::Role;
use klive_format::digest::sha256_hex;

use crate::error::Error;
use crate::store::db::{Db, Tx};
use crate::store::users::role_from_db;

/// A live session: who it signs in and the CSRF token its forms carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    pub user: String,
    pub role: Role,
    pub csrf: String,
}

/// The session whose id is `id`, when it has not expired at `now` and its user still holds an
/// unrevoked API token (a user whose every token was revoked is signed out too).
pub async fn find(db: &Db, id: &str, now: i64) -> Result<Option<LiveSession>, Error> {
    #[derive(sqlx::FromRow)]
    struct Stored {
        role: String,
        name: String,
        csrf: String,
    }
    let Some(row) = sqlx::query_as::<_, Stored>(
        "SELECT s.csrf AS csrf, u.name AS name, u.role AS role FROM dashboard_sessions s JOIN users u ON u.name = s.user_name WHERE s.id_hash = $1 AND s.expires_at > $2",
    )
    .bind(sha256_hex(id.as_bytes()))
    .bind(now)
    .fetch_optional(&db.pool)
    .await?
    else {
        return Ok(None);
    };
    let session = LiveSession {
        user: row.name,
        role: role_from_db(&row.role)?,
        csrf: row.csrf,
    };
    let active: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM api_tokens WHERE user_name = $1 AND revoked_at IS NULL",
    )
    .bind(&session.user)
    .fetch_one(&db.pool)
    .await?;
    Ok((active > 0).then_some(session))
}

/// Stores a new session `id` for `user` with its `csrf` token, created at `now` and valid
/// until `expires_at`, and drops the sessions expired by `now`.
pub async fn create(
    tx: &mut Tx,
    id: &str,
    user: &str,
    csrf: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO dashboard_sessions (id_hash, user_name, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(sha256_hex(id.as_bytes()))
    .bind(user)
    .bind(csrf)
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Ends the session `id` (signing out); nothing happens when there is none.
pub async fn delete(tx: &mut Tx, id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM dashboard_sessions WHERE id_hash = $1")
        .bind(sha256_hex(id.as_bytes()))
        .execute(&mut **tx)
        .await?;
    Ok(())
}
