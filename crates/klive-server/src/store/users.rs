//! Admin users, their roles and API tokens (stored as hashes).

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

/// A stored role, checked to be one.
pub(crate) fn role_from_db(role: &str) -> Result<Role, Error> {
    Role::parse(role).ok_or_else(|| Error::Corrupt(format!("unknown stored role {role:?}")))
}

/// A user and their role, as stored.
#[derive(sqlx::FromRow)]
struct StoredUser {
    name: String,
    role: String,
}

impl TryFrom<StoredUser> for UserRow {
    type Error = Error;

    fn try_from(u: StoredUser) -> Result<UserRow, Error> {
        Ok(UserRow {
            role: role_from_db(&u.role)?,
            name: u.name,
        })
    }
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
    #[derive(sqlx::FromRow)]
    struct Listed {
        #[sqlx(flatten)]
        user: StoredUser,
        created_at: i64,
    }
    sqlx::query_as::<_, Listed>("SELECT name, role, created_at FROM users ORDER BY name")
        .fetch_all(&db.pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(User {
                role: role_from_db(&r.user.role)?,
                name: r.user.name,
                created_at: rfc3339(r.created_at),
            })
        })
        .collect()
}

pub async fn by_name(db: &Db, name: &str) -> Result<Option<UserRow>, Error> {
    sqlx::query_as::<_, StoredUser>("SELECT name, role FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.pool)
        .await?
        .map(UserRow::try_from)
        .transpose()
}

/// The user holding the active API token with this hash.
pub async fn by_token(db: &Db, token_hash: &str) -> Result<Option<UserRow>, Error> {
    sqlx::query_as::<_, StoredUser>(
        "SELECT u.name AS name, u.role AS role FROM api_tokens t JOIN users u ON u.name = t.user_name WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(&db.pool)
    .await?
    .map(UserRow::try_from)
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
