//! S3-compatible blob storage (AWS S3, MinIO, Ceph RGW; moto in the tests):
//! `--blob-url s3://BUCKET[/PREFIX]` (env `KLIVE_BLOB_URL`) instead of `DATA/blobs/`.
//! Endpoint, region and credentials come from the usual `AWS_*` variables (`AWS_REGION`,
//! `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP=true` for
//! a plain-HTTP endpoint). Blobs are content-addressed and never rewritten, so replicas
//! share one bucket safely; a blob changed in the bucket is refused like one changed on disk.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;

use crate::error::Error;
use crate::store::blobs::Blobs;

/// The blob store named by `url` (`s3://BUCKET[/PREFIX]`).
pub fn blobs(url: &str) -> Result<Blobs, Error> {
    let bad = || Error::Config(format!("blob URL {url:?} must be s3://BUCKET[/PREFIX]"));
    let rest = url.strip_prefix("s3://").ok_or_else(bad)?;
    let (bucket, prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, p.trim_matches('/')),
        None => (rest, ""),
    };
    if bucket.is_empty() {
        return Err(bad());
    }
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| {
            Error::Config(format!(
                "S3 blob store {url}: {e}; set AWS_REGION, AWS_ENDPOINT (for a non-AWS service) and the credentials"
            ))
        })?;
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    };
    Ok(Blobs::from_store(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_s3_urls_with_a_bucket_are_accepted() {
        for bad in ["", "s3://", "s3:///x", "file:///tmp", "bucket"] {
            let e = blobs(bad).unwrap_err().to_string();
            assert!(e.contains("s3://BUCKET"), "{bad}: {e}");
        }
    }
}
