//! Writes the patch object of one translation unit: the included sections of the patched
//! object, the special-section entries that belong to them, and every reference to code or
//! data outside the patch pointed at either an exported symbol or a weak undefined
//! `.klp.sym.<obj>.<name>,<pos>` placeholder (turned into a klp relocation after the link,
//! see [`crate::klp`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use object::build::Id;
use object::build::elf::{Builder, Relocation, SectionData, SectionId, SymbolId};
use object::elf;

use crate::ElfError;
use crate::diff::{Analysis, entry_size_of, include_closure, special_entry_size};
use crate::model::{
    Elf, R_X86_64_32S, Reloc, SUPPORTED_RELOCATIONS, Section, read_builder, write_builder,
};
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
    /// Tracepoints whose jump labels in the patched functions of a module were left out:
    /// their static keys live in the module, which jump-label entries of a livepatch cannot
    /// refer to, so those tracepoints stay off in the new code.
    pub tracepoints_off: BTreeSet<String>,
}

/// Emits the patch object. `tag` makes the alias names unique across translation units.
///
/// Three phases: [`collect`] decides what goes into the object, [`relocate`] points every
/// relocation of it at the patch itself, an exported symbol or a klp placeholder (and
/// [`alias_changed_functions`] names the new code for the `klp_func` table), [`write`] drops
/// everything else and serialises the result.
pub fn emit(
    patched: &[u8],
    a: &Analysis,
    resolver: &Resolver<'_>,
    tag: &str,
) -> Result<Emitted, ElfError> {
    let tu = TuSymbols::from_elf(&a.orig);
    let selection = collect(a, resolver.object != "vmlinux");
    let mut b = read_builder(patched, "patched object")?;
    let ids = SymbolIds::of(&b);
    let look = Lookup {
        ids: &ids,
        resolver,
        tu: &tu,
    };
    let relocated = relocate(&selection, &mut b, look)?;
    let funcs = alias_changed_functions(&selection.analysis, &mut b, look, tag)?;
    let object = write(b, &ids, &selection, relocated.relocs, &relocated.undefined)?;
    let p = &selection.analysis.patched;
    let special_entries = selection
        .kept_entries
        .iter()
        .map(|(s, v)| (p.section_name(*s).to_owned(), v.len()))
        .collect();
    Ok(Emitted {
        object,
        funcs,
        klp_symbols: relocated.klp_symbols,
        exported_symbols: relocated.exported_symbols,
        special_entries,
        tracepoints_off: selection.tracepoints_off,
    })
}

/// What goes into the patch object.
#[derive(Debug)]
struct Selection {
    /// The analysis with `included` grown by the special sections kept and what they need.
    analysis: Analysis,
    /// Special sections (by patched index) → the entries kept, in order.
    kept_entries: BTreeMap<usize, Vec<u64>>,
    tracepoints_off: BTreeSet<String>,
}

/// Collect: takes the analysis and gives the sections the patch object carries: the ones the
/// diff included, the special-section entries that belong to included functions, and
/// whatever those entries need (`.altinstr_replacement`, fresh copies).
fn collect(a: &Analysis, module: bool) -> Selection {
    let mut a = a.clone();
    let (kept_entries, tracepoints_off) = kept_special_entries(&a.patched, &a.included, module);
    let p = &a.patched;
    let mut roots: Vec<usize> = kept_entries.keys().copied().collect();
    // The closure never takes `.altinstr_replacement` (it is not compared), so it comes
    // whole with the kept `.altinstructions` entries that point into it.
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
    Selection {
        analysis: a,
        kept_entries,
        tracepoints_off,
    }
}

/// Takes the patched object and its included sections and gives, per special section, the
/// entries whose relocations point into an included function.
fn kept_special_entries(
    p: &Elf,
    included: &BTreeSet<usize>,
    module: bool,
) -> (BTreeMap<usize, Vec<u64>>, BTreeSet<String>) {
    let mut tracepoints_off = BTreeSet::new();
    let included_funcs: BTreeSet<usize> = included
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
        let Some(size) = entry_size_of(sec) else {
            continue;
        };
        let keep: Vec<u64> = (0..sec.size.div_ceil(size))
            .filter(|e| {
                let (lo, hi) = (e * size, (e + 1) * size);
                let targets = || {
                    sec.relocs
                        .iter()
                        .filter(move |r| r.offset >= lo && r.offset < hi)
                        .filter_map(|r| p.resolve_target(r).and_then(|(t, _)| p.sym(t)))
                };
                let ours = targets()
                    .filter_map(|s| s.section)
                    .any(|s| included_funcs.contains(&s));
                if ours && module && sec.name == "__jump_table" {
                    // The key of a module's tracepoint: not reachable from the livepatch's
                    // jump-label entries (see [`Emitted::tracepoints_off`]).
                    if let Some(tp) = targets().find(|s| {
                        s.name.starts_with("__tracepoint_")
                            && !s.section.is_some_and(|x| included.contains(&x))
                    }) {
                        tracepoints_off
                            .insert(tp.name.trim_start_matches("__tracepoint_").to_owned());
                        return false;
                    }
                }
                if ours && module && sec.name == ".static_call_sites" {
                    // A static call whose key is in the module: without the site entry the
                    // call goes through the key's trampoline, which is updated all the same.
                    let key_elsewhere = targets().any(|s| {
                        s.name.starts_with("__SCK__")
                            && !s.section.is_some_and(|x| included.contains(&x))
                    });
                    if key_elsewhere {
                        return false;
                    }
                }
                ours
            })
            .collect();
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
    (kept_entries, tracepoints_off)
}

/// The builder's ids of the patched object's own symbols, by the index the analysis uses.
#[derive(Debug)]
struct SymbolIds(Vec<SymbolId>);

impl SymbolIds {
    /// Taken before anything is added, so only the object's own symbols are found.
    fn of(b: &Builder<'_>) -> SymbolIds {
        SymbolIds(b.symbols.iter().map(|s| s.id()).collect())
    }

    fn get(&self, index: usize) -> Option<SymbolId> {
        self.0.iter().copied().find(|id| id.index() == index)
    }
}

/// Where the symbols a relocation or alias names are found: the patched object's own
/// (`ids`), the kernel's (`resolver`) and the translation unit's local ones (`tu`).
#[derive(Clone, Copy)]
struct Lookup<'r> {
    ids: &'r SymbolIds,
    resolver: &'r Resolver<'r>,
    tu: &'r TuSymbols,
}

/// A relocation `r` of section `sec` to symbol `t` (patched index) with its `addend`.
#[derive(Clone, Copy)]
struct RelocTo<'s> {
    sec: &'s Section,
    r: &'s Reloc,
    t: usize,
    addend: i64,
}

/// What [`relocate`] gives: the new relocations and the undefined symbols it added.
#[derive(Debug, Default)]
struct Relocated {
    /// Relocation section (patched index) → its rewritten relocations.
    relocs: BTreeMap<usize, Vec<Relocation>>,
    /// Undefined symbols added to the builder, by name.
    undefined: HashMap<String, SymbolId>,
    klp_symbols: BTreeSet<String>,
    exported_symbols: BTreeSet<String>,
}

/// Relocate: takes the selection and the builder of the patched object and gives the
/// relocations of every included section, rewritten for the patch object: entries of
/// special sections renumbered to the kept ones, references inside the patch kept, and
/// references outside it pointed at an exported symbol or a `.klp.sym.*` placeholder, which
/// are added to the builder as undefined symbols.
fn relocate(
    selection: &Selection,
    b: &mut Builder<'_>,
    look: Lookup<'_>,
) -> Result<Relocated, ElfError> {
    let mut r = Relocator {
        a: &selection.analysis,
        look,
        changed_secs: selection.analysis.changed_funcs.keys().copied().collect(),
        resolutions: HashMap::new(),
        out: Relocated::default(),
    };
    let p = &selection.analysis.patched;
    for &si in &selection.analysis.included {
        let Some(sec) = p.sec(si) else { continue };
        let Some(rela) = sec.rela else { continue };
        let keep = selection.kept_entries.get(&si).map(Vec::as_slice);
        let relocs = r.section(b, sec, keep)?;
        r.out.relocs.insert(rela, relocs);
    }
    Ok(r.out)
}

/// The state of [`relocate`]: resolutions are looked up once per name, undefined symbols
/// added once per name.
struct Relocator<'r> {
    a: &'r Analysis,
    look: Lookup<'r>,
    /// Sections of changed functions.
    changed_secs: BTreeSet<usize>,
    /// (name, defined in this unit) → how references to it are written.
    resolutions: HashMap<(String, bool), Resolution>,
    out: Relocated,
}

impl Relocator<'_> {
    /// The rewritten relocations of one included section; `keep` lists the entries kept when
    /// it is a special section.
    fn section(
        &mut self,
        b: &mut Builder<'_>,
        sec: &Section,
        keep: Option<&[u64]>,
    ) -> Result<Vec<Relocation>, ElfError> {
        let p = &self.a.patched;
        let mut out = Vec::new();
        for r in &sec.relocs {
            let Some(offset) = kept_offset(sec, keep, r.offset) else {
                continue;
            };
            if !SUPPORTED_RELOCATIONS.contains(&r.r_type) {
                return Err(ElfError::RelocationType {
                    section: sec.name.clone(),
                    offset: r.offset,
                    r_type: r.r_type,
                });
            }
            let (symbol, addend) = match p.resolve_target(r) {
                Some((t, addend)) => {
                    let at = RelocTo { sec, r, t, addend };
                    (self.target(b, at)?, addend)
                }
                None => (None, r.addend),
            };
            out.push(Relocation {
                r_offset: offset,
                symbol,
                r_type: elf::RelocationType(r.r_type),
                r_addend: addend,
            });
        }
        Ok(out)
    }

    /// The symbol a relocation of `sec` to symbol `t` (patched index) refers to in the patch
    /// object: `t` itself when it is in the patch, else an undefined symbol for it.
    fn target(
        &mut self,
        b: &mut Builder<'_>,
        at: RelocTo<'_>,
    ) -> Result<Option<SymbolId>, ElfError> {
        let RelocTo { sec, r, t, addend } = at;
        let tsym = self.a.patched.sym(t).expect("resolved symbol exists");
        let in_patch = tsym.section.is_some_and(|s| self.a.included.contains(&s));
        // Code taking the address of a changed function keeps the original's address, so
        // pointers stored elsewhere stay valid after the patch is disabled; calls through
        // them reach the new code through ftrace while the patch is on.
        let address_of_changed = tsym.section.is_some_and(|s| self.changed_secs.contains(&s))
            && r.r_type == R_X86_64_32S
            && addend == 0
            && sec.name.starts_with(".text");
        if in_patch && !address_of_changed {
            return Ok(self.look.ids.get(t));
        }
        self.external(b, at).map(Some)
    }

    /// An undefined symbol for symbol `t` (patched index), which is outside the patch: its
    /// exported name or its `.klp.sym.*` placeholder, as the resolver decides.
    fn external(&mut self, b: &mut Builder<'_>, at: RelocTo<'_>) -> Result<SymbolId, ElfError> {
        let RelocTo { sec, r, t, addend } = at;
        let (a, p) = (self.a, &self.a.patched);
        let tsym = p.sym(t).expect("resolved symbol exists");
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
            let class = SymClass::from_section(a.orig.section_name(os.section.unwrap_or(0)));
            (os.name.clone(), true, class)
        } else {
            (tsym.name.clone(), false, SymClass::Other)
        };
        let res = self.resolution(&name, defined_here, class, &sec.name)?;
        if let Resolution::Klp { object, .. } = &res
            && self.look.resolver.object != "vmlinux"
            && special_entry_size(&sec.name).is_some()
        {
            return Err(ElfError::Symbol {
                symbol: name,
                section: sec.name.clone(),
                reason: format!(
                    "a klp relocation to {object} inside a special section of a module object is not supported (late module patching would apply it after the section is used)"
                ),
            });
        }
        Ok(self.undefined_symbol(b, &res, tsym.st_type))
    }

    /// How references to `name` are written, asked of the resolver once per name.
    fn resolution(
        &mut self,
        name: &str,
        defined_here: bool,
        class: SymClass,
        section: &str,
    ) -> Result<Resolution, ElfError> {
        let key = (name.to_owned(), defined_here);
        if let Some(res) = self.resolutions.get(&key) {
            return Ok(res.clone());
        }
        let wanted = ExternalRef {
            name,
            defined_here,
            class,
        };
        let res = self
            .look
            .resolver
            .resolve(&wanted, self.look.tu)
            .map_err(|reason| ElfError::Symbol {
                symbol: name.to_owned(),
                section: section.to_owned(),
                reason,
            })?;
        self.resolutions.insert(key, res.clone());
        Ok(res)
    }

    /// The undefined symbol written for `res`, added to the builder the first time; `st_type`
    /// is the type of the symbol referred to (functions and objects keep theirs).
    fn undefined_symbol(&mut self, b: &mut Builder<'_>, res: &Resolution, st_type: u8) -> SymbolId {
        let sname = res.symbol_name();
        if let Some(id) = self.out.undefined.get(&sname) {
            return *id;
        }
        let s = b.symbols.add();
        s.name = sname.clone().into_bytes().into();
        // Placeholders are weak: nothing defines them at link time, and the post-link
        // fix-up turns them into klp relocations.
        let bind = match res {
            Resolution::Normal(_) => elf::STB_GLOBAL,
            Resolution::Klp { .. } => elf::STB_WEAK,
        };
        let ty = if st_type == elf::STT_FUNC.0 || st_type == elf::STT_OBJECT.0 {
            elf::SymbolType(st_type)
        } else {
            elf::STT_NOTYPE
        };
        s.set_st_info(bind, ty);
        s.section = None;
        s.st_shndx = elf::SHN_UNDEF;
        s.st_value = 0;
        s.st_size = 0;
        let id = s.id();
        self.out.undefined.insert(sname.clone(), id);
        match res {
            Resolution::Normal(n) => self.out.exported_symbols.insert(n.clone()),
            Resolution::Klp { .. } => self.out.klp_symbols.insert(sname),
        };
        id
    }
}

/// Where a relocation at `offset` of `sec` lands once only the `keep` entries of a special
/// section remain, or `None` when its entry is dropped. The relocations of `.orc_unwind` are
/// all dropped: its entries are copied by position, in lockstep with `.orc_unwind_ip`.
fn kept_offset(sec: &Section, keep: Option<&[u64]>, offset: u64) -> Option<u64> {
    let Some(keep) = keep else {
        return Some(offset);
    };
    if sec.name == ".orc_unwind" {
        return None;
    }
    let entry = entry_size_of(sec).unwrap_or(0);
    let e = offset / entry;
    let pos = keep.iter().position(|&k| k == e)?;
    Some(pos as u64 * entry + (offset - e * entry))
}

/// Takes the changed functions of the analysis and gives their `klp_func` entries: each
/// function's symbol turns local (the kernel's stays the one callers bind to) and a global
/// alias `klive_<tag>_<n>_<name>` names the new code for the generated stub.
fn alias_changed_functions(
    a: &Analysis,
    b: &mut Builder<'_>,
    look: Lookup<'_>,
    tag: &str,
) -> Result<Vec<PatchFunc>, ElfError> {
    let Lookup { ids, resolver, tu } = look;
    let mut funcs = Vec::new();
    for (n, (&si, f)) in a.changed_funcs.iter().enumerate() {
        let Some(id) = ids.get(f.patched_sym) else {
            continue;
        };
        let sympos = resolver
            .table
            .sympos(&f.old_name, SymClass::Text, tu)
            .map_err(|reason| ElfError::Symbol {
                symbol: f.old_name.clone(),
                section: a.patched.section_name(si).to_owned(),
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
    Ok(funcs)
}

/// Write: takes the builder with its new relocations and symbols and gives the bytes of the
/// patch object: sections not selected are dropped, relocation sections get `relocs`,
/// special sections only their kept entries, and symbols of dropped sections or unused
/// undefined symbols go.
fn write(
    mut b: Builder<'_>,
    ids: &SymbolIds,
    selection: &Selection,
    relocs: BTreeMap<usize, Vec<Relocation>>,
    undefined: &HashMap<String, SymbolId>,
) -> Result<Vec<u8>, ElfError> {
    prune_sections(&mut b, selection, relocs);
    prune_symbols(&mut b, ids, undefined);
    write_builder(b, "patch object")
}

/// Keeps the included sections, their relocations and the string and symbol tables.
fn prune_sections(
    b: &mut Builder<'_>,
    selection: &Selection,
    mut relocs: BTreeMap<usize, Vec<Relocation>>,
) {
    let keep_rela: BTreeSet<usize> = relocs.keys().copied().collect();
    let sec_ids: Vec<SectionId> = b.sections.iter().map(|s| s.id()).collect();
    for (idx, id) in sec_ids.iter().enumerate() {
        let s = b.sections.get_mut(*id);
        let meta = matches!(
            s.data,
            SectionData::Symbol | SectionData::String | SectionData::SectionString
        ) || s.name.as_slice() == b".note.GNU-stack";
        let keep = meta || selection.analysis.included.contains(&idx) || keep_rela.contains(&idx);
        s.delete = !keep;
        if let Some(relocs) = relocs.remove(&idx) {
            s.data = SectionData::Relocation(relocs);
        }
        if let Some(keep) = selection.kept_entries.get(&idx)
            && let SectionData::Data(d) = &s.data
        {
            let entry = match selection.analysis.patched.sec(idx) {
                Some(sec) if sec.name == ".orc_unwind" => 6,
                Some(sec) => entry_size_of(sec).unwrap_or(1),
                None => 1,
            };
            let data = kept_entry_bytes(d, entry, keep);
            s.sh_size = data.len() as u64;
            s.data = SectionData::Data(data.into());
        }
    }
}

/// The bytes of the `keep` entries (each `entry` bytes) of a special section with contents `d`.
fn kept_entry_bytes(d: &[u8], entry: u64, keep: &[u64]) -> Vec<u8> {
    let mut data = Vec::with_capacity(keep.len() * entry as usize);
    for &e in keep {
        let lo = (e * entry) as usize;
        let hi = ((e + 1) * entry).min(d.len() as u64) as usize;
        data.extend_from_slice(d.get(lo..hi).unwrap_or(&[]));
    }
    data
}

/// Drops the symbols of dropped sections and the undefined symbols nothing refers to any
/// more (the ones [`relocate`] added stay).
fn prune_symbols(b: &mut Builder<'_>, ids: &SymbolIds, undefined: &HashMap<String, SymbolId>) {
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
    let new_syms: BTreeSet<usize> = undefined.values().map(|id| id.index()).collect();
    for id in &ids.0 {
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
}

fn c_ident(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
