//! Secrets: 256-bit random tokens and short random ids.

use crate::error::Error;

use klive_format::digest::hex;

/// `prefix` followed by 256 random bits in hex. Only its SHA-256 is ever stored.
pub fn new_secret(prefix: &str) -> Result<String, Error> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| Error::Random(e.to_string()))?;
    Ok(format!("{prefix}{}", hex(&raw)))
}

/// A short random id (64 bits, hex) for hosts and promotions.
pub fn new_id() -> Result<String, Error> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(|e| Error::Random(e.to_string()))?;
    Ok(hex(&raw))
}

/// Writes a new secret file (a private key): created exclusively, mode 0600, synced to disk.
pub fn write_secret(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| Error::Io {
            what: format!("creating {}", path.display()),
            source,
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use klive_format::digest::{is_sha256_hex, sha256_hex};

    #[test]
    fn sha256_matches_known_vector_and_secrets_differ() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let a = new_secret("klu_").unwrap();
        let b = new_secret("klu_").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert!(is_sha256_hex(&sha256_hex(b"")));
        assert!(!is_sha256_hex("ABC"));
    }
}
