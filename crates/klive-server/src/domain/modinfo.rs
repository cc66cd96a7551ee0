//! Reads the `.modinfo` section of a kernel module (`key=value` strings separated by NUL
//! bytes) so the server can check that a module is the one its manifest describes.

use object::{Object, ObjectSection};

use crate::error::Error;

/// The `key=value` pairs of the module's `.modinfo` section, in file order.
pub fn read(module: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let file = object::File::parse(module)
        .map_err(|e| Error::InvalidModule(format!("not an ELF object ({e})")))?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(Error::InvalidModule("not an ELF object".into()));
    }
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| Error::InvalidModule("it has no .modinfo section".into()))?;
    let data = section
        .data()
        .map_err(|e| Error::InvalidModule(format!("its .modinfo section cannot be read ({e})")))?;
    klive_format::modinfo::parse(data, klive_format::modinfo::Utf8::Strict).map_err(|e| {
        Error::InvalidModule(format!(
            "its .modinfo has a non-UTF-8 entry at offset {}",
            e.offset
        ))
    })
}

/// True if the module is a 64-bit ELF object for x86-64.
pub fn is_x86_64(module: &[u8]) -> bool {
    object::File::parse(module)
        .is_ok_and(|f| f.architecture() == object::Architecture::X86_64 && f.is_64())
}

/// The value of the first `tag` entry.
pub fn get<'a>(info: &'a [(String, String)], tag: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == tag).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use object::write;

    use super::*;

    /// A module with the given `.modinfo` tags (klive-testkit's builder, as every suite uses).
    fn module_with_modinfo(tags: &[(&str, &str)]) -> Vec<u8> {
        tags.iter()
            .fold(klive_testkit::elf::ModuleBuilder::empty(), |m, (k, v)| {
                m.tag(k, v)
            })
            .build()
    }

    #[test]
    fn reads_tags_from_a_module() {
        let ko =
            module_with_modinfo(&[("license", "GPL"), ("klive_level", "3"), ("livepatch", "Y")]);
        let info = read(&ko).unwrap();
        assert_eq!(get(&info, "klive_level"), Some("3"));
        assert_eq!(get(&info, "license"), Some("GPL"));
        assert_eq!(get(&info, "klive_build_id"), None);
    }

    #[test]
    fn refuses_garbage_truncation_and_missing_section() {
        assert!(matches!(read(b"not an elf"), Err(Error::InvalidModule(_))));
        let ko = module_with_modinfo(&[("klive_level", "3")]);
        for cut in [0, 10, 64, ko.len() / 2, ko.len() - 1] {
            // must not panic; a cut file is refused or, if the section survives, read
            let _ = read(&ko[..cut]);
        }
        assert!(read(&ko[..ko.len() / 2]).is_err());
        let mut obj = write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        obj.add_section(Vec::new(), b".text".to_vec(), object::SectionKind::Text);
        let bare = obj.write().unwrap();
        assert!(matches!(read(&bare), Err(Error::InvalidModule(m)) if m.contains(".modinfo")));
    }
}
