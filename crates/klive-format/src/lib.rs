//! The only serialisable types of klive: identifiers, release manifests, the agent's reports.
//!
//! Every other crate converts its own types to and from these at its edge. This crate does no
//! I/O and depends on nothing that does. It also holds the one SHA-256 and hex spelling
//! (`digest`) and the one percentile definition (`stats`) that those types and figures use.

pub mod agent_state;
pub mod api;
pub mod debver;
pub mod digest;
pub mod evidence;
mod ids;
pub mod release;
pub mod stats;
pub mod status;
pub mod text;
pub mod validation;

pub use ids::{BuildId, IdError, PatchLevel};

/// Names of the modinfo tags klive puts in every livepatch module it builds.
pub mod modinfo {
    /// Cumulative patch level, decimal (`klive_level=3`).
    pub const LEVEL: &str = "klive_level";
    /// GNU build-id (hex) of the one kernel build the module was made for.
    pub const BUILD_ID: &str = "klive_build_id";
    /// Comma-separated CVE ids fixed by this level (optional).
    pub const FIXES: &str = "klive_fixes";
    /// Every klive livepatch module name starts with this prefix.
    pub const MODULE_PREFIX: &str = "klive_";

    /// What to do with a `.modinfo` entry that is not UTF-8.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Utf8 {
        /// Replace invalid bytes (for reporting what a module says).
        Lossy,
        /// Refuse the section (for checking a module against its manifest).
        Strict,
    }

    /// A `.modinfo` entry that is not UTF-8 (with [`Utf8::Strict`]).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NonUtf8Entry {
        /// Byte offset of the entry in the section.
        pub offset: usize,
    }

    /// The `key=value` pairs of a `.modinfo` section (NUL-terminated strings, NUL padding
    /// between them), in section order. Entries without `=` are skipped.
    pub fn parse(data: &[u8], utf8: Utf8) -> Result<Vec<(String, String)>, NonUtf8Entry> {
        let mut out = Vec::new();
        let mut offset = 0;
        for entry in data.split(|&b| b == 0) {
            let at = offset;
            offset += entry.len() + 1;
            if entry.is_empty() {
                continue;
            }
            let text = match (std::str::from_utf8(entry), utf8) {
                (Ok(t), _) => std::borrow::Cow::Borrowed(t),
                (Err(_), Utf8::Lossy) => String::from_utf8_lossy(entry),
                (Err(_), Utf8::Strict) => return Err(NonUtf8Entry { offset: at }),
            };
            if let Some((key, value)) = text.split_once('=') {
                out.push((key.to_owned(), value.to_owned()));
            }
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn entries_padding_and_strictness() {
            let data = b"license=GPL\0\0\0livepatch=Y\0junk\0vermagic=6.1.0 SMP \0";
            let tags = parse(data, Utf8::Strict).unwrap();
            assert_eq!(
                tags,
                [
                    ("license".to_owned(), "GPL".to_owned()),
                    ("livepatch".to_owned(), "Y".to_owned()),
                    ("vermagic".to_owned(), "6.1.0 SMP ".to_owned()),
                ]
            );
            let bad = b"license=GPL\0author=\xff\0klive_level=2\0";
            assert_eq!(parse(bad, Utf8::Strict), Err(NonUtf8Entry { offset: 12 }));
            let lossy = parse(bad, Utf8::Lossy).unwrap();
            assert_eq!(lossy[1], ("author".to_owned(), "\u{fffd}".to_owned()));
            assert_eq!(lossy[2], ("klive_level".to_owned(), "2".to_owned()));
            assert_eq!(parse(b"", Utf8::Strict), Ok(vec![]));
        }
    }
}
