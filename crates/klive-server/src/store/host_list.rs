//! The dashboard's host list: one page of hosts in id order, narrowed by the filters a user
//! chose. The query is put together with [`sqlx::QueryBuilder`]; every value is bound.

use sqlx::{Any, Execute, QueryBuilder};

use crate::error::Error;
use crate::store::db::{Db, like_literal};

/// Which applied level to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LevelFilter {
    #[default]
    Any,
    /// Hosts that run no klive level.
    None,
    Is(i64),
}

/// Which hosts by state, `Online` and `Stale` against [`HostFilter::stale_before`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateFilter {
    #[default]
    Any,
    Online,
    Stale,
    Revoked,
}

/// What the host list is narrowed to; empty text filters are off.
#[derive(Debug, Clone, Default)]
pub struct HostFilter {
    /// Only ids after this one (the previous page's last id).
    pub after: String,
    /// Matched case-insensitively anywhere in the hostname or the id.
    pub search: String,
    pub channel: String,
    pub kernel_release: String,
    pub level: LevelFilter,
    pub state: StateFilter,
    /// The online bound: hosts that checked in before it are stale.
    pub stale_before: i64,
    pub min_uptime_secs: Option<i64>,
    pub limit: i64,
}

/// One host of the list.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HostListRow {
    pub id: String,
    pub hostname: String,
    pub channel: String,
    pub kernel_release: Option<String>,
    pub applied_level: Option<i64>,
    pub applied_state: Option<String>,
    pub last_checkin_at: Option<i64>,
    pub uptime_secs: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Up to `f.limit` hosts matching `f`, in id order.
pub async fn page(db: &Db, f: &HostFilter) -> Result<Vec<HostListRow>, Error> {
    let mut qb = QueryBuilder::<Any>::new(
        "SELECT id, hostname, channel, kernel_release, applied_level, applied_state, last_checkin_at, uptime_secs, revoked_at FROM hosts WHERE id > ",
    );
    qb.push_bind(f.after.clone());
    let search = f.search.trim().to_lowercase();
    if !search.is_empty() {
        // `%` and `_` typed into the search box are literal characters, not wildcards.
        let pattern = format!("%{}%", like_literal(&search));
        qb.push(" AND (LOWER(hostname) LIKE ")
            .push_bind(pattern.clone())
            .push(" ESCAPE '\\' OR id LIKE ")
            .push_bind(pattern)
            .push(" ESCAPE '\\')");
    }
    if !f.channel.is_empty() {
        qb.push(" AND channel = ").push_bind(f.channel.clone());
    }
    if !f.kernel_release.is_empty() {
        qb.push(" AND kernel_release = ")
            .push_bind(f.kernel_release.clone());
    }
    match f.level {
        LevelFilter::Any => {}
        LevelFilter::None => {
            qb.push(" AND applied_level IS NULL");
        }
        LevelFilter::Is(level) => {
            qb.push(" AND applied_level = ").push_bind(level);
        }
    }
    match f.state {
        StateFilter::Any => {}
        StateFilter::Online => {
            qb.push(" AND revoked_at IS NULL AND last_checkin_at >= ")
                .push_bind(f.stale_before);
        }
        StateFilter::Stale => {
            qb.push(" AND revoked_at IS NULL AND (last_checkin_at IS NULL OR last_checkin_at < ")
                .push_bind(f.stale_before)
                .push(")");
        }
        StateFilter::Revoked => {
            qb.push(" AND revoked_at IS NOT NULL");
        }
    }
    if let Some(secs) = f.min_uptime_secs {
        qb.push(" AND uptime_secs >= ").push_bind(secs);
    }
    qb.push(" ORDER BY id LIMIT ").push_bind(f.limit);

    let sql = numbered_placeholders(qb.sql().as_str());
    let arguments = qb
        .build()
        .take_arguments()
        .map_err(|e| Error::Corrupt(format!("binding the host list's filters: {e}")))?
        .unwrap_or_default();
    Ok(
        sqlx::query_as_with::<_, HostListRow, _>(sqlx::AssertSqlSafe(sql), arguments)
            .fetch_all(&db.pool)
            .await?,
    )
}

/// `QueryBuilder<Any>` spells every bind placeholder `?` (the backend is chosen only when the
/// query runs), which PostgreSQL does not accept; `$1, $2, ...` work on both databases. The
/// fragments above are constants with no `?` of their own, so every `?` is a placeholder.
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts web-1..web-4 and db-1: (id, hostname, channel, kernel, level, state, last
    /// check-in, uptime, revoked).
    #[allow(clippy::type_complexity)]
    const HOSTS: &[(&str, &str, &str, &str, Option<i64>, i64, i64, Option<i64>)] = &[
        (
            "a1",
            "Web-1",
            "stable",
            "6.1.1",
            Some(2),
            1000,
            90_000,
            None,
        ),
        ("a2", "web-2", "canary", "6.1.1", Some(3), 1000, 10, None),
        ("a3", "web-3", "stable", "6.1.2", None, 10, 90_000, None),
        ("a4", "web-4", "stable", "6.1.1", Some(2), 1000, 10, Some(5)),
        ("b1", "db-1", "stable", "6.1.1", Some(2), 1000, 10, None),
    ];

    async fn seeded(db: &Db) {
        for (i, (id, name, channel, kernel, level, last, uptime, revoked)) in
            HOSTS.iter().enumerate()
        {
            sqlx::query(
                "INSERT INTO hosts (id, credential_hash, hostname, channel, update_delay_secs, registered_at, revoked_at, last_sequence, last_checkin_at, kernel_release, applied_level, applied_state, uptime_secs) VALUES ($1, $2, $3, $4, 0, 0, $5, 0, $6, $7, $8, $9, $10)",
            )
            .bind(*id)
            .bind(format!("cred{i}"))
            .bind(*name)
            .bind(*channel)
            .bind(*revoked)
            .bind(*last)
            .bind(*kernel)
            .bind(*level)
            .bind(level.map(|_| "applied"))
            .bind(*uptime)
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }

    async fn ids(db: &Db, f: HostFilter) -> Vec<String> {
        let f = HostFilter {
            stale_before: 500,
            limit: if f.limit == 0 { 100 } else { f.limit },
            ..f
        };
        page(db, &f)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    }

    /// Every filter narrows the list as the hosts page offers it, alone and combined.
    pub(crate) async fn filters_narrow_the_list(db: &Db) {
        seeded(db).await;
        let all = HostFilter::default();
        assert_eq!(ids(db, all.clone()).await, ["a1", "a2", "a3", "a4", "b1"]);
        let f = |g: fn(&mut HostFilter)| {
            let mut f = all.clone();
            g(&mut f);
            f
        };
        assert_eq!(
            ids(db, f(|f| f.search = " WEB ".into())).await,
            ["a1", "a2", "a3", "a4"]
        );
        assert_eq!(ids(db, f(|f| f.search = "DB".into())).await, ["b1"]);
        assert_eq!(ids(db, f(|f| f.channel = "canary".into())).await, ["a2"]);
        assert_eq!(
            ids(db, f(|f| f.kernel_release = "6.1.2".into())).await,
            ["a3"]
        );
        assert_eq!(ids(db, f(|f| f.level = LevelFilter::None)).await, ["a3"]);
        assert_eq!(ids(db, f(|f| f.level = LevelFilter::Is(3))).await, ["a2"]);
        assert_eq!(
            ids(db, f(|f| f.state = StateFilter::Online)).await,
            ["a1", "a2", "b1"]
        );
        assert_eq!(ids(db, f(|f| f.state = StateFilter::Stale)).await, ["a3"]);
        assert_eq!(ids(db, f(|f| f.state = StateFilter::Revoked)).await, ["a4"]);
        assert_eq!(
            ids(db, f(|f| f.min_uptime_secs = Some(86_400))).await,
            ["a1", "a3"]
        );
        assert_eq!(
            ids(db, f(|f| f.after = "a2".into())).await,
            ["a3", "a4", "b1"]
        );
        assert_eq!(ids(db, f(|f| f.limit = 2)).await, ["a1", "a2"]);
        let combined = f(|f| {
            f.search = "web".into();
            f.channel = "stable".into();
            f.kernel_release = "6.1.1".into();
            f.level = LevelFilter::Is(2);
            f.state = StateFilter::Online;
            f.min_uptime_secs = Some(86_400);
            f.after = "a0".into();
            f.limit = 10;
        });
        assert_eq!(ids(db, combined).await, ["a1"]);
        // A value is only ever a value.
        assert!(
            ids(db, f(|f| f.channel = "stable' OR '1'='1".into()))
                .await
                .is_empty()
        );
        let rows = page(db, &HostFilter { limit: 1, ..all }).await.unwrap();
        assert_eq!(
            rows[0],
            HostListRow {
                id: "a1".into(),
                hostname: "Web-1".into(),
                channel: "stable".into(),
                kernel_release: Some("6.1.1".into()),
                applied_level: Some(2),
                applied_state: Some("applied".into()),
                last_checkin_at: Some(1000),
                uptime_secs: Some(90_000),
                revoked_at: None,
            }
        );
    }

    #[tokio::test]
    async fn filters_narrow_the_list_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite_dir(dir.path()).await.unwrap();
        filters_narrow_the_list(&db).await;
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            numbered_placeholders("a = ? AND (b LIKE ? OR c LIKE ?) LIMIT ?"),
            "a = $1 AND (b LIKE $2 OR c LIKE $3) LIMIT $4"
        );
        assert_eq!(numbered_placeholders("no binds"), "no binds");
    }
}
