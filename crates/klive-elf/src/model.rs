//! An owned, index-stable snapshot of a relocatable x86-64 ELF object.
//!
//! Indices are those of `object::build::elf::Builder`, so the emitter can re-read the same
//! bytes with the builder and refer to the same sections and symbols.

use object::build::Id;
use object::build::elf::{Builder, SectionData};
use object::elf;

use crate::ElfError;

pub const R_X86_64_NONE: u32 = 0;
pub const R_X86_64_64: u32 = 1;
pub const R_X86_64_PC32: u32 = 2;
pub const R_X86_64_PLT32: u32 = 4;
pub const R_X86_64_32: u32 = 10;
pub const R_X86_64_32S: u32 = 11;
pub const R_X86_64_PC64: u32 = 24;

/// Relocation types the 6.1 x86 module loader applies.
pub const SUPPORTED_RELOCATIONS: [u32; 7] = [
    R_X86_64_NONE,
    R_X86_64_64,
    R_X86_64_PC32,
    R_X86_64_PLT32,
    R_X86_64_32,
    R_X86_64_32S,
    R_X86_64_PC64,
];

#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub sh_type: u32,
    pub flags: u64,
    pub size: u64,
    /// Empty for `SHT_NOBITS`.
    pub data: Vec<u8>,
    /// Relocations applying to this section (from its `.rela` section), sorted by offset.
    pub relocs: Vec<Reloc>,
    /// For a relocation section: the section it applies to.
    pub rela_base: Option<usize>,
    /// The relocation section applying to this one.
    pub rela: Option<usize>,
    /// The FUNC or OBJECT symbol that owns the whole section (`-ffunction-sections`).
    pub bundled: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Symbol {
    pub name: String,
    pub st_type: u8,
    pub bind: u8,
    pub section: Option<usize>,
    pub shndx: u16,
    pub value: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloc {
    pub offset: u64,
    pub r_type: u32,
    pub sym: Option<usize>,
    pub addend: i64,
}

#[derive(Debug, Clone)]
pub struct Elf {
    pub sections: Vec<Option<Section>>,
    pub symbols: Vec<Option<Symbol>>,
}

impl Symbol {
    pub fn is_func(&self) -> bool {
        self.st_type == elf::STT_FUNC.0
    }
    pub fn is_object(&self) -> bool {
        self.st_type == elf::STT_OBJECT.0
    }
    pub fn is_section(&self) -> bool {
        self.st_type == elf::STT_SECTION.0
    }
    pub fn is_local(&self) -> bool {
        self.bind == elf::STB_LOCAL.0
    }
    pub fn is_undefined(&self) -> bool {
        self.section.is_none() && self.shndx == elf::SHN_UNDEF.0
    }
}

impl Section {
    pub fn is_strings(&self) -> bool {
        self.flags & elf::SHF_STRINGS.0 != 0
    }
    pub fn is_alloc(&self) -> bool {
        self.flags & elf::SHF_ALLOC.0 != 0
    }
}

/// Parses `data` as a 64-bit x86-64 relocatable object.
/// Serialises a builder, the counterpart of [`read_builder`]; `what` names the object in the
/// error.
pub fn write_builder(b: Builder<'_>, what: &str) -> Result<Vec<u8>, ElfError> {
    let mut out = Vec::new();
    b.write(&mut out).map_err(|e| ElfError::Write {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(out)
}

pub fn read_builder<'d>(data: &'d [u8], file: &str) -> Result<Builder<'d>, ElfError> {
    let b = Builder::read64(data).map_err(|e| ElfError::Parse {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    if b.header.e_type != elf::ET_REL {
        return Err(ElfError::Parse {
            file: file.to_owned(),
            reason: "not a relocatable object (ET_REL)".into(),
        });
    }
    if b.header.e_machine != elf::EM_X86_64 {
        return Err(ElfError::Parse {
            file: file.to_owned(),
            reason: "not an x86-64 object".into(),
        });
    }
    Ok(b)
}

impl Elf {
    pub fn parse(data: &[u8], file: &str) -> Result<Elf, ElfError> {
        let b = read_builder(data, file)?;
        Ok(Self::from_builder(&b))
    }

    pub fn from_builder(b: &Builder<'_>) -> Elf {
        // One slot per builder index, so that indices here are the builder's.
        let slots = |indices: &mut dyn Iterator<Item = usize>| indices.max().map_or(0, |i| i + 1);
        let nsec = slots(&mut b.sections.iter().map(|s| s.id().index()));
        let nsym = slots(&mut b.symbols.iter().map(|s| s.id().index()));
        let mut sections: Vec<Option<Section>> = vec![None; nsec];
        let mut symbols: Vec<Option<Symbol>> = vec![None; nsym];
        for s in &b.symbols {
            symbols[s.id().index()] = Some(Symbol {
                name: String::from_utf8_lossy(&s.name).into_owned(),
                st_type: s.st_info.st_type().0,
                bind: s.st_info.st_bind().0,
                section: s.section.map(|id| id.index()),
                shndx: s.st_shndx.0,
                value: s.st_value,
                size: s.st_size,
            });
        }
        for s in &b.sections {
            let (data, size, relocs) = match &s.data {
                SectionData::Data(d) => (d.to_vec(), d.len() as u64, Vec::new()),
                SectionData::UninitializedData(n) => (Vec::new(), *n, Vec::new()),
                SectionData::Relocation(r) => {
                    let relocs = r
                        .iter()
                        .map(|r| Reloc {
                            offset: r.r_offset,
                            r_type: r.r_type.0,
                            sym: r.symbol.map(|id| id.index()),
                            addend: r.r_addend,
                        })
                        .collect();
                    (Vec::new(), 0, relocs)
                }
                _ => (Vec::new(), s.sh_size, Vec::new()),
            };
            let rela_base = match s.data {
                SectionData::Relocation(_) => s.sh_info_section.map(|id| id.index()),
                _ => None,
            };
            sections[s.id().index()] = Some(Section {
                name: String::from_utf8_lossy(&s.name).into_owned(),
                sh_type: s.sh_type.0,
                flags: s.sh_flags.0,
                size,
                data,
                relocs,
                rela_base,
                rela: None,
                bundled: None,
            });
        }
        // Move relocations onto their base sections.
        for i in 0..sections.len() {
            let Some(base) = sections[i].as_ref().and_then(|s| s.rela_base) else {
                continue;
            };
            let mut relocs = std::mem::take(&mut sections[i].as_mut().expect("present").relocs);
            relocs.sort_by_key(|r| r.offset);
            if let Some(Some(bs)) = sections.get_mut(base) {
                bs.relocs = relocs;
                bs.rela = Some(i);
            }
        }
        let mut e = Elf { sections, symbols };
        for i in 0..e.symbols.len() {
            let Some(sym) = &e.symbols[i] else { continue };
            let Some(sec) = sym.section else { continue };
            if !(sym.is_func() || sym.is_object()) {
                continue;
            }
            if let Some(Some(s)) = e.sections.get(sec)
                && (sym.value == 0 || (sym.is_func() && is_call_padding(&s.data, sym.value)))
                && owns_section(&s.name, &sym.name, sym.is_func())
            {
                let s = e.sections[sec].as_mut().expect("present");
                s.bundled = Some(i);
            }
        }
        e
    }

    pub fn sec(&self, i: usize) -> Option<&Section> {
        self.sections.get(i).and_then(Option::as_ref)
    }

    pub fn sym(&self, i: usize) -> Option<&Symbol> {
        self.symbols.get(i).and_then(Option::as_ref)
    }

    pub fn sections(&self) -> impl Iterator<Item = (usize, &Section)> {
        self.sections
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    pub fn symbols(&self) -> impl Iterator<Item = (usize, &Symbol)> {
        self.symbols
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    pub fn section_name(&self, i: usize) -> &str {
        self.sec(i)
            .map(|s| s.name.as_str())
            .unwrap_or("<no section>")
    }

    /// Resolves a relocation to a named symbol where possible: a section symbol of a bundled
    /// section becomes that section's symbol; a section symbol of a shared data section
    /// becomes the symbol that contains the target. Returns the symbol and the adjusted addend.
    pub fn resolve_target(&self, r: &Reloc) -> Option<(usize, i64)> {
        let si = r.sym?;
        let sym = self.sym(si)?;
        if !sym.is_section() {
            return Some((si, r.addend));
        }
        let Some(seci) = sym.section else {
            return Some((si, r.addend));
        };
        let sec = self.sec(seci)?;
        if let Some(b) = sec.bundled {
            // The owning symbol need not start the section (the NOP padding before 6.12's
            // functions): the addend becomes relative to the symbol.
            let at = self.sym(b).map_or(0, |s| s.value as i64);
            return Some((b, r.addend - at));
        }
        if sec.is_strings() || is_text_name(&sec.name) {
            return Some((si, r.addend));
        }
        // A PC-relative reference points at the end of the displacement: the target is the
        // addend plus 4, plus the length of any immediate after the displacement.
        let bias: &[i64] = if is_pc_relative(r.r_type) {
            &[4, 5, 6, 8]
        } else {
            &[0]
        };
        for b in bias {
            let t = r.addend.saturating_add(*b);
            if t < 0 {
                continue;
            }
            let t = t as u64;
            let hit = self.symbols().find(|(_, s)| {
                s.section == Some(seci)
                    && (s.is_object() || s.is_func())
                    && s.value <= t
                    && (t < s.value.saturating_add(s.size) || (s.size == 0 && t == s.value))
            });
            if let Some((i, s)) = hit {
                return Some((i, r.addend - s.value as i64));
            }
        }
        Some((si, r.addend))
    }

    /// True if a function's code starts with `call __fentry__` (after its `endbr64` where
    /// the kernel is built for IBT, and after the NOP padding of `CONFIG_CALL_PADDING`).
    pub fn has_fentry(&self, sec: usize) -> bool {
        let Some(s) = self.sec(sec) else { return false };
        let entry = s.bundled.and_then(|b| self.sym(b)).map_or(0, |f| f.value);
        let call = if s.data.get(entry as usize..entry as usize + 4) == Some(&ENDBR64[..]) {
            entry + 4
        } else {
            entry
        };
        s.relocs.iter().take(1).any(|r| {
            r.offset == call + 1
                && matches!(r.r_type, R_X86_64_PC32 | R_X86_64_PLT32)
                && r.sym
                    .and_then(|i| self.sym(i))
                    .is_some_and(|s| s.name == "__fentry__")
        })
    }
}

/// `endbr64`, the first instruction of an indirectly callable function under IBT.
pub const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// True if `data` holds only one-byte NOPs before offset `value` (at most 64 bytes): the
/// padding `CONFIG_CALL_PADDING` puts before every function (Linux 6.2 and later).
pub fn is_call_padding(data: &[u8], value: u64) -> bool {
    value > 0
        && value <= 64
        && data
            .get(..value as usize)
            .is_some_and(|p| p.iter().all(|&b| b == 0x90))
}

pub fn is_pc_relative(r_type: u32) -> bool {
    matches!(r_type, R_X86_64_PC32 | R_X86_64_PLT32 | R_X86_64_PC64)
}

pub fn reloc_width(r_type: u32) -> u64 {
    match r_type {
        R_X86_64_64 | R_X86_64_PC64 => 8,
        R_X86_64_NONE => 0,
        _ => 4,
    }
}

pub fn is_text_name(name: &str) -> bool {
    name == ".text" || name.starts_with(".text.")
}

const FUNC_PREFIXES: [&str; 3] = [".text.unlikely.", ".text.hot.", ".text."];
const OBJECT_PREFIXES: [&str; 8] = [
    ".data.rel.ro.local.",
    ".data.rel.local.",
    ".data.rel.ro.",
    ".data.rel.",
    ".rodata.",
    ".data.",
    ".bss.",
    ".tbss.",
];

/// Whether a section is `-ffunction-sections`/`-fdata-sections` output for one symbol.
pub fn owns_section(section: &str, symbol: &str, func: bool) -> bool {
    let prefixes: &[&str] = if func {
        &FUNC_PREFIXES
    } else {
        &OBJECT_PREFIXES
    };
    prefixes.iter().any(|p| {
        section.strip_prefix(p).is_some_and(|rest| {
            rest == symbol || (func && symbol.strip_suffix(".cold").is_some_and(|b| b == rest))
        })
    })
}

/// A name with compiler-chosen numbers removed: `foo.isra.0` → `foo.isra`,
/// `__func__.12` → `__func__`, `.rodata.f.str1.1` → `.rodata.f.str1`.
pub fn mangled(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, part) in name.split('.').enumerate() {
        if i > 0 && !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if i > 0 {
            out.push('.');
        }
        out.push_str(part);
    }
    // BTF_ID() names end in a counter (`__BTF_ID__struct__sock__4521`) that moves with
    // every BTF_ID earlier in the file.
    if out.starts_with("__BTF_ID__")
        && let Some((head, n)) = out.rsplit_once("__")
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        return head.to_owned();
    }
    if let Some(rest) = out.strip_prefix("__UNIQUE_ID_") {
        let trimmed = rest.trim_end_matches(|c: char| c.is_ascii_digit());
        return format!("__UNIQUE_ID_{trimmed}");
    }
    out
}

/// Statics the compiler or kernel macros create fresh in every copy of a function: they are
/// never correlated, always copied with the code that uses them.
pub fn is_special_static(name: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "__key.",
        "__warned.",
        "__already_done.",
        "__func__.",
        "__FUNCTION__.",
        "_rs.",
        "CSWTCH.",
        "_entry.",
        "descriptor.",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mangling_drops_compiler_numbers_only() {
        assert_eq!(mangled("foo.isra.0"), "foo.isra");
        assert_eq!(mangled("__func__.12"), "__func__");
        assert_eq!(mangled(".rodata.f.str1.1"), ".rodata.f.str1");
        assert_eq!(mangled("x86_64"), "x86_64");
        assert_eq!(mangled("__UNIQUE_ID_ddebug412"), "__UNIQUE_ID_ddebug");
        assert_eq!(
            mangled("__BTF_ID__struct__bpf_bloom_filter__313208"),
            "__BTF_ID__struct__bpf_bloom_filter"
        );
    }

    #[test]
    fn bundling_rules() {
        assert!(owns_section(".text.foo", "foo", true));
        assert!(owns_section(".text.unlikely.foo", "foo.cold", true));
        assert!(!owns_section(".text", "foo", true));
        assert!(owns_section(".bss.counter", "counter", false));
        assert!(owns_section(".data.rel.ro.local.ops", "ops", false));
        assert!(!owns_section(".data..read_mostly", "x", false));
    }
}
