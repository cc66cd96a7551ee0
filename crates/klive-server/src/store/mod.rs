//! Persistence: the database (SQLite or PostgreSQL), the hash-chained audit log, the
//! append-only host history, and the content-addressed blob store (local disk or S3).

pub mod audit;
pub mod blobs;
pub mod db;
pub mod fleet;
pub mod history;
pub mod s3;
