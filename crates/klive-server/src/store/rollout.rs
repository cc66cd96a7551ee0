//! Where the fleet stands against the releases, for the dashboard's overview: active hosts
//! grouped by channel, kernel, level and state in one scan of the host table, and the newest
//! level published per kernel build and channel.

use std::collections::HashMap;

use crate::error::Error;
use crate::store::db::Db;

/// Active (not revoked) hosts alike in every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGroup {
    pub channel: String,
    pub build_id: Option<String>,
    pub kernel_release: Option<String>,
    pub applied_level: Option<i64>,
    pub applied_state: Option<String>,
    /// Checked in at or after the staleness bound.
    pub online: bool,
    pub hosts: i64,
}

/// The active hosts grouped finely enough to derive every overview tile and table, with
/// `stale_before` as the online bound.
pub async fn host_groups(db: &Db, stale_before: i64) -> Result<Vec<HostGroup>, Error> {
    #[derive(sqlx::FromRow)]
    struct Stored {
        channel: String,
        build_id: Option<String>,
        kernel_release: Option<String>,
        applied_level: Option<i64>,
        applied_state: Option<String>,
        online: i64,
        n: i64,
    }
    let rows = sqlx::query_as::<_, Stored>(
        "SELECT channel, build_id, kernel_release, applied_level, applied_state, CASE WHEN last_checkin_at >= $1 THEN 1 ELSE 0 END AS online, COUNT(*) AS n FROM hosts WHERE revoked_at IS NULL GROUP BY 1, 2, 3, 4, 5, 6",
    )
    .bind(stale_before)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| HostGroup {
            channel: r.channel,
            build_id: r.build_id,
            kernel_release: r.kernel_release,
            applied_level: r.applied_level,
            applied_state: r.applied_state,
            online: r.online != 0,
            hosts: r.n,
        })
        .collect())
}

/// The newest level not withdrawn per (build-id, channel).
pub async fn newest_levels(db: &Db) -> Result<HashMap<(String, String), i64>, Error> {
    #[derive(sqlx::FromRow)]
    struct Newest {
        build_id: String,
        channel: String,
        level: i64,
    }
    let rows = sqlx::query_as::<_, Newest>(
        "SELECT r.build_id AS build_id, rc.channel AS channel, MAX(r.level) AS level FROM releases r JOIN release_channels rc ON rc.release_id = r.id WHERE r.withdrawn_at IS NULL GROUP BY r.build_id, rc.channel",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.build_id, r.channel), r.level))
        .collect())
}
