//! Persistence: the database (SQLite or PostgreSQL), the hash-chained audit log, the
//! append-only host history, and the content-addressed blob store (local disk or S3).

pub mod as_of;
pub mod audit;
pub mod audit_search;
pub mod blobs;
pub mod channels;
pub mod checkins;
pub mod cve;
pub mod db;
pub mod enrollment;
pub mod fleet;
pub mod history;
pub mod host_list;
pub mod hosts;
pub mod policy;
pub mod promotions;
pub mod releases;
pub mod rollout;
pub mod s3;
pub mod sessions;
pub mod tuf;
pub mod users;
