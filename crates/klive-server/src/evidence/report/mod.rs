//! The SOC 2 evidence pack: a printable report (HTML, and PDF when Chromium is available), one
//! CSV and one JSON file per population (hosts, findings, changes, exceptions, audit extract),
//! `summary.json`, and `manifest.json` listing every file's SHA-256, signed (Ed25519) by
//! the server's evidence key in `manifest.sig`. Every figure is computed as of the period end
//! (or the generation time, when the period has not ended) from the append-only records, so
//! running the printed command again gives byte-identical populations.
//!
//! `figures` computes what a report shows (from `populations` and `series`), `html` renders
//! it, `pdf` prints it, `files` and `pack` write and sign the pack, `verify` checks one,
//! `grc` and `tar` are the dashboard's exports and download.

mod figures;
mod files;
mod grc;
mod html;
mod key;
mod pack;
mod pdf;
mod populations;
mod series;
mod tar;
mod verify;

pub use figures::{CveRow, Figures, figures, worst_cve_first};
pub use files::{
    AUDIT_COLUMNS, CHANGE_COLUMNS, EXCEPTION_COLUMNS, FINDING_COLUMNS, HOST_COLUMNS, PackFile, csv,
    finding_csv_line, findings_csv, write_csv, write_json_records,
};
pub use grc::{drata_export, vanta_export};
pub use html::{REPORT_CSS, days_text, render_html, severity_row, share_text};
pub use key::EvidenceKey;
pub use pack::{PackDir, PackOutcome, Timings, generate_pack, reproduce_command};
pub use pdf::{PdfJob, find_chromium, print_pdf, start_pdf};
pub use series::{is_livepatch_apply, open_series, period_findings, severity_figures, ttp_series};
pub use tar::tar_dir;
pub use verify::{VerifyError, verify_pack};

use crate::error::Error;
use crate::store::history::DAY_MS;

/// Taint bits that show code the kernel vendor did not sign or ship: P (proprietary),
/// O (out-of-tree), E (unsigned).
pub const FOREIGN_TAINT: u64 = 1 | (1 << 12) | (1 << 13);
/// A host whose last check-in is older than this at the period end is silent.
pub const SILENT_AFTER_MS: i64 = 2 * DAY_MS;

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use klive_format::digest::sha256_hex;
    use klive_format::evidence::{EVIDENCE_FORMAT, EvidenceManifest};

    use super::*;

    #[test]
    fn evidence_key_signs_and_a_pack_is_verified_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = EvidenceKey::load_or_create(dir.path()).unwrap();
        let again = EvidenceKey::load_or_create(dir.path()).unwrap();
        assert_eq!(key.public_hex, again.public_hex, "the key is kept");
        let manifest = EvidenceManifest {
            format: EVIDENCE_FORMAT,
            kind: "soc2".into(),
            generator: "test".into(),
            generated_at: String::new(),
            period_from: String::new(),
            period_to: String::new(),
            as_of: String::new(),
            generated_by: "t".into(),
            command: "c".into(),
            public_key: key.public_hex.clone(),
            files: Vec::new(),
        };
        let out = dir.path().join("pack");
        let mut pack = PackDir::create(&out).unwrap();
        // A file written in many small pieces is hashed exactly as its bytes on disk.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        pack.write("a.csv", Some(1), |w| {
            for chunk in big.chunks(7777) {
                w.write_all(chunk)?;
            }
            Ok(())
        })
        .unwrap();
        pack.write("b.json", Some(0), |w| w.write_all(b"[]\n"))
            .unwrap();
        assert!(
            !out.exists(),
            "nothing is in place before the manifest is signed"
        );
        let written = pack.finish(manifest.clone(), &key).unwrap();
        assert_eq!(written.files[0].sha256, sha256_hex(&big));
        assert_eq!(written.files[0].size, big.len() as u64);
        assert_eq!(std::fs::read(out.join("a.csv")).unwrap(), big);
        // A pack abandoned half-way leaves nothing behind.
        let other = dir.path().join("other");
        let mut partial = PackDir::create(&other).unwrap();
        partial.write("a.csv", None, |w| w.write_all(b"x")).unwrap();
        let tmp = partial.path().to_path_buf();
        assert!(tmp.join("a.csv").is_file());
        drop(partial);
        assert!(!tmp.exists() && !other.exists());
        let m = verify_pack(&out, Some(&key.public_hex)).unwrap();
        assert_eq!(m.files.len(), 2);
        assert!(matches!(
            verify_pack(&out, Some("00")),
            Err(VerifyError::WrongKey { .. })
        ));
        std::fs::write(out.join("b.json"), b"[ ]\n").unwrap();
        assert!(
            matches!(verify_pack(&out, None), Err(VerifyError::Changed { path, .. }) if path == "b.json")
        );
        std::fs::write(out.join("b.json"), b"[]\n").unwrap();
        std::fs::write(out.join("extra.txt"), b"").unwrap();
        assert_eq!(
            verify_pack(&out, None),
            Err(VerifyError::Unlisted("extra.txt".into()))
        );
        std::fs::remove_file(out.join("extra.txt")).unwrap();
        let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
        std::fs::write(
            out.join("manifest.json"),
            manifest.replace("\"generated_by\": \"t\"", "\"generated_by\": \"u\""),
        )
        .unwrap();
        assert_eq!(verify_pack(&out, None), Err(VerifyError::BadSignature));
        assert!(
            PackDir::create(&out).is_err(),
            "an existing pack is never overwritten"
        );
        let tar = tar_dir(&out, "p").unwrap();
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(&tar[257..262], b"ustar");
        // Read back: every file of the pack, in name order, with its exact bytes.
        let mut archive = ::tar::Archive::new(tar.as_slice());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let name = path.strip_prefix("p/").unwrap().to_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            assert_eq!(bytes, std::fs::read(out.join(&name)).unwrap(), "{name}");
            names.push(name);
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        assert_eq!(names, on_disk);
    }
}
