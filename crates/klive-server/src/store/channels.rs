//! Ordered channels (canary -> stable) and their soak times.

use klive_format::api::Channel;

use crate::error::{Error, on_unique};
use crate::store::db::{Db, Tx};

/// A channel as stored.
#[derive(sqlx::FromRow)]
struct ChannelRow {
    name: String,
    position: i64,
    min_soak_secs: i64,
}

impl From<ChannelRow> for Channel {
    fn from(r: ChannelRow) -> Channel {
        Channel {
            name: r.name,
            position: r.position.clamp(0, i64::from(u32::MAX)) as u32,
            min_soak_secs: r.min_soak_secs.max(0) as u64,
        }
    }
}

/// Every channel, in order.
pub async fn list(db: &Db) -> Result<Vec<Channel>, Error> {
    let rows = sqlx::query_as::<_, ChannelRow>(
        "SELECT name, position, min_soak_secs FROM channels ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(Channel::from).collect())
}

pub async fn get(tx: &mut Tx, name: &str) -> Result<Option<Channel>, Error> {
    let row = sqlx::query_as::<_, ChannelRow>(
        "SELECT name, position, min_soak_secs FROM channels WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(Channel::from))
}

/// The name of the first channel, where releases enter when published.
pub async fn first(tx: &mut Tx) -> Result<Option<String>, Error> {
    Ok(
        sqlx::query_scalar("SELECT name FROM channels ORDER BY position LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// The position after the last channel.
pub async fn next_position(tx: &mut Tx) -> Result<i64, Error> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(position) + 1, 0) FROM channels")
            .fetch_one(&mut **tx)
            .await?,
    )
}

/// Adds a channel; [`Error::ChannelExists`] when the name is taken.
pub async fn insert(
    tx: &mut Tx,
    name: &str,
    position: i64,
    min_soak_secs: i64,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO channels (name, position, min_soak_secs) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(position)
        .bind(min_soak_secs)
        .execute(&mut **tx)
        .await
        .map_err(|e| on_unique(e, Error::ChannelExists(name.to_owned())))?;
    Ok(())
}

pub async fn set_soak(tx: &mut Tx, name: &str, min_soak_secs: i64) -> Result<(), Error> {
    sqlx::query("UPDATE channels SET min_soak_secs = $1 WHERE name = $2")
        .bind(min_soak_secs)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
