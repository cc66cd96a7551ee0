//! Admin users, their roles and API tokens (stored as hashes).

use sqlx::Row;
use sqlx::any::AnyRow;

use klive_format::api::{Role, User};

use crate::clock::rfc3339;
use crate::error::{Error, on_unique};
use crate::store::db::{Db, Tx};

/// A user and their role, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub role: Role,
}

fn role(row: &AnyRow) -> Result<Role, Error> {
    let role: String = row.try_get("role")?;
    Role::parse(&role).ok_or_else(|| Error::Corrupt(format!("unknown stored role {role:?}")))
}

fn user_row(row: &AnyRow) -> Result<UserRow, Error> {
    let role = role(row)?;
    Ok(UserRow {
        name: row.try_get("name")?,
        role,
    })
}

/// Adds a user; [`Error::UserExists`] when the name is taken.
pub async fn insert(tx: &mut Tx, name: &str, role: Role, now: i64) -> Result<(), Error> {
    sqlx::query("INSERT INTO users (name, role, created_at) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(role.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(|e| on_unique(e, Error::UserExists(name.to_owned())))?;
    Ok(())
}

/// Every user, by name.
pub async fn list(db: &Db) -> Result<Vec<User>, Error> {
    let rows = sqlx::query("SELECT name, role, created_at FROM users ORDER BY name")
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|r| {
            let role = role(r)?;
            Ok(User {
                name: r.try_get("name")?,
                role,
                created_at: rfc3339(r.try_get("created_at")?),
            })
        })
        .collect()
}

pub async fn by_name(db: &Db, name: &str) -> Result<Option<UserRow>, Error> {
    sqlx::query("SELECT name, role FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.pool)
        .await?
        .as_ref()
        .map(user_row)
        .transpose()
}

/// The user holding the active API token with this hash.
pub async fn by_token(db: &Db, token_hash: &str) -> Result<Option<UserRow>, Error> {
    sqlx::query(
        "SELECT u.name AS name, u.role AS role FROM api_tokens t JOIN users u ON u.name = t.user_name WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(&db.pool)
    .await?
    .as_ref()
    .map(user_row)
    .transpose()
}

pub async fn insert_token(
    tx: &mut Tx,
    token_hash: &str,
    user: &str,
    now: i64,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO api_tokens (token_hash, user_name, created_at) VALUES ($1, $2, $3)")
        .bind(token_hash)
        .bind(user)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Revokes every active token of `user`; returns how many there were.
pub async fn revoke_tokens(tx: &mut Tx, user: &str, now: i64) -> Result<u64, Error> {
    Ok(sqlx::query(
        "UPDATE api_tokens SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(user)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}
