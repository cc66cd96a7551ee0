//! Inspection of a kernel module file (`.ko`) before it is offered to the kernel.

use std::path::{Path, PathBuf};

use klive_format::{BuildId, PatchLevel, modinfo};
use object::{Object, ObjectSection};

/// Why a file is not a usable module.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("reading module {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid ELF object ({reason}); the file may be truncated or not a kernel module"
    )]
    NotElf { path: PathBuf, reason: String },
    #[error("{path} is not a kernel module: it has no {section} section")]
    MissingSection {
        path: PathBuf,
        section: &'static str,
    },
    #[error("{path} has no `{tag}` in its .modinfo")]
    MissingTag { path: PathBuf, tag: &'static str },
}

/// What klive needs to know about a module, read from its `.modinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    pub path: PathBuf,
    pub name: String,
    pub vermagic: String,
    /// `livepatch=Y`
    pub livepatch: bool,
    /// klive's tags; `None` for modules not built by klive.
    pub klive_level: Option<PatchLevel>,
    pub klive_build_id: Option<BuildId>,
    pub klive_fixes: Vec<String>,
    /// Whether a module signature is appended (`~Module signature appended~`).
    pub signed: bool,
    pub size: u64,
}

impl ModuleInfo {
    /// The kernel release the module was built for: the first word of vermagic.
    pub fn vermagic_release(&self) -> &str {
        self.vermagic.split_whitespace().next().unwrap_or("")
    }
}

const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

/// Reads and inspects a module file. Never panics, whatever the bytes.
pub fn inspect(path: &Path) -> Result<ModuleInfo, ModuleError> {
    let data = std::fs::read(path).map_err(|source| ModuleError::Read {
        path: path.to_owned(),
        source,
    })?;
    inspect_bytes(path, &data)
}

pub fn inspect_bytes(path: &Path, data: &[u8]) -> Result<ModuleInfo, ModuleError> {
    let not_elf = |reason: String| ModuleError::NotElf {
        path: path.to_owned(),
        reason,
    };
    let file = object::read::elf::ElfFile64::<object::Endianness>::parse(data)
        .map_err(|e| not_elf(e.to_string()))?;
    if file.kind() != object::ObjectKind::Relocatable {
        return Err(not_elf("not a relocatable object".into()));
    }
    // Touch every section header so a truncated file is caught here, not by the kernel.
    for section in file.sections() {
        if section.kind() != object::SectionKind::UninitializedData {
            section
                .data()
                .map_err(|e| not_elf(format!("section {}: {e}", section.name().unwrap_or("?"))))?;
        }
    }
    if file.section_by_name(".gnu.linkonce.this_module").is_none() {
        return Err(ModuleError::MissingSection {
            path: path.to_owned(),
            section: ".gnu.linkonce.this_module",
        });
    }
    let modinfo_data = file
        .section_by_name(".modinfo")
        .ok_or(ModuleError::MissingSection {
            path: path.to_owned(),
            section: ".modinfo",
        })?
        .data()
        .map_err(|e| not_elf(e.to_string()))?;
    let tags = parse_modinfo(modinfo_data);
    let get = |key: &str| tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let missing = |tag: &'static str| ModuleError::MissingTag {
        path: path.to_owned(),
        tag,
    };
    let name = get("name").ok_or_else(|| missing("name"))?;
    let vermagic = get("vermagic").ok_or_else(|| missing("vermagic"))?;
    Ok(ModuleInfo {
        path: path.to_owned(),
        name,
        vermagic,
        livepatch: get("livepatch").as_deref() == Some("Y"),
        klive_level: get(modinfo::LEVEL).and_then(|l| l.parse().ok()),
        klive_build_id: get(modinfo::BUILD_ID).and_then(|b| b.parse().ok()),
        klive_fixes: get(modinfo::FIXES)
            .map(|f| {
                f.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        signed: data.ends_with(SIGNATURE_MAGIC),
        size: data.len() as u64,
    })
}

/// `.modinfo` is a sequence of NUL-terminated `key=value` strings (with NUL padding); read
/// for reporting, so a non-UTF-8 entry is shown with replacement characters.
pub fn parse_modinfo(data: &[u8]) -> Vec<(String, String)> {
    klive_format::modinfo::parse(data, klive_format::modinfo::Utf8::Lossy).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_strings() {
        let data = b"license=GPL\0\0\0livepatch=Y\0klive_level=2\0vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions \0junk\0";
        let tags = parse_modinfo(data);
        assert_eq!(tags.len(), 4);
        assert_eq!(tags[2], ("klive_level".into(), "2".into()));
        assert_eq!(
            tags[3].1,
            "6.1.0-56-amd64 SMP preempt mod_unload modversions "
        );
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let p = Path::new("x.ko");
        assert!(matches!(
            inspect_bytes(p, b"hello"),
            Err(ModuleError::NotElf { .. })
        ));
        assert!(matches!(
            inspect_bytes(p, &[]),
            Err(ModuleError::NotElf { .. })
        ));
        // An ELF header claiming sections far beyond the end of the file.
        let mut hdr = vec![0u8; 64];
        hdr[..4].copy_from_slice(b"\x7fELF");
        hdr[4] = 2; // 64-bit
        hdr[5] = 1; // little endian
        hdr[6] = 1;
        hdr[16] = 1; // ET_REL
        hdr[18] = 62; // x86-64
        hdr[40..48].copy_from_slice(&4096u64.to_le_bytes()); // e_shoff
        hdr[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        hdr[60..62].copy_from_slice(&10u16.to_le_bytes()); // e_shnum
        assert!(matches!(
            inspect_bytes(p, &hdr),
            Err(ModuleError::NotElf { .. })
        ));
    }
}
