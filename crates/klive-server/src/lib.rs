//! klive-server: stores releases per kernel build, moves them through ordered channels with
//! maker-checker promotion, registers hosts and answers their check-ins, and keeps a
//! hash-chained audit log of everything. SQLite and a local blob directory by default;
//! PostgreSQL by URL, with the same SQL.

pub mod api;
pub mod audit;
mod auth_failures;
pub mod blobs;
pub mod charts;
pub mod clock;
pub mod crypto;
pub mod cve;
pub mod dashboard;
pub mod db;
pub mod debver;
pub mod error;
pub mod findings;
mod group_commit;
pub mod history;
pub mod metrics;
pub mod modinfo;
pub mod policy;
mod release_cache;
pub mod report;
pub mod s3;
pub mod service;
pub mod tls;
pub mod tuf;

use std::path::Path;

pub use error::Error;
pub use service::Service;

/// Opens the server's state: `DATA/klive.db` (or `database_url`) and `DATA/blobs/`.
pub async fn open(data: &Path, database_url: Option<&str>) -> Result<Service, Error> {
    open_with(data, database_url, None).await
}

/// [`open`], with the blobs in an S3-compatible bucket when `blob_url` is `s3://...`.
pub async fn open_with(
    data: &Path,
    database_url: Option<&str>,
    blob_url: Option<&str>,
) -> Result<Service, Error> {
    std::fs::create_dir_all(data).map_err(|e| Error::Io {
        what: format!("creating the data directory {}", data.display()),
        source: e,
    })?;
    let db = match database_url {
        Some(url) => db::Db::connect(url).await?,
        None => db::Db::open_sqlite_dir(data).await?,
    };
    let blobs = match blob_url {
        Some(url) => s3::blobs(url)?,
        None => blobs::Blobs::local(&data.join("blobs"))?,
    };
    let signer = tuf::Signer::load(data)?;
    Ok(Service::new(db, blobs).with_signer(signer))
}
