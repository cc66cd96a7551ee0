//! Livepatch-shaped kernel modules (`.ko`) for tests, written with `object::write`.
//!
//! A module here is a relocatable x86-64 ELF with what klive and the kernel look at before
//! any code runs: `.modinfo` (the `key=value` tags), `.gnu.linkonce.this_module` (the
//! kernel's `struct module`, whose presence makes an object a module) and a one-instruction
//! `.text`. It carries no functions or klp relocations, so it serves every check that reads
//! a module, never one that runs it.
//!
//! ```
//! use klive_testkit::elf::ModuleBuilder;
//!
//! let ko = ModuleBuilder::klive("klive_t_l2", 2, "a1b2c3d4e5f60718")
//!     .vermagic("6.1.0-56-amd64 SMP preempt mod_unload modversions ")
//!     .fixes(&["CVE-2024-26581"])
//!     .build();
//! assert_eq!(&ko[..4], b"\x7fELF");
//! ```

use std::path::{Path, PathBuf};

use klive_format::modinfo;
use object::write::Object;
use object::{Architecture, BinaryFormat, Endianness, SectionKind};

/// Size of the kernel's `struct module` is irrelevant to every reader of the file; the
/// section only has to exist and hold something.
const THIS_MODULE_SIZE: usize = 64;

/// A kernel module under construction: its `.modinfo` tags, in the order they are written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleBuilder {
    tags: Vec<(String, String)>,
}

impl ModuleBuilder {
    /// A module with no tags at all (not even `name`): for tests of what a reader refuses.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A plain (not livepatch) module: `name=NAME` only.
    pub fn new(name: &str) -> Self {
        Self::empty().tag("name", name)
    }

    /// What klive-build makes for `level` of kernel `build_id`: `license=GPL`, `livepatch=Y`,
    /// `klive_level`, `klive_build_id`, `version` (the level) and `name`. Add `vermagic` for
    /// anything the agent is to load.
    pub fn klive(name: &str, level: u32, build_id: &str) -> Self {
        let level = level.to_string();
        Self::empty()
            .tag("license", "GPL")
            .tag("livepatch", "Y")
            .tag(modinfo::LEVEL, &level)
            .tag(modinfo::BUILD_ID, build_id)
            .tag("version", &level)
            .tag("name", name)
    }

    /// Sets `key=value`: replaces the value of a tag already there (keeping its place), or
    /// appends a new one.
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        match self.tags.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => value.clone_into(v),
            None => self.tags.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    /// Drops the tag `key`, if present.
    pub fn without(mut self, key: &str) -> Self {
        self.tags.retain(|(k, _)| k != key);
        self
    }

    /// `vermagic=`: the kernel release (first word) and build options the module was built for.
    pub fn vermagic(self, vermagic: &str) -> Self {
        self.tag("vermagic", vermagic)
    }

    /// `klive_fixes=`: the CVE ids the level fixes, comma-separated.
    pub fn fixes(self, cves: &[&str]) -> Self {
        self.tag(modinfo::FIXES, &cves.join(","))
    }

    /// The value of `name=`, if set.
    pub fn name(&self) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.as_str())
    }

    /// The `.ko` bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = obj.add_section(Vec::new(), b".text".to_vec(), SectionKind::Text);
        obj.append_section_data(text, &[0xc3], 1); // ret
        let mut info = Vec::new();
        for (key, value) in &self.tags {
            info.extend_from_slice(key.as_bytes());
            info.push(b'=');
            info.extend_from_slice(value.as_bytes());
            info.push(0);
        }
        let section = obj.add_section(Vec::new(), b".modinfo".to_vec(), SectionKind::ReadOnlyData);
        obj.append_section_data(section, &info, 1);
        let this_module = obj.add_section(
            Vec::new(),
            b".gnu.linkonce.this_module".to_vec(),
            SectionKind::Data,
        );
        obj.append_section_data(this_module, &[0; THIS_MODULE_SIZE], 8);
        // Only an internal inconsistency of `object` could fail here; a test wants to stop.
        obj.write()
            .expect("object::write of a section-only relocatable ELF")
    }

    /// Writes the module to `dir/NAME.ko` (`module.ko` without a name) and returns the path.
    pub fn write_to(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.ko", self.name().unwrap_or("module")));
        std::fs::write(&path, self.build())
            .unwrap_or_else(|e| panic!("writing test module {}: {e}", path.display()));
        path
    }
}

/// The bytes of a module with exactly these `.modinfo` tags, in this order (a repeated key is
/// written twice, as given).
///
/// The workspace's only such function (klive-kernel's hand-written `fake::module_bytes`, which
/// it replaced, is gone).
pub fn module_bytes(tags: &[(&str, &str)]) -> Vec<u8> {
    ModuleBuilder {
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
    .build()
}

/// The release manifest of `ko` as a publisher writes it: level `level` of module `name` for
/// the kernel build `build_id` (release `release`), with its digest and size and one fix.
pub fn manifest(
    build_id: &str,
    release: &str,
    level: u32,
    name: &str,
    ko: &[u8],
) -> klive_format::release::ReleaseManifest {
    use klive_format::release::{Fix, ModuleDigest, ReleaseManifest, Severity, TargetKernel};
    ReleaseManifest {
        format: klive_format::release::MANIFEST_FORMAT,
        module_name: name.to_owned(),
        level: klive_format::PatchLevel::new(level).expect("a test level is 1 or more"),
        kernel: TargetKernel {
            build_id: build_id.parse().expect("a test build-id is hex"),
            release: release.to_owned(),
            version: None,
            distro: None,
            arch: "x86_64".into(),
        },
        module: ModuleDigest {
            file: format!("{name}.ko"),
            sha256: klive_format::digest::sha256_hex(ko),
            size: ko.len() as u64,
        },
        fixes: vec![Fix {
            cve: "CVE-2024-26581".into(),
            severity: Severity::High,
            cvss: Some(7.8),
            summary: "netfilter: nft_set_rbtree: skip end interval element from gc".into(),
            reference: None,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object as _, ObjectSection as _};

    #[test]
    fn a_module_has_the_sections_and_tags_readers_look_for() {
        let ko = ModuleBuilder::klive("klive_t_l3", 3, "a1b2c3d4")
            .vermagic("6.1.0-56-amd64 SMP ")
            .fixes(&["CVE-1", "CVE-2"])
            .build();
        let file = object::File::parse(&*ko).unwrap();
        assert_eq!(file.kind(), object::ObjectKind::Relocatable);
        assert_eq!(file.architecture(), Architecture::X86_64);
        assert!(file.section_by_name(".gnu.linkonce.this_module").is_some());
        let info = file.section_by_name(".modinfo").unwrap();
        let tags = modinfo::parse(info.data().unwrap(), modinfo::Utf8::Strict).unwrap();
        let get = |key: &str| tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("name"), Some("klive_t_l3"));
        assert_eq!(get("livepatch"), Some("Y"));
        assert_eq!(get(modinfo::LEVEL), Some("3"));
        assert_eq!(get(modinfo::BUILD_ID), Some("a1b2c3d4"));
        assert_eq!(get(modinfo::FIXES), Some("CVE-1,CVE-2"));
        assert_eq!(get("vermagic"), Some("6.1.0-56-amd64 SMP "));
    }

    #[test]
    fn tags_replace_in_place_and_module_bytes_keeps_the_given_order() {
        let m = ModuleBuilder::new("a").tag("x", "1").tag("name", "b");
        assert_eq!(m.name(), Some("b"));
        assert_eq!(m.clone().without("name").name(), None);
        let ko = module_bytes(&[("vermagic", "v"), ("name", "n")]);
        let file = object::File::parse(&*ko).unwrap();
        let data = file.section_by_name(".modinfo").unwrap().data().unwrap();
        assert_eq!(data, b"vermagic=v\0name=n\0");
    }
}
