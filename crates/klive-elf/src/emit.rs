//! Writes the patch object of one translation unit: the included sections of the patched
//! object, the special-section entries that belong to them, and every reference to code or
//! data outside the patch pointed at either an exported symbol or a weak undefined
//! `.klp.sym.<obj>.<name>,<pos>` placeholder (turned into a klp relocation after the link,
//! see [`crate::klp`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use object::build::Id;
use object::build::elf::{Relocation, SectionData, SectionId, SymbolId};
use object::elf;

use crate::ElfError;
use crate::diff::{Analysis, include_closure, special_entry_size};
use crate::model::{R_X86_64_32S, SUPPORTED_RELOCATIONS, read_builder};
use crate::symbols::{ExternalRef, Resolution, Resolver, SymClass, TuSymbols};

/// A function the patch replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchFunc {
    /// Name in the running kernel.
    pub old_name: String,
    pub sympos: u32,
    /// Global alias of the new code in the patch object, for the generated stub.
    pub new_symbol: String,
}

#[derive(Debug, Clone)]
pub struct Emitted {
    pub object: Vec<u8>,
    pub funcs: Vec<PatchFunc>,
    /// `.klp.sym.*` placeholders the object refers to.
    pub klp_symbols: BTreeSet<String>,
    /// Exported symbols the object refers to.
    pub exported_symbols: BTreeSet<String>,
    /// Special-section entries kept, per section.
    pub special_entries: BTreeMap<String, usize>,
}

/// Emits the patch object. `tag` makes the alias names unique across translation units.
pub fn emit(
    patched: &[u8],
    a: &Analysis,
    resolver: &Resolver<'_>,
    tag: &str,
) -> Result<Emitted, ElfError> {
    let mut a = a.clone();
    let tu = TuSymbols::from_elf(&a.orig);
    let p = &a.patched;

    // Special sections: keep the entries that belong to included functions.
    let included_funcs: BTreeSet<usize> = a
        .included
        .iter()
        .copied()
        .filter(|&s| {
            p.sec(s)
                .and_then(|x| x.bundled)
                .and_then(|b| p.sym(b))
                .is_some_and(|y| y.is_func())
        })
        .collect();
    let mut kept_entries: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (si, sec) in p.sections() {
        let Some(size) = special_entry_size(&sec.name) else {
            continue;
        };
        let mut keep = Vec::new();
        let n = sec.size.div_ceil(size);
        for e in 0..n {
            let lo = e * size;
            let hi = lo + size;
            let hit = sec
                .relocs
                .iter()
                .filter(|r| r.offset >= lo && r.offset < hi)
                .any(|r| {
                    p.resolve_target(r)
                        .and_then(|(t, _)| p.sym(t))
                        .and_then(|s| s.section)
                        .is_some_and(|s| included_funcs.contains(&s))
                });
            if hit {
                keep.push(e);
            }
        }
        if !keep.is_empty() {
            kept_entries.insert(si, keep);
        }
    }
    // ORC: `.orc_unwind` entries follow `.orc_unwind_ip` in lockstep.
    if let Some((ip, _)) = p.sections().find(|(_, s)| s.name == ".orc_unwind_ip")
        && let Some(keep) = kept_entries.get(&ip).cloned()
        && let Some((u, _)) = p.sections().find(|(_, s)| s.name == ".orc_unwind")
    {
        kept_entries.insert(u, keep);
    }
    let mut roots: Vec<usize> = kept_entries.keys().copied().collect();
    if kept_entries
        .keys()
        .any(|&s| p.section_name(s) == ".altinstructions")
        && let Some((r, _)) = p
            .sections()
            .find(|(_, s)| s.name == ".altinstr_replacement")
    {
        roots.push(r);
        a.included.insert(r);
    }
    for &s in kept_entries.keys() {
        a.included.insert(s);
    }
    include_closure(&mut a, roots);
    let p = &a.patched;

    let mut b = read_builder(patched, "patched object")?;
    let sym_ids: Vec<SymbolId> = b.symbols.iter().map(|s| s.id()).collect();
    let sec_ids: Vec<SectionId> = b.sections.iter().map(|s| s.id()).collect();
    let sym_id = |i: usize| sym_ids.iter().copied().find(|id| id.index() == i);

    // Changed-function sections whose address is taken stay pointed at the original.
    let changed_secs: BTreeSet<usize> = a.changed_funcs.keys().copied().collect();

    let mut ext_syms: HashMap<String, SymbolId> = HashMap::new();
    let mut klp_symbols = BTreeSet::new();
    let mut exported_symbols = BTreeSet::new();
    let mut new_relocs: BTreeMap<usize, Vec<Relocation>> = BTreeMap::new();
    let mut resolutions: HashMap<(String, bool), Resolution> = HashMap::new();

    for &si in &a.included {
        let Some(sec) = p.sec(si) else { continue };
        let Some(rela) = sec.rela else { continue };
        let keep = kept_entries.get(&si);
        let entry = special_entry_size(&sec.name).unwrap_or(0);
        let mut out = Vec::new();
        for r in &sec.relocs {
            let mut offset = r.offset;
            if let Some(keep) = keep {
                if sec.name == ".orc_unwind" {
                    continue;
                }
                let e = r.offset / entry;
                let Some(pos) = keep.iter().position(|&k| k == e) else {
                    continue;
                };
                offset = pos as u64 * entry + (r.offset - e * entry);
            }
            if !SUPPORTED_RELOCATIONS.contains(&r.r_type) {
                return Err(ElfError::RelocationType {
                    section: sec.name.clone(),
                    offset: r.offset,
                    r_type: r.r_type,
                });
            }
            let Some((t, addend)) = p.resolve_target(r) else {
                out.push(Relocation {
                    r_offset: offset,
                    symbol: None,
                    r_type: elf::RelocationType(r.r_type),
                    r_addend: r.addend,
                });
                continue;
            };
            let tsym = p.sym(t).expect("resolved symbol exists");
            let in_patch = tsym.section.is_some_and(|s| a.included.contains(&s));
            // Code taking the address of a changed function keeps the original's address, so
            // pointers stored elsewhere stay valid after the patch is disabled; calls through
            // them reach the new code through ftrace while the patch is on.
            let address_of_changed = tsym.section.is_some_and(|s| changed_secs.contains(&s))
                && r.r_type == R_X86_64_32S
                && addend == 0
                && sec.name.starts_with(".text");
            let symbol = if in_patch && !address_of_changed {
                sym_id(t)
            } else {
                if tsym.is_section() {
                    return Err(ElfError::Unreferenceable {
                        section: sec.name.clone(),
                        offset: r.offset,
                        target: format!(
                            "{}+{addend:#x}",
                            tsym.section.map(|s| p.section_name(s)).unwrap_or("?")
                        ),
                    });
                }
                let (name, defined_here, class) = if tsym.section.is_some() {
                    let Some(&o) = a.sym_twin.get(&t) else {
                        return Err(ElfError::Symbol {
                            symbol: tsym.name.clone(),
                            section: sec.name.clone(),
                            reason: "defined in the patched file but neither new nor in the original; report this as a klive bug".into(),
                        });
                    };
                    let os = a.orig.sym(o).expect("twin");
                    let class =
                        SymClass::from_section(a.orig.section_name(os.section.unwrap_or(0)));
                    (os.name.clone(), true, class)
                } else {
                    (tsym.name.clone(), false, SymClass::Other)
                };
                let key = (name.clone(), defined_here);
                let res = match resolutions.get(&key) {
                    Some(r) => r.clone(),
                    None => {
                        let res = resolver
                            .resolve(
                                &ExternalRef {
                                    name: &name,
                                    defined_here,
                                    class,
                                },
                                &tu,
                            )
                            .map_err(|reason| ElfError::Symbol {
                                symbol: name.clone(),
                                section: sec.name.clone(),
                                reason,
                            })?;
                        resolutions.insert(key, res.clone());
                        res
                    }
                };
                if let Resolution::Klp { object, .. } = &res
                    && resolver.object != "vmlinux"
                    && special_entry_size(&sec.name).is_some()
                {
                    return Err(ElfError::Symbol {
                        symbol: name.clone(),
                        section: sec.name.clone(),
                        reason: format!(
                            "a klp relocation to {object} inside a special section of a module object is not supported (late module patching would apply it after the section is used)"
                        ),
                    });
                }
                let sname = res.symbol_name();
                let id = match ext_syms.get(&sname) {
                    Some(id) => *id,
                    None => {
                        let s = b.symbols.add();
                        s.name = sname.clone().into_bytes().into();
                        let (bind, ty) = match &res {
                            Resolution::Normal(_) => (elf::STB_GLOBAL.0, tsym.st_type),
                            Resolution::Klp { .. } => (elf::STB_WEAK.0, tsym.st_type),
                        };
                        let ty = if ty == elf::STT_FUNC.0 || ty == elf::STT_OBJECT.0 {
                            ty
                        } else {
                            elf::STT_NOTYPE.0
                        };
                        s.set_st_info(elf::SymbolBind(bind), elf::SymbolType(ty));
                        s.section = None;
                        s.st_shndx = elf::SHN_UNDEF;
                        s.st_value = 0;
                        s.st_size = 0;
                        let id = s.id();
                        ext_syms.insert(sname.clone(), id);
                        match &res {
                            Resolution::Normal(n) => exported_symbols.insert(n.clone()),
                            Resolution::Klp { .. } => klp_symbols.insert(sname),
                        };
                        id
                    }
                };
                out.push(Relocation {
                    r_offset: offset,
                    symbol: Some(id),
                    r_type: elf::RelocationType(r.r_type),
                    r_addend: addend,
                });
                continue;
            };
            let (symbol, addend) = if in_patch && tsym.is_section() {
                (sym_id(t), addend)
            } else {
                (symbol, addend)
            };
            out.push(Relocation {
                r_offset: offset,
                symbol,
                r_type: elf::RelocationType(r.r_type),
                r_addend: addend,
            });
        }
        new_relocs.insert(rela, out);
    }

    // Sections: keep included ones, their relocations and the string/symbol tables.
    let keep_rela: BTreeSet<usize> = new_relocs.keys().copied().collect();
    for (idx, id) in sec_ids.iter().enumerate() {
        let s = b.sections.get_mut(*id);
        let meta = matches!(
            s.data,
            SectionData::Symbol | SectionData::String | SectionData::SectionString
        ) || s.name.as_slice() == b".note.GNU-stack";
        let keep = meta || a.included.contains(&idx) || keep_rela.contains(&idx);
        s.delete = !keep;
        if let Some(relocs) = new_relocs.remove(&idx) {
            s.data = SectionData::Relocation(relocs);
        }
        if let Some(keep) = kept_entries.get(&idx)
            && let SectionData::Data(d) = &s.data
        {
            let name = String::from_utf8_lossy(&s.name).into_owned();
            let entry =
                special_entry_size(&name).unwrap_or(if name == ".orc_unwind" { 6 } else { 1 });
            let mut data = Vec::with_capacity(keep.len() * entry as usize);
            for &e in keep {
                let lo = (e * entry) as usize;
                let hi = ((e + 1) * entry).min(d.len() as u64) as usize;
                data.extend_from_slice(d.get(lo..hi).unwrap_or(&[]));
            }
            s.sh_size = data.len() as u64;
            s.data = SectionData::Data(data.into());
        }
    }
    // Symbols: drop those of dropped sections and the unused undefined ones.
    let used: BTreeSet<usize> = b
        .sections
        .iter()
        .filter(|s| !s.delete)
        .filter_map(|s| match &s.data {
            SectionData::Relocation(r) => {
                Some(r.iter().filter_map(|r| r.symbol.map(|s| s.index())))
            }
            _ => None,
        })
        .flatten()
        .collect();
    let new_syms: BTreeSet<usize> = ext_syms.values().map(|id| id.index()).collect();
    for id in &sym_ids {
        let sec_deleted = b
            .symbols
            .get(*id)
            .section
            .is_some_and(|s| b.sections.get(s).delete);
        let s = b.symbols.get_mut(*id);
        let unused_undefined = s.section.is_none()
            && s.st_info.st_type() != elf::STT_FILE
            && !used.contains(&id.index())
            && !new_syms.contains(&id.index());
        if sec_deleted || unused_undefined {
            s.delete = true;
        }
    }
    // Changed functions: local under their own name, plus a global alias for the stub.
    let mut funcs = Vec::new();
    for (n, (&si, f)) in a.changed_funcs.iter().enumerate() {
        let Some(id) = sym_id(f.patched_sym) else {
            continue;
        };
        let class = SymClass::Text;
        let sympos = resolver
            .table
            .sympos(&f.old_name, class, &tu)
            .map_err(|reason| ElfError::Symbol {
                symbol: f.old_name.clone(),
                section: p.section_name(si).to_owned(),
                reason,
            })?;
        let (section, value, size) = {
            let s = b.symbols.get_mut(id);
            let ty = s.st_info.st_type();
            s.set_st_info(elf::STB_LOCAL, ty);
            (s.section, s.st_value, s.st_size)
        };
        let alias = format!("klive_{tag}_{n}_{}", c_ident(&f.old_name));
        let s = b.symbols.add();
        s.name = alias.clone().into_bytes().into();
        s.set_st_info(elf::STB_GLOBAL, elf::STT_FUNC);
        s.section = section;
        s.st_value = value;
        s.st_size = size;
        funcs.push(PatchFunc {
            old_name: f.old_name.clone(),
            sympos,
            new_symbol: alias,
        });
    }
    let mut out = Vec::new();
    b.write(&mut out).map_err(|e| ElfError::Write {
        what: "patch object".into(),
        reason: e.to_string(),
    })?;
    let special_entries = kept_entries
        .iter()
        .map(|(s, v)| (p.section_name(*s).to_owned(), v.len()))
        .collect();
    Ok(Emitted {
        object: out,
        funcs,
        klp_symbols,
        exported_symbols,
        special_entries,
    })
}

fn c_ident(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
