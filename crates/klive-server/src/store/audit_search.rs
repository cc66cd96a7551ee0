//! The audit log's filtered listing (the dashboard's audit page): newest first, by actor and
//! action prefix, a page before a sequence number.

use klive_format::api::AuditEntry;

use crate::error::Error;
use crate::store::audit::{ENTRY_COLUMNS, Record, entry};
use crate::store::db::{Db, like_literal};

/// Up to `limit` records with a sequence number below `before` whose actor starts with
/// `actor_prefix` and whose action starts with `action_prefix`, newest first. The prefixes are
/// literal text: `%` and `_` in them match only themselves.
pub async fn search(
    db: &Db,
    before: i64,
    actor_prefix: &str,
    action_prefix: &str,
    limit: i64,
) -> Result<Vec<AuditEntry>, Error> {
    let rows = sqlx::query_as::<_, Record>(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq < $1 AND actor LIKE $2 ESCAPE '\\' AND action LIKE $3 ESCAPE '\\' ORDER BY seq DESC LIMIT $4"
    )))
    .bind(before)
    .bind(format!("{}%", like_literal(actor_prefix)))
    .bind(format!("{}%", like_literal(action_prefix)))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(entry).collect())
}
