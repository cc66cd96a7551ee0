//! The server's errors. Each has a stable `code` for the API and a lowercase message that says
//! what failed and what to do; storage failures keep their detail for the log only.

use klive_format::release::ManifestError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- the caller's input -------------------------------------------------------------
    #[error("the request body is not valid: {0}")]
    BadRequest(String),
    #[error("the manifest is not valid: {0}")]
    InvalidManifest(#[from] ManifestError),
    #[error(
        "the module is not a kernel module klive can read: {0}; upload the .ko the manifest describes"
    )]
    InvalidModule(String),
    #[error(
        "the module's sha256 is {actual} but the manifest says {expected}; upload the module the manifest was made for"
    )]
    DigestMismatch { expected: String, actual: String },
    #[error(
        "the module is {actual} bytes but the manifest says {expected}; the upload may be truncated, upload it again"
    )]
    SizeMismatch { expected: u64, actual: u64 },
    #[error(
        "the module's modinfo {tag}={actual:?} does not match the manifest ({expected}); rebuild the module or fix the manifest"
    )]
    ModinfoMismatch {
        tag: &'static str,
        expected: String,
        actual: String,
    },
    #[error("no module with sha256 {0} is stored; upload it first (POST /api/v1/blobs)")]
    BlobMissing(String),
    #[error(
        "level {level} for kernel build {build_id} is already published; publish the next level instead"
    )]
    DuplicateRelease { build_id: String, level: u32 },
    #[error(
        "no release for kernel build {build_id} at level {level}; list releases to see what exists"
    )]
    ReleaseNotFound { build_id: String, level: u32 },
    #[error("no channel named {0:?}; list channels to see the configured ones")]
    ChannelNotFound(String),
    #[error("a channel named {0:?} already exists")]
    ChannelExists(String),
    #[error("no user named {0:?}")]
    UserNotFound(String),
    #[error("a user named {0:?} already exists")]
    UserExists(String),
    #[error("user name {0:?} must be 1 to 64 characters of [a-z0-9._-]")]
    BadUserName(String),
    #[error("no host with id {0:?}")]
    HostNotFound(String),
    #[error(
        "no TUF file {0:?} here; check the channel, and run `klive-server keys init` if the server has no keys yet"
    )]
    MetadataNotFound(String),
    #[error("no promotion with id {0:?}")]
    PromotionNotFound(String),
    #[error("the file is not a valid CVE source, nothing was imported: {0}")]
    InvalidFeed(String),
    #[error("{0} was imported before (same sha256); nothing to do")]
    AlreadyImported(String),

    // --- who may do what ----------------------------------------------------------------
    #[error("missing or unknown credentials; send `Authorization: Bearer <token>`")]
    Unauthenticated,
    #[error("this needs the {needed} role; ask an admin")]
    Forbidden { needed: &'static str },
    #[error("{0}")]
    MakerChecker(String),
    #[error("the enrollment token is unknown, expired or used up; ask an admin for a new one")]
    EnrollmentTokenInvalid,

    // --- state conflicts ----------------------------------------------------------------
    #[error("{0}")]
    PromotionRefused(String),
    #[error(
        "the release must soak in {channel} for {remaining_secs} more seconds before promotion; wait, or make an emergency promotion with a reason"
    )]
    SoakNotElapsed {
        channel: String,
        remaining_secs: i64,
    },
    #[error("level {level} for kernel build {build_id} is withdrawn and cannot be promoted")]
    Withdrawn { build_id: String, level: u32 },
    #[error(
        "check-in sequence {got} is not above the last accepted {last}: refused as a replay; send a higher sequence"
    )]
    Replay { got: u64, last: u64 },

    // --- the server's own failures (details are logged, not sent) -------------------------
    #[error("storage error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "cannot connect to the {backend} database: {detail}; check the url and that the database is running"
    )]
    DatabaseConnect {
        /// `Sqlite` or `Postgres`.
        backend: &'static str,
        detail: String,
    },
    #[error("blob storage error: {0}")]
    Blob(String),
    #[error(
        "stored module {0} does not match its digest (corrupted or tampered on the server); re-upload it"
    )]
    BlobCorrupt(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot read random bytes from the operating system: {0}")]
    Random(String),
    #[error("signing TUF metadata failed: {0}")]
    Tuf(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl Error {
    pub(crate) fn blob(e: object_store::Error) -> Error {
        Error::Blob(e.to_string())
    }

    /// Stable identifier for programs.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::InvalidManifest(_) => "invalid_manifest",
            Error::InvalidModule(_) => "invalid_module",
            Error::DigestMismatch { .. } => "module_digest_mismatch",
            Error::SizeMismatch { .. } => "module_size_mismatch",
            Error::ModinfoMismatch { .. } => "modinfo_mismatch",
            Error::BlobMissing(_) => "blob_missing",
            Error::DuplicateRelease { .. } => "duplicate_release",
            Error::ReleaseNotFound { .. } => "release_not_found",
            Error::ChannelNotFound(_) => "channel_not_found",
            Error::ChannelExists(_) => "channel_exists",
            Error::UserNotFound(_) => "user_not_found",
            Error::UserExists(_) => "user_exists",
            Error::BadUserName(_) => "bad_user_name",
            Error::HostNotFound(_) => "host_not_found",
            Error::PromotionNotFound(_) => "promotion_not_found",
            Error::InvalidFeed(_) => "invalid_feed",
            Error::AlreadyImported(_) => "already_imported",
            Error::MetadataNotFound(_) => "tuf_not_found",
            Error::Unauthenticated => "unauthenticated",
            Error::Forbidden { .. } => "forbidden",
            Error::MakerChecker(_) => "maker_checker",
            Error::EnrollmentTokenInvalid => "enrollment_token_invalid",
            Error::PromotionRefused(_) => "promotion_refused",
            Error::SoakNotElapsed { .. } => "soak_not_elapsed",
            Error::Withdrawn { .. } => "release_withdrawn",
            Error::Replay { .. } => "replayed_checkin",
            Error::BlobCorrupt(_) => "blob_corrupt",
            Error::Database(_)
            | Error::DatabaseConnect { .. }
            | Error::Blob(_)
            | Error::Io { .. }
            | Error::Random(_)
            | Error::Config(_)
            | Error::Tuf(_)
            | Error::Corrupt(_) => "internal",
        }
    }

    /// HTTP status for the API.
    pub fn status(&self) -> u16 {
        match self.code() {
            "bad_request"
            | "invalid_manifest"
            | "invalid_module"
            | "module_digest_mismatch"
            | "module_size_mismatch"
            | "modinfo_mismatch"
            | "blob_missing"
            | "bad_user_name"
            | "invalid_feed" => 400,
            "unauthenticated" | "enrollment_token_invalid" => 401,
            "forbidden" | "maker_checker" => 403,
            "release_not_found"
            | "channel_not_found"
            | "user_not_found"
            | "host_not_found"
            | "promotion_not_found"
            | "tuf_not_found" => 404,
            "duplicate_release" | "channel_exists" | "user_exists" | "promotion_refused"
            | "soak_not_elapsed" | "release_withdrawn" | "replayed_checkin"
            | "already_imported" => 409,
            _ => 500,
        }
    }

    /// The message an API client sees: the error's own text, except for server-side failures,
    /// whose detail stays in the log.
    pub fn public_message(&self) -> String {
        match self {
            Error::BlobCorrupt(_) => {
                "the stored module is corrupted on the server; an admin must re-upload it".into()
            }
            e if e.code() == "internal" => {
                "the server failed to complete the request; try again, and tell its admin if it persists".into()
            }
            e => e.to_string(),
        }
    }
}

/// Maps a unique-constraint failure to `conflict`, other database errors unchanged.
pub(crate) fn on_unique(e: sqlx::Error, conflict: Error) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => conflict,
        _ => Error::Database(e),
    }
}
