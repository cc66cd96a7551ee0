//! `report verify`: the manifest's signature, then every file's hash.

use std::path::Path;

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};

use klive_format::digest::{sha256_hex, unhex};
use klive_format::evidence::{EVIDENCE_FORMAT, EvidenceManifest};

/// What `report verify` found wrong, first problem only.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("{0}: cannot read it: {1}")]
    Unreadable(String, String),
    #[error("manifest.json is not a klive evidence manifest: {0}")]
    BadManifest(String),
    #[error(
        "manifest.sig does not verify against the manifest's public key: manifest.json was changed after signing"
    )]
    BadSignature,
    #[error(
        "the pack was signed by key {found}, not by the expected key {expected}: it did not come from this server"
    )]
    WrongKey { expected: String, found: String },
    #[error("{path}: sha256 is {actual}, the manifest says {expected}: the file was changed")]
    Changed {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{0}: listed in the manifest but missing")]
    Missing(String),
    #[error("{0}: present but not listed in the manifest")]
    Unlisted(String),
}

/// Checks the signature, then every file's hash; names the first bad file.
pub fn verify_pack(
    dir: &Path,
    expected_key: Option<&str>,
) -> Result<EvidenceManifest, VerifyError> {
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map_err(|e| VerifyError::Unreadable(name.into(), e.to_string()))
    };
    let bytes = read("manifest.json")?;
    let sig = read("manifest.sig")?;
    let manifest: EvidenceManifest =
        serde_json::from_slice(&bytes).map_err(|e| VerifyError::BadManifest(e.to_string()))?;
    if manifest.format != EVIDENCE_FORMAT {
        return Err(VerifyError::BadManifest(format!(
            "format {} (this build reads {EVIDENCE_FORMAT})",
            manifest.format
        )));
    }
    let public = unhex(manifest.public_key.trim())
        .ok_or_else(|| VerifyError::BadManifest("public_key is not hex".into()))?;
    let signature = std::str::from_utf8(&sig)
        .ok()
        .and_then(|s| unhex(s.trim()))
        .ok_or(VerifyError::BadSignature)?;
    UnparsedPublicKey::new(&ED25519, &public)
        .verify(&bytes, &signature)
        .map_err(|_| VerifyError::BadSignature)?;
    if let Some(expected) = expected_key
        && expected != manifest.public_key
    {
        return Err(VerifyError::WrongKey {
            expected: expected.to_owned(),
            found: manifest.public_key.clone(),
        });
    }
    for f in &manifest.files {
        if f.path.contains('/') || f.path.starts_with('.') {
            return Err(VerifyError::BadManifest(format!(
                "unsafe path {:?}",
                f.path
            )));
        }
        let data =
            std::fs::read(dir.join(&f.path)).map_err(|_| VerifyError::Missing(f.path.clone()))?;
        let actual = sha256_hex(&data);
        if actual != f.sha256 {
            return Err(VerifyError::Changed {
                path: f.path.clone(),
                expected: f.sha256.clone(),
                actual,
            });
        }
    }
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| VerifyError::Unreadable(dir.display().to_string(), e.to_string()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manifest.json" && n != "manifest.sig")
        .collect();
    present.sort();
    if let Some(extra) = present
        .into_iter()
        .find(|n| !manifest.files.iter().any(|f| &f.path == n))
    {
        return Err(VerifyError::Unlisted(extra));
    }
    Ok(manifest)
}
