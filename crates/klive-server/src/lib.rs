//! klive-server: stores releases per kernel build, moves them through ordered channels with
//! maker-checker promotion, registers hosts and answers their check-ins, and keeps a
//! hash-chained audit log of everything. SQLite and a local blob directory by default;
//! PostgreSQL by URL, with the same SQL.

pub mod clock;
pub mod domain;
pub mod error;
pub mod evidence;
pub mod failpoint;
pub mod http;
pub mod store;
pub mod trust;

use std::path::Path;

pub use domain::Service;
pub use error::Error;

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
        Some(url) => store::db::Db::connect(url).await?,
        None => store::db::Db::open_sqlite_dir(data).await?,
    };
    let blobs = match blob_url {
        Some(url) => store::s3::blobs(url)?,
        None => store::blobs::Blobs::local(&data.join("blobs"))?,
    };
    let signer = trust::tuf::Signer::load(data)?;
    Ok(Service::new(db, blobs).with_signer(signer))
}
