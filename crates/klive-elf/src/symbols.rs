//! Symbol positions as the kernel counts them, and the decision "normal or klp relocation".
//!
//! The livepatch core resolves `old_name` and every `.klp.sym.<obj>.<name>,<pos>` by counting
//! same-name symbols in kallsyms order (vmlinux) or module symtab order; position 0 means
//! "must be unique". Without file symbols, a duplicated local name is disambiguated by the
//! addresses of the other symbols of the same translation unit whose names are unique
//! (anchors); when that does not single out one candidate, the lookup fails rather than guess.
//! A table read from an unstripped vmlinux also knows, from its `STT_FILE` symbols, which
//! compiled file each local belongs to; then the file's name and its other locals decide.

use std::collections::{HashMap, HashSet};

use object::LittleEndian as LE;
use object::build::Id;
use object::build::elf::SectionData;
use object::elf;
use object::read::elf::{FileHeader, SectionHeader, Sym};

use crate::ElfError;
use crate::model::{Elf, read_builder};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymClass {
    Text,
    Data,
    Rodata,
    Bss,
    Other,
}

impl SymClass {
    /// From a kallsyms type letter.
    pub fn from_kallsyms(c: char) -> SymClass {
        match c.to_ascii_lowercase() {
            't' | 'w' => SymClass::Text,
            'd' | 'v' | 'g' => SymClass::Data,
            'r' | 'n' => SymClass::Rodata,
            'b' | 's' => SymClass::Bss,
            _ => SymClass::Other,
        }
    }

    /// From the flags of the section holding a symbol in a linked image, as `nm` (and so
    /// kallsyms) types it: code, uninitialised, writable, read-only.
    pub fn from_section_flags(flags: u64, nobits: bool) -> SymClass {
        if flags & elf::SHF_EXECINSTR.0 != 0 {
            SymClass::Text
        } else if nobits {
            SymClass::Bss
        } else if flags & elf::SHF_WRITE.0 != 0 {
            SymClass::Data
        } else if flags & elf::SHF_ALLOC.0 != 0 {
            SymClass::Rodata
        } else {
            SymClass::Other
        }
    }

    /// From the name of the section holding a symbol in an object file.
    pub fn from_section(name: &str) -> SymClass {
        if name.starts_with(".text") {
            SymClass::Text
        } else if name.starts_with(".rodata") || name.starts_with(".data.rel.ro") {
            SymClass::Rodata
        } else if name.starts_with(".bss") {
            SymClass::Bss
        } else if name.starts_with(".data") {
            SymClass::Data
        } else {
            SymClass::Other
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSymbol {
    pub name: String,
    pub addr: u64,
    pub class: SymClass,
}

/// The symbols of one klp object (vmlinux or a module) in the kernel's counting order.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    pub syms: Vec<TableSymbol>,
    by_name: HashMap<String, Vec<usize>>,
    /// Per symbol, the compiled file (an index into `files`) of a local, when known.
    file_of: Vec<Option<u32>>,
    /// The `STT_FILE` groups of a vmlinux symtab: the file name and its local names.
    files: Vec<FileGroup>,
}

#[derive(Debug, Clone, Default)]
struct FileGroup {
    name: String,
    locals: HashSet<String>,
}

/// Names `scripts/kallsyms` leaves out of the kernel's table (x86-64).
fn kallsyms_ignores(name: &str) -> bool {
    name.is_empty()
        || ["$", ".L", "__crc_", "__kstrtab_", "__kstrtabns_"]
            .iter()
            .any(|p| name.starts_with(p))
}

impl SymbolTable {
    pub fn new(syms: Vec<TableSymbol>) -> SymbolTable {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in syms.iter().enumerate() {
            by_name.entry(s.name.clone()).or_default().push(i);
        }
        SymbolTable {
            syms,
            by_name,
            file_of: Vec::new(),
            files: Vec::new(),
        }
    }

    /// The vmlinux table as `/proc/kallsyms` of the running kernel lists it, from the
    /// `.symtab` of the unstripped vmlinux (the `-dbg` package's): every named symbol
    /// defined in an allocated section, locals with duplicate names included, sorted by
    /// address (the order kallsyms keeps and the livepatch core counts `sympos` in), typed
    /// from its section's flags. Each local also remembers its `STT_FILE` group.
    pub fn from_vmlinux(data: &[u8], file: &str) -> Result<SymbolTable, ElfError> {
        let err = |reason: String| ElfError::Vmlinux {
            file: file.to_owned(),
            reason,
        };
        let header = elf::FileHeader64::<LE>::parse(data).map_err(|e| err(e.to_string()))?;
        let endian = header.endian().map_err(|e| err(e.to_string()))?;
        if header.e_type(endian) != elf::ET_EXEC || header.e_machine(endian) != elf::EM_X86_64 {
            return Err(err("not an x86-64 executable (ET_EXEC)".into()));
        }
        let sections = header
            .sections(endian, data)
            .map_err(|e| err(e.to_string()))?;
        let symtab = sections
            .symbols(endian, data, elf::SHT_SYMTAB)
            .map_err(|e| err(e.to_string()))?;
        if symtab.is_empty() {
            return Err(err("it has no .symtab (a stripped image)".into()));
        }
        // (address, symtab order) keys the sort; ties keep the symtab order.
        let mut rows: Vec<(u64, usize, TableSymbol, Option<u32>)> = Vec::new();
        let mut files: Vec<FileGroup> = Vec::new();
        for (i, sym) in symtab.iter().enumerate() {
            let name = symtab
                .symbol_name(endian, sym)
                .map_err(|e| err(e.to_string()))?;
            let name = String::from_utf8_lossy(name);
            let ty = sym.st_type();
            if ty == elf::STT_FILE {
                files.push(FileGroup {
                    name: name.into_owned(),
                    locals: HashSet::new(),
                });
                continue;
            }
            let shndx = sym.st_shndx(endian);
            if ty == elf::STT_SECTION
                || shndx == elf::SHN_UNDEF
                || shndx.is_special()
                || kallsyms_ignores(&name)
            {
                continue;
            }
            let Ok(sect) = sections.section(object::SectionIndex(usize::from(shndx.0))) else {
                continue;
            };
            let flags = sect.sh_flags(endian).0;
            if flags & elf::SHF_ALLOC.0 == 0 {
                continue;
            }
            let class =
                SymClass::from_section_flags(flags, sect.sh_type(endian) == elf::SHT_NOBITS);
            // ld writes each input file's locals after its STT_FILE symbol, globals last.
            let group = if sym.st_bind() == elf::STB_LOCAL && !files.is_empty() {
                let g = files.len() - 1;
                files[g].locals.insert(name.clone().into_owned());
                Some(g as u32)
            } else {
                None
            };
            let addr = sym.st_value(endian);
            rows.push((
                addr,
                i,
                TableSymbol {
                    name: name.into_owned(),
                    addr,
                    class,
                },
                group,
            ));
        }
        rows.sort_by_key(|r| (r.0, r.1));
        let file_of = rows.iter().map(|r| r.3).collect();
        let mut table = SymbolTable::new(rows.into_iter().map(|r| r.2).collect());
        table.file_of = file_of;
        table.files = files;
        Ok(table)
    }

    /// Symbols of `object` from a `/proc/kallsyms` dump: vmlinux lines have no `[module]`.
    /// The dump must come from root (non-zero addresses) for positions to be decidable.
    pub fn from_kallsyms(text: &str, object: &str) -> SymbolTable {
        let mut syms = Vec::new();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let module = it.next().map(|m| m.trim_matches(|c| c == '[' || c == ']'));
            let wanted = match module {
                None => object == "vmlinux",
                Some(m) => m == object,
            };
            if !wanted {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            let class = ty.chars().next().map(SymClass::from_kallsyms);
            syms.push(TableSymbol {
                name: name.to_owned(),
                addr,
                class: class.unwrap_or(SymClass::Other),
            });
        }
        SymbolTable::new(syms)
    }

    /// Symbols of a module as the kernel keeps them: named, defined in an allocated,
    /// non-init section, in symtab order. Addresses are (section, offset) pairs.
    pub fn from_module_object(data: &[u8], file: &str) -> Result<SymbolTable, ElfError> {
        let b = read_builder(data, file)?;
        let mut syms = Vec::new();
        for s in &b.symbols {
            let Some(sec) = s.section else { continue };
            let sect = b.sections.get(sec);
            if s.name.is_empty()
                || s.st_info.st_type() == elf::STT_SECTION
                || s.st_info.st_type() == elf::STT_FILE
                || sect.sh_flags.0 & elf::SHF_ALLOC.0 == 0
                || sect.name.starts_with(b".init")
                || matches!(sect.data, SectionData::Relocation(_))
            {
                continue;
            }
            let sname = String::from_utf8_lossy(&sect.name);
            syms.push(TableSymbol {
                name: String::from_utf8_lossy(&s.name).into_owned(),
                addr: ((sec.index() as u64) << 40) | (s.st_value & 0xff_ffff_ffff),
                class: SymClass::from_section(&sname),
            });
        }
        Ok(SymbolTable::new(syms))
    }

    /// The candidate in the one `STT_FILE` group that is this unit's: same file name, and
    /// holding the most of the unit's other local names (all of them, normally). `None`
    /// when the table has no file groups or they do not single out one candidate.
    fn by_file(&self, cands: &[usize], tu: &TuSymbols) -> Option<usize> {
        let want = tu.file.as_deref().map(basename)?;
        let scored: Vec<(usize, usize)> = cands
            .iter()
            .filter_map(|&i| {
                let g = &self.files[(*self.file_of.get(i)?)? as usize];
                (basename(&g.name) == want).then(|| {
                    let hits = tu
                        .symbols
                        .iter()
                        .filter(|(n, _)| g.locals.contains(n))
                        .count();
                    (i, hits)
                })
            })
            .collect();
        let best = scored.iter().map(|s| s.1).max()?;
        let top: Vec<usize> = scored.iter().filter(|s| s.1 == best).map(|s| s.0).collect();
        (top.len() == 1).then(|| top[0])
    }

    /// Whether the table knows the compiled file of its locals (read from a vmlinux).
    pub fn has_files(&self) -> bool {
        !self.files.is_empty()
    }

    pub fn count(&self, name: &str) -> usize {
        self.by_name.get(name).map_or(0, Vec::len)
    }

    /// The kernel's `sympos` for `name` defined in the translation unit described by `tu`.
    pub fn sympos(&self, name: &str, class: SymClass, tu: &TuSymbols) -> Result<u32, String> {
        let Some(cands) = self.by_name.get(name) else {
            return Err("not found in the target's symbol table; check that the symbol source matches the target kernel".into());
        };
        if cands.len() == 1 {
            return Ok(0);
        }
        if self.syms.iter().all(|s| s.addr == 0) {
            return Err("the kallsyms dump has zero addresses; take it as root".into());
        }
        let same_class: Vec<usize> = cands
            .iter()
            .copied()
            .filter(|&i| self.syms[i].class == class)
            .collect();
        let chosen = if let Some(i) = self.by_file(cands, tu) {
            i
        } else if same_class.len() == 1 {
            same_class[0]
        } else {
            let anchors: Vec<u64> = tu
                .symbols
                .iter()
                .filter(|(n, c)| *c == class && n != name && self.count(n) == 1)
                .filter_map(|(n, _)| self.by_name.get(n).map(|v| self.syms[v[0]].addr))
                .collect();
            let (Some(&lo), Some(&hi)) = (anchors.iter().min(), anchors.iter().max()) else {
                return Err(format!(
                    "{} definitions and no unique neighbour in the same file to tell them apart",
                    cands.len()
                ));
            };
            let slack = (hi - lo).max(0x1000);
            let inside: Vec<usize> = same_class
                .iter()
                .copied()
                .filter(|&i| {
                    let a = self.syms[i].addr;
                    a.saturating_add(slack) >= lo && a <= hi.saturating_add(slack)
                })
                .collect();
            if inside.len() != 1 {
                return Err(format!(
                    "{} definitions, {} near this file's other symbols; cannot tell which one is this file's",
                    cands.len(),
                    inside.len()
                ));
            }
            inside[0]
        };
        let pos = cands.iter().position(|&i| i == chosen).unwrap_or(0) + 1;
        Ok(pos as u32)
    }
}

/// The GNU build-id note of an ELF image (a vmlinux, stripped or not), in hex.
pub fn gnu_build_id(data: &[u8], file: &str) -> Result<Option<String>, ElfError> {
    use object::Object as _;
    let f = object::read::elf::ElfFile64::<LE>::parse(data).map_err(|e| ElfError::Vmlinux {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    let id = f.build_id().map_err(|e| ElfError::Vmlinux {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(id.map(|b| b.iter().map(|x| format!("{x:02x}")).collect()))
}

/// The defined symbols of the original object of one translation unit (anchors), and the
/// name of its source file (its `STT_FILE` symbol, as the compiler wrote it).
#[derive(Debug, Clone, Default)]
pub struct TuSymbols {
    pub symbols: Vec<(String, SymClass)>,
    pub file: Option<String>,
}

impl TuSymbols {
    pub fn from_elf(e: &Elf) -> TuSymbols {
        let symbols = e
            .symbols()
            .filter(|(_, s)| (s.is_func() || s.is_object()) && s.section.is_some())
            .map(|(_, s)| {
                let class = SymClass::from_section(e.section_name(s.section.unwrap_or(0)));
                (s.name.clone(), class)
            })
            .collect();
        let file = e
            .symbols()
            .find(|(_, s)| s.st_type == elf::STT_FILE.0)
            .map(|(_, s)| s.name.clone());
        TuSymbols { symbols, file }
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Who exports what: `Module.symvers` (CRC, symbol, module, export type, namespace).
#[derive(Debug, Clone, Default)]
pub struct Exports {
    /// Symbol → exporting object (`vmlinux` or a module name with `-` as `_`).
    pub by_symbol: HashMap<String, String>,
    /// Symbol → the namespace it is exported in (`EXPORT_SYMBOL_NS`), which a module using
    /// it must import.
    pub namespace: HashMap<String, String>,
}

impl Exports {
    pub fn from_module_symvers(text: &str) -> Exports {
        let mut by_symbol = HashMap::new();
        let mut namespace = HashMap::new();
        for line in text.lines() {
            let mut f = line.split('\t');
            let (Some(_crc), Some(sym), Some(module)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let Some(ns) = f.nth(1).map(str::trim).filter(|n| !n.is_empty()) {
                namespace.insert(sym.to_owned(), ns.to_owned());
            }
            let module = if module.ends_with("vmlinux") {
                "vmlinux".to_owned()
            } else {
                module
                    .rsplit('/')
                    .next()
                    .unwrap_or(module)
                    .replace('-', "_")
            };
            by_symbol.insert(sym.to_owned(), module);
        }
        Exports {
            by_symbol,
            namespace,
        }
    }
}

/// How a reference to a symbol outside the patch is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    /// An ordinary undefined symbol, resolved by the module loader (a vmlinux export).
    Normal(String),
    /// A livepatch relocation to `.klp.sym.<object>.<name>,<sympos>`.
    Klp {
        object: String,
        name: String,
        sympos: u32,
    },
}

impl Resolution {
    pub fn symbol_name(&self) -> String {
        match self {
            Resolution::Normal(n) => n.clone(),
            Resolution::Klp {
                object,
                name,
                sympos,
            } => format!(".klp.sym.{object}.{name},{sympos}"),
        }
    }
}

/// A reference from patch code to a symbol that is not in the patch.
#[derive(Debug, Clone)]
pub struct ExternalRef<'a> {
    /// Name in the running kernel.
    pub name: &'a str,
    /// Defined in this translation unit (else undefined there).
    pub defined_here: bool,
    pub class: SymClass,
}

/// Decides normal vs klp relocations for one klp object (vmlinux or a module).
#[derive(Debug)]
pub struct Resolver<'a> {
    /// `vmlinux` or the module name (with `_`).
    pub object: String,
    pub table: &'a SymbolTable,
    pub exports: &'a Exports,
}

impl Resolver<'_> {
    pub fn resolve(&self, r: &ExternalRef<'_>, tu: &TuSymbols) -> Result<Resolution, String> {
        match self.exports.by_symbol.get(r.name).map(String::as_str) {
            Some("vmlinux") => return Ok(Resolution::Normal(r.name.to_owned())),
            Some(module) if self.object != "vmlinux" && !r.defined_here => {
                return Ok(Resolution::Klp {
                    object: module.to_owned(),
                    name: r.name.to_owned(),
                    sympos: 0,
                });
            }
            Some(module) if self.object == "vmlinux" => {
                return Err(format!(
                    "exported by module {module}; built-in code cannot refer to it"
                ));
            }
            _ => {}
        }
        if r.name.contains(',') {
            return Err("the name contains ',' which klp symbol names cannot carry".into());
        }
        let class = if r.defined_here {
            r.class
        } else {
            // Undefined here: take the class from the table if the name is unique there.
            match self.table.by_name.get(r.name) {
                Some(v) if v.len() == 1 => self.table.syms[v[0]].class,
                _ => r.class,
            }
        };
        let sympos = self.table.sympos(r.name, class, tu)?;
        Ok(Resolution::Klp {
            object: self.object.clone(),
            name: r.name.to_owned(),
            sympos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\
ffffffff81000000 T _stext
ffffffff81100000 t show
ffffffff81100100 t alpha_only
ffffffff81100200 t beta_only
ffffffff81300000 t show
ffffffff81300100 t gamma_only
ffffffff82000000 D saved_command_line
ffffffffc0000000 t show\t[xfs]
";

    fn tu(names: &[&str]) -> TuSymbols {
        TuSymbols {
            symbols: names
                .iter()
                .map(|n| (n.to_string(), SymClass::Text))
                .collect(),
            file: None,
        }
    }

    /// A tiny linked image: `show` in a.c (first in the symtab, at the higher address) and
    /// in b.c, each with a local neighbour, and two globals.
    fn vmlinux() -> Vec<u8> {
        use object::build::elf::Builder;
        let mut b = Builder::new(object::Endianness::Little, true);
        b.header.e_type = elf::ET_EXEC;
        b.header.e_machine = elf::EM_X86_64;
        let mut section = |name: &[u8], flags: u64, addr: u64| {
            let s = b.sections.add();
            s.name = name.to_vec().into();
            s.sh_type = elf::SHT_PROGBITS;
            s.sh_flags = elf::SectionFlags(flags);
            s.sh_addr = addr;
            s.sh_addralign = 16;
            s.data = SectionData::Data(vec![0; 0x1000].into());
            s.id()
        };
        let text = section(
            b".text",
            elf::SHF_ALLOC.0 | elf::SHF_EXECINSTR.0,
            0xffff_ffff_8100_0000,
        );
        let data = section(
            b".data",
            elf::SHF_ALLOC.0 | elf::SHF_WRITE.0,
            0xffff_ffff_8200_0000,
        );
        for (name, data) in [
            (&b".symtab"[..], SectionData::Symbol),
            (b".strtab", SectionData::String),
            (b".shstrtab", SectionData::SectionString),
        ] {
            let s = b.sections.add();
            s.name = name.to_vec().into();
            s.sh_type = match data {
                SectionData::Symbol => elf::SHT_SYMTAB,
                _ => elf::SHT_STRTAB,
            };
            s.data = data;
        }
        let syms: [(&str, elf::SymbolBind, elf::SymbolType, Option<_>, u64); 9] = [
            ("a.c", elf::STB_LOCAL, elf::STT_FILE, None, 0),
            (
                "show",
                elf::STB_LOCAL,
                elf::STT_FUNC,
                Some(text),
                0xffff_ffff_8100_0800,
            ),
            (
                "alpha",
                elf::STB_LOCAL,
                elf::STT_FUNC,
                Some(text),
                0xffff_ffff_8100_0900,
            ),
            ("fs/b.c", elf::STB_LOCAL, elf::STT_FILE, None, 0),
            (
                "show",
                elf::STB_LOCAL,
                elf::STT_FUNC,
                Some(text),
                0xffff_ffff_8100_0100,
            ),
            (
                "beta",
                elf::STB_LOCAL,
                elf::STT_FUNC,
                Some(text),
                0xffff_ffff_8100_0200,
            ),
            (
                "__crc_x",
                elf::STB_LOCAL,
                elf::STT_NOTYPE,
                Some(data),
                0xffff_ffff_8200_0000,
            ),
            (
                "_text",
                elf::STB_GLOBAL,
                elf::STT_NOTYPE,
                Some(text),
                0xffff_ffff_8100_0000,
            ),
            (
                "saved",
                elf::STB_GLOBAL,
                elf::STT_OBJECT,
                Some(data),
                0xffff_ffff_8200_0010,
            ),
        ];
        for (name, bind, ty, sec, addr) in syms {
            let s = b.symbols.add();
            s.name = name.as_bytes().to_vec().into();
            s.set_st_info(bind, ty);
            s.section = sec;
            s.st_shndx = if sec.is_some() {
                elf::SHN_UNDEF
            } else {
                elf::SHN_ABS
            };
            s.st_value = addr;
        }
        b.set_section_sizes();
        let mut out = Vec::new();
        b.write(&mut out).unwrap();
        out
    }

    #[test]
    fn vmlinux_symbols_come_in_kallsyms_order_with_their_files() {
        let t = SymbolTable::from_vmlinux(&vmlinux(), "vmlinux").unwrap();
        let names: Vec<&str> = t.syms.iter().map(|s| s.name.as_str()).collect();
        // By address; __crc_ symbols are not in kallsyms; file symbols are not symbols.
        assert_eq!(names, ["_text", "show", "beta", "show", "alpha", "saved"]);
        assert_eq!(t.syms[1].class, SymClass::Text);
        assert_eq!(t.syms[5].class, SymClass::Data);
        assert!(t.has_files());
        // The file and its other locals decide, with no neighbour needed.
        let a = TuSymbols {
            symbols: vec![("show".into(), SymClass::Text)],
            file: Some("a.c".into()),
        };
        assert_eq!(t.sympos("show", SymClass::Text, &a), Ok(2));
        let b = TuSymbols {
            symbols: vec![
                ("show".into(), SymClass::Text),
                ("beta".into(), SymClass::Text),
            ],
            file: Some("b.c".into()),
        };
        assert_eq!(t.sympos("show", SymClass::Text, &b), Ok(1));
        assert!(SymbolTable::from_vmlinux(b"not elf", "x").is_err());
        assert_eq!(gnu_build_id(&vmlinux(), "vmlinux"), Ok(None));
    }

    #[test]
    fn unique_names_get_position_zero() {
        let t = SymbolTable::from_kallsyms(DUMP, "vmlinux");
        assert_eq!(
            t.sympos("saved_command_line", SymClass::Data, &tu(&[])),
            Ok(0)
        );
    }

    #[test]
    fn duplicate_locals_are_told_apart_by_neighbours() {
        let t = SymbolTable::from_kallsyms(DUMP, "vmlinux");
        assert_eq!(
            t.sympos("show", SymClass::Text, &tu(&["show", "gamma_only"])),
            Ok(2)
        );
        assert_eq!(
            t.sympos("show", SymClass::Text, &tu(&["alpha_only", "beta_only"])),
            Ok(1)
        );
    }

    #[test]
    fn ambiguity_is_an_error_not_a_guess() {
        let t = SymbolTable::from_kallsyms(DUMP, "vmlinux");
        let err = t
            .sympos("show", SymClass::Text, &tu(&["show"]))
            .unwrap_err();
        assert!(err.contains("2 definitions"), "{err}");
        assert!(t.sympos("missing", SymClass::Text, &tu(&[])).is_err());
    }

    #[test]
    fn module_symbols_are_kept_apart() {
        let t = SymbolTable::from_kallsyms(DUMP, "xfs");
        assert_eq!(t.syms.len(), 1);
        assert_eq!(t.sympos("show", SymClass::Text, &tu(&[])), Ok(0));
    }

    #[test]
    fn exports_decide_normal_relocations() {
        let e = Exports::from_module_symvers(
            "0x1\tseq_printf\tvmlinux\tEXPORT_SYMBOL\t\n0x2\txfs_foo\tfs/xfs/xfs\tEXPORT_SYMBOL_GPL\t\n0x3\tefivar_query_variable_info\tvmlinux\tEXPORT_SYMBOL_GPL\tEFIVAR\n",
        );
        assert_eq!(
            e.namespace
                .get("efivar_query_variable_info")
                .map(String::as_str),
            Some("EFIVAR")
        );
        assert!(!e.namespace.contains_key("seq_printf"));
        let t = SymbolTable::from_kallsyms(DUMP, "vmlinux");
        let r = Resolver {
            object: "vmlinux".into(),
            table: &t,
            exports: &e,
        };
        let ext = |name| ExternalRef {
            name,
            defined_here: false,
            class: SymClass::Data,
        };
        assert_eq!(
            r.resolve(&ext("seq_printf"), &tu(&[])),
            Ok(Resolution::Normal("seq_printf".into()))
        );
        assert_eq!(
            r.resolve(&ext("saved_command_line"), &tu(&[]))
                .map(|r| r.symbol_name()),
            Ok(".klp.sym.vmlinux.saved_command_line,0".into())
        );
        assert!(r.resolve(&ext("xfs_foo"), &tu(&[])).is_err());
    }
}
