//! The database: one `sqlx::AnyPool` over SQLite (embedded default) or PostgreSQL, with the
//! same portable SQL for both. Migrations are compiled into the binary and applied in order.

use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection, Executor, Row};

use crate::error::Error;

/// Compiled-in migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[(&str, &str)] = &[
    ("init", include_str!("../../migrations/0001_init.sql")),
    ("tuf", include_str!("../../migrations/0002_tuf.sql")),
    (
        "fleet_index",
        include_str!("../../migrations/0003_fleet_index.sql"),
    ),
    (
        "evidence",
        include_str!("../../migrations/0004_evidence.sql"),
    ),
];

/// The PostgreSQL advisory lock key held while migrating ("klive" in ASCII).
const MIGRATION_LOCK: i64 = 0x006b_6c69_7665;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The name in messages (as `{:?}` spelled it before errors stopped importing the store).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "Sqlite",
            Backend::Postgres => "Postgres",
        }
    }
}

/// A connection pool plus what kind of database is behind it.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

/// A write transaction that holds the audit chain's head, see [`Db::begin_audited`].
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl Db {
    /// Opens (creating if needed) `DIR/klive.db`.
    pub async fn open_sqlite_dir(dir: &Path) -> Result<Db, Error> {
        let path = dir.join("klive.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Db::connect(&url).await
    }

    /// Connects to `sqlite://PATH?mode=rwc` or `postgres://...`, then applies migrations.
    pub async fn connect(url: &str) -> Result<Db, Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(Error::Config(
                "the database url must start with sqlite:// or postgres://".into(),
            ));
        };
        let options = AnyConnectOptions::from_str(url).map_err(|e| Error::DatabaseConnect {
            backend: backend.name(),
            detail: e.to_string(),
        })?;
        let mut pool_options =
            AnyPoolOptions::new().max_connections(if backend == Backend::Sqlite { 4 } else { 8 });
        if backend == Backend::Sqlite {
            // With WAL, NORMAL syncs at checkpoints instead of every commit: a committed
            // transaction survives a crash of the process (kill -9), and the database is never
            // corrupted; only an OS crash or power cut can lose the last commits.
            pool_options = pool_options.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA synchronous=NORMAL").await?;
                    Ok(())
                })
            });
        }
        let pool =
            pool_options
                .connect_with(options)
                .await
                .map_err(|e| Error::DatabaseConnect {
                    backend: backend.name(),
                    detail: e.to_string(),
                })?;
        let db = Db { pool, backend };
        if backend == Backend::Sqlite {
            // WAL lets readers proceed while one writer commits; the setting is kept in the file.
            db.pool.execute("PRAGMA journal_mode=WAL").await?;
        }
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Sqlite {
            return migrate_on(&mut conn).await;
        }
        // Servers starting at once on one PostgreSQL database migrate one after the other: the
        // others wait here, then find every migration applied. (Even `CREATE TABLE IF NOT
        // EXISTS` can fail when two sessions run it at the same moment.)
        sqlx::query("SELECT COUNT(*) FROM (SELECT pg_advisory_lock($1)) AS locked")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
        let migrated = migrate_on(&mut conn).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // Closing the session is what releases the lock then.
            conn.close_on_drop();
        }
        migrated?;
        unlocked?;
        Ok(())
    }

    /// Begins a transaction that first takes the audit chain's head row, so the transaction
    /// holds the write lock from its first statement (SQLite) or serialises with every other
    /// audited writer (PostgreSQL). Every admin action runs in one of these.
    pub async fn begin_audited(&self) -> Result<Tx, Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// The current schema version.
    pub async fn schema_version(&self) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM klive_schema")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("v")?)
    }
}

/// Applies the migrations not applied yet, each in its own transaction on `conn`.
async fn migrate_on(conn: &mut sqlx::pool::PoolConnection<sqlx::Any>) -> Result<(), Error> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS klive_schema (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .await?;
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        let mut tx = conn.begin().await?;
        // Applied once: on PostgreSQL the advisory lock orders servers starting at once; on
        // SQLite a second one fails on the primary key below instead of applying it twice.
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM klive_schema WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_some() {
            continue;
        }
        sqlx::query("INSERT INTO klive_schema (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(*name)
            .bind(crate::clock::system_now_ms())
            .execute(&mut *tx)
            .await?;
        for statement in split_statements(sql) {
            tx.execute(sqlx::AssertSqlSafe(statement)).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Splits a migration into statements at `;` line ends, dropping `--` comment lines.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let stmt = current.trim().trim_end_matches(';').to_owned();
            out.push(stmt);
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_splits_into_statements_without_comments() {
        let stmts = split_statements(MIGRATIONS[0].1);
        assert!(stmts.iter().all(|s| !s.contains("--") && !s.ends_with(';')));
        assert!(
            stmts
                .iter()
                .any(|s| s.starts_with("CREATE TABLE audit_log"))
        );
    }
}
