//! The server's evidence key, which signs every pack's manifest.

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use klive_format::digest::hex;

use super::io;
use crate::error::Error;
use crate::trust::secrets::write_secret;

/// The server's Ed25519 evidence key, `DATA/keys/evidence.pk8` (PKCS#8, mode 0600), created on
/// first use.
#[derive(Debug)]
pub struct EvidenceKey {
    pair: Ed25519KeyPair,
    pub public_hex: String,
}

impl EvidenceKey {
    pub fn path(data: &Path) -> PathBuf {
        data.join("keys").join("evidence.pk8")
    }

    pub fn load_or_create(data: &Path) -> Result<EvidenceKey, Error> {
        let path = EvidenceKey::path(data);
        let der = if path.exists() {
            std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?
        } else {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| Error::Random("generating the evidence key".into()))?;
            let dir = path.parent().unwrap_or(data);
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            write_secret(&path, doc.as_ref())?;
            doc.as_ref().to_vec()
        };
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| {
            Error::Config(format!(
                "{} is not an Ed25519 PKCS#8 key; restore it from backup, or move it away to create a new one",
                path.display()
            ))
        })?;
        let public_hex = hex(pair.public_key().as_ref());
        Ok(EvidenceKey { pair, public_hex })
    }

    pub fn sign(&self, message: &[u8]) -> String {
        hex(self.pair.sign(message).as_ref())
    }
}
