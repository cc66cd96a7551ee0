//! The database: one `sqlx::AnyPool` over SQLite (embedded default) or PostgreSQL, with the
//! same portable SQL for both. Migrations are compiled into the binary and applied by sqlx's
//! migrator.

use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, SqlSafeStr};

use crate::error::Error;

/// Compiled-in migrations: (version, name, SQL). sqlx's migrator applies the missing ones in
/// order, each in its own transaction, records them with their checksums in
/// `_sqlx_migrations`, refuses a database whose applied migrations were edited since, and on
/// PostgreSQL holds an advisory lock meanwhile, so servers starting at once migrate one after
/// the other.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (2, "tuf", include_str!("../../migrations/0002_tuf.sql")),
    (
        3,
        "fleet_index",
        include_str!("../../migrations/0003_fleet_index.sql"),
    ),
    (
        4,
        "evidence",
        include_str!("../../migrations/0004_evidence.sql"),
    ),
];

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, name, sql)| {
                Migration::new(
                    version,
                    name.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

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
        let migrator = migrator();
        let mut conn = self.pool.acquire().await?;
        // Databases made before klive used sqlx's migrator list their migrations in
        // `klive_schema`: those are marked applied (not run again) before the rest run.
        let exists_sql = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'klive_schema'"
            }
            Backend::Postgres => "SELECT COUNT(*) FROM pg_tables WHERE tablename = 'klive_schema'",
        };
        let legacy: i64 = sqlx::query_scalar(exists_sql).fetch_one(&mut *conn).await?;
        if legacy > 0 {
            let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM klive_schema")
                .fetch_one(&mut *conn)
                .await?;
            if let Some(applied) = applied {
                migrator
                    .skip(&mut *conn, Some(applied))
                    .await
                    .map_err(migration_failed)?;
            }
        }
        migrator.run(&mut *conn).await.map_err(migration_failed)
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

    /// The current schema version: the newest migration applied.
    pub async fn schema_version(&self) -> Result<i64, Error> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(v.unwrap_or(0))
    }
}

/// The newest migration this build knows.
pub fn latest_schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

fn migration_failed(e: sqlx::migrate::MigrateError) -> Error {
    Error::Config(format!(
        "migrating the database failed: {e}; restore it from a backup or run the klive-server version that created it"
    ))
}

/// `text` as a literal inside a LIKE pattern written with `ESCAPE '\'`: its `\`, `%` and `_`
/// match only themselves (a search box's `a_b` finds `a_b`, not `axb`).
pub fn like_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
