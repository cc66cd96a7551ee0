//! Post-link fix-up of a livepatch module: relocations against `.klp.sym.*` placeholders move
//! into `.klp.rela.<obj>.<section>` sections (SHF_RELA_LIVEPATCH) and the placeholders become
//! SHN_LIVEPATCH symbols. This must run after kbuild's final link: `ld` rewrites both.

use std::collections::BTreeMap;

use object::build::Id;
use object::build::elf::{Relocation, SectionData, SectionId};
use object::elf;

use crate::ElfError;
use crate::model::{SUPPORTED_RELOCATIONS, read_builder, reloc_width, write_builder};

/// `SHN_LIVEPATCH` (in the OS-specific range).
pub const SHN_LIVEPATCH: u16 = 0xff20;
/// `SHF_RELA_LIVEPATCH` (in `SHF_MASKOS`).
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FixupSummary {
    /// Created `.klp.rela.*` sections and their relocation counts.
    pub sections: BTreeMap<String, usize>,
    /// Placeholder symbols turned into SHN_LIVEPATCH symbols.
    pub symbols: Vec<String>,
}

/// The object named in `.klp.sym.<obj>.<name>,<pos>`.
fn klp_object(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(".klp.sym.")?;
    let (obj, tail) = rest.split_once('.')?;
    let (sym, pos) = tail.rsplit_once(',')?;
    (!obj.is_empty() && !sym.is_empty() && pos.parse::<u32>().is_ok()).then_some(obj)
}

/// Rewrites a kbuild-linked livepatch `.ko`: every relocation against a `.klp.sym.<obj>.*`
/// placeholder moves into `.klp.rela.<obj>.<section>`, which the kernel applies when `obj`
/// (vmlinux, or a module when it loads) is patched. The kernel requires that split: a
/// module's klp relocation section may not refer to vmlinux symbols.
pub fn fixup_module(ko: &[u8]) -> Result<(Vec<u8>, FixupSummary), ElfError> {
    let mut b = read_builder(ko, "linked module")?;
    let mut klp = BTreeMap::new();
    for s in &b.symbols {
        let name = String::from_utf8_lossy(&s.name);
        if name.starts_with(".klp.sym.") {
            let Some(obj) = klp_object(&name) else {
                return Err(ElfError::Symbol {
                    symbol: name.into_owned(),
                    section: ".symtab".into(),
                    reason: "malformed klp symbol name (want .klp.sym.<obj>.<name>,<pos>)".into(),
                });
            };
            if s.section.is_some() {
                return Err(ElfError::Symbol {
                    symbol: name.clone().into_owned(),
                    section: ".symtab".into(),
                    reason: "a klp placeholder is defined in the module; it must stay undefined until the fix-up".into(),
                });
            }
            let obj = obj.to_owned();
            klp.insert(s.id().index(), (name.into_owned(), obj));
        }
    }
    let symtab = b
        .sections
        .iter()
        .find(|s| matches!(s.data, SectionData::Symbol))
        .map(|s| s.id())
        .ok_or_else(|| ElfError::Module {
            section: ".symtab".into(),
            reason: "the module has no symbol table".into(),
        })?;
    let mut moved: Vec<(SectionId, String, Vec<Relocation>)> = Vec::new();
    let rela_ids: Vec<SectionId> = b
        .sections
        .iter()
        .filter(|s| matches!(s.data, SectionData::Relocation(_)))
        .map(|s| s.id())
        .collect();
    for rid in rela_ids {
        let base = b.sections.get(rid).sh_info_section;
        let Some(base) = base else { continue };
        let base_name = String::from_utf8_lossy(&b.sections.get(base).name).into_owned();
        let base_data: Vec<u8> = match &b.sections.get(base).data {
            SectionData::Data(d) => d.to_vec(),
            _ => Vec::new(),
        };
        let SectionData::Relocation(relocs) = &mut b.sections.get_mut(rid).data else {
            continue;
        };
        let (to_move, stay): (Vec<Relocation>, Vec<Relocation>) = relocs
            .drain(..)
            .partition(|r| r.symbol.is_some_and(|s| klp.contains_key(&s.index())));
        *relocs = stay;
        if to_move.is_empty() {
            continue;
        }
        for r in &to_move {
            if !SUPPORTED_RELOCATIONS.contains(&r.r_type.0) {
                return Err(ElfError::RelocationType {
                    section: base_name.clone(),
                    offset: r.r_offset,
                    r_type: r.r_type.0,
                });
            }
            let lo = r.r_offset as usize;
            let hi = lo.saturating_add(reloc_width(r.r_type.0) as usize);
            if base_data
                .get(lo..hi)
                .is_some_and(|b| b.iter().any(|&x| x != 0))
            {
                return Err(ElfError::Module {
                    section: base_name.clone(),
                    reason: format!(
                        "bytes at {:#x} under a klp relocation are not zero; the kernel would refuse to apply it",
                        r.r_offset
                    ),
                });
            }
        }
        let mut by_object: BTreeMap<&str, Vec<Relocation>> = BTreeMap::new();
        for r in to_move {
            let obj = r
                .symbol
                .and_then(|s| klp.get(&s.index()))
                .map_or("vmlinux", |(_, o)| o.as_str());
            by_object.entry(obj).or_default().push(r);
        }
        for (obj, relocs) in by_object {
            moved.push((base, format!(".klp.rela.{obj}.{base_name}"), relocs));
        }
    }
    let mut summary = FixupSummary::default();
    for (base, name, relocs) in moved {
        *summary.sections.entry(name.clone()).or_default() += relocs.len();
        let s = b.sections.add();
        s.name = name.into_bytes().into();
        s.sh_type = elf::SHT_RELA;
        s.sh_flags =
            elf::SectionFlags(elf::SHF_ALLOC.0 | elf::SHF_INFO_LINK.0 | SHF_RELA_LIVEPATCH);
        s.sh_link_section = Some(symtab);
        s.sh_info_section = Some(base);
        s.sh_addralign = 8;
        s.sh_entsize = 24;
        s.data = SectionData::Relocation(relocs);
    }
    for s in &mut b.symbols {
        if let Some((name, _)) = klp.get(&s.id().index()) {
            s.section = None;
            s.st_shndx = elf::SymbolSection(SHN_LIVEPATCH);
            summary.symbols.push(name.clone());
        }
    }
    strip_debug_info(&mut b);
    Ok((write_builder(b, "livepatch module")?, summary))
}

/// Drops the DWARF sections (and their relocations and symbols) kbuild's generated files
/// bring: the kernel never reads them, and they weighed ten times the patch's code.
fn strip_debug_info(b: &mut object::build::elf::Builder<'_>) {
    strip(b, |name| name.starts_with(b".debug_"));
}

/// The sections objtool writes into an object (unwind tables and the lists of call, return,
/// retpoline and endbr sites).
const OBJTOOL_SECTIONS: [&[u8]; 7] = [
    b".orc_unwind",
    b".orc_unwind_ip",
    b".orc_header",
    b".return_sites",
    b".call_sites",
    b".retpoline_sites",
    b".ibt_endbr_seal",
];

/// `object` without what objtool wrote into it. Where the kernel's kbuild runs objtool on a
/// whole module at its link (IBT or clang LTO kernels, Linux 6.2 on), it skips a module that
/// already has such sections, and the code the link adds (the klp tables' init and exit) is
/// left out of them: its return thunks unlisted, the kernel warns when it loads the module.
pub fn strip_objtool_sections(object: &[u8]) -> Result<Vec<u8>, ElfError> {
    let mut b = read_builder(object, "patch object")?;
    strip(&mut b, |name| OBJTOOL_SECTIONS.contains(&name));
    write_builder(b, "patch object")
}

/// Deletes the sections `drop` names (and their relocation sections and symbols).
fn strip(b: &mut object::build::elf::Builder<'_>, drop: impl Fn(&[u8]) -> bool) {
    let base =
        |name: &[u8]| -> bool { drop(name) || name.strip_prefix(b".rela").is_some_and(&drop) };
    let mut gone = std::collections::BTreeSet::new();
    for s in b.sections.iter_mut() {
        if base(&s.name) {
            s.delete = true;
            gone.insert(s.id().index());
        }
    }
    for y in b.symbols.iter_mut() {
        if y.section.is_some_and(|id| gone.contains(&id.index())) {
            y.delete = true;
        }
    }
}

/// Checks a finished module: every klp placeholder is SHN_LIVEPATCH and every
/// `.klp.rela.*` section has the livepatch flag. Uses the plain reader, because the builder
/// cannot read allocated relocation sections.
pub fn verify_module(ko: &[u8]) -> Result<FixupSummary, ElfError> {
    use object::read::elf::{ElfFile64, FileHeader, SectionHeader, Sym};
    let parse = |reason: String| ElfError::Parse {
        file: "livepatch module".into(),
        reason,
    };
    let file = ElfFile64::<object::Endianness>::parse(ko).map_err(|e| parse(e.to_string()))?;
    let endian = file.endian();
    let header = file.elf_header();
    let sections = header
        .sections(endian, ko)
        .map_err(|e| parse(e.to_string()))?;
    let mut summary = FixupSummary::default();
    for sh in sections.iter() {
        let name = sections
            .section_name(endian, sh)
            .map_err(|e| parse(e.to_string()))?;
        let name = String::from_utf8_lossy(name);
        if name.starts_with(".klp.rela.") {
            if sh.sh_flags(endian).0 & SHF_RELA_LIVEPATCH == 0
                || sh.sh_type(endian) != elf::SHT_RELA
            {
                return Err(ElfError::Module {
                    section: name.into_owned(),
                    reason: "klp relocation section without SHT_RELA/SHF_RELA_LIVEPATCH".into(),
                });
            }
            let n = sh.sh_size(endian) / 24;
            summary.sections.insert(name.into_owned(), n as usize);
        }
    }
    let symbols = sections
        .symbols(endian, ko, elf::SHT_SYMTAB)
        .map_err(|e| parse(e.to_string()))?;
    for sym in symbols.iter() {
        let name = symbols
            .symbol_name(endian, sym)
            .map_err(|e| parse(e.to_string()))?;
        let name = String::from_utf8_lossy(name);
        if name.starts_with(".klp.sym.") {
            if sym.st_shndx(endian).0 != SHN_LIVEPATCH {
                return Err(ElfError::Symbol {
                    symbol: name.into_owned(),
                    section: ".symtab".into(),
                    reason: "klp placeholder left undefined; the kernel would resolve it to 0"
                        .into(),
                });
            }
            summary.symbols.push(name.into_owned());
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klp_symbol_names_are_parsed_strictly() {
        assert_eq!(
            klp_object(".klp.sym.vmlinux.saved_command_line,0"),
            Some("vmlinux")
        );
        assert_eq!(klp_object(".klp.sym.xfs.xstats.0,1"), Some("xfs"));
        assert_eq!(klp_object(".klp.sym.vmlinux.foo"), None);
        assert_eq!(klp_object(".klp.sym..foo,0"), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for len in [0usize, 4, 64, 200] {
            let junk: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            assert!(fixup_module(&junk).is_err());
            assert!(verify_module(&junk).is_err());
        }
    }
}
