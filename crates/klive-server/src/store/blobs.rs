//! Content-addressed blob storage through `object_store`: a module is stored under the
//! SHA-256 of its bytes, written once, never changed. Local directory by default.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::Error;
use klive_format::digest::{is_sha256_hex, sha256_hex};

#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl Blobs {
    /// Blobs under `dir` (created if missing).
    pub fn local(dir: &Path) -> Result<Blobs, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            what: format!("creating the blob directory {}", dir.display()),
            source: e,
        })?;
        let store = LocalFileSystem::new_with_prefix(dir).map_err(Error::blob)?;
        Ok(Blobs {
            store: Arc::new(store),
        })
    }

    /// Blobs in any object store (S3: [`crate::store::s3`]).
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Blobs {
        Blobs { store }
    }

    /// Blobs in memory, for tests.
    pub fn in_memory() -> Blobs {
        Blobs {
            store: Arc::new(InMemory::new()),
        }
    }

    fn path(digest: &str) -> ObjectPath {
        ObjectPath::from(format!("sha256/{}/{digest}", &digest[..2]))
    }

    /// Stores `bytes` under their digest and returns it. Writing the same bytes twice is a
    /// no-op in effect; the local store writes to a temporary file and renames it, so a crash
    /// never leaves a partial blob under a digest.
    pub async fn put(&self, bytes: Bytes) -> Result<String, Error> {
        let digest = sha256_hex(&bytes);
        self.store
            .put(&Self::path(&digest), PutPayload::from_bytes(bytes))
            .await
            .map_err(Error::blob)?;
        Ok(digest)
    }

    /// The blob with this digest, checked against it: a blob changed on disk is refused.
    pub async fn get(&self, digest: &str) -> Result<Bytes, Error> {
        if !is_sha256_hex(digest) {
            return Err(Error::BlobMissing(digest.to_owned()));
        }
        let result = match self.store.get(&Self::path(digest)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::BlobMissing(digest.to_owned()));
            }
            Err(e) => return Err(Error::blob(e)),
        };
        let bytes = result.bytes().await.map_err(Error::blob)?;
        if sha256_hex(&bytes) != digest {
            tracing::error!(
                digest,
                "blob content does not match its digest: storage was tampered with or corrupted"
            );
            return Err(Error::BlobCorrupt(digest.to_owned()));
        }
        Ok(bytes)
    }
}
