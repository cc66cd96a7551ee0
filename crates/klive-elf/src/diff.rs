//! Compares an original and a patched object of one translation unit by meaning: sections and
//! symbols are correlated by name, relocations are compared by what they point at (symbol
//! names, string contents) rather than by symbol index, and pure line-number shifts in
//! instruction immediates are ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::ElfError;
use crate::model::{
    Elf, R_X86_64_PC32, R_X86_64_PLT32, Reloc, Section, is_pc_relative, is_special_static,
    is_text_name, mangled, reloc_width,
};
use crate::sections::{SHARED_TEXT, is_init};
pub use crate::sections::{
    entry_size_of, is_fresh_copy, is_ignored_section, is_private_rodata, special_entry_size,
};

/// What happened to a section between the original and the patched object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Same,
    /// Only instruction immediates that carry `__LINE__` to a known function differ.
    LineOnly,
    Changed,
    New,
}

/// Why a diff cannot become a livepatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RefusalKind {
    /// `__init`/`__exit`/`__meminit` code or data changed: it has run already or is gone.
    InitCode,
    /// An initialised static or global variable changed: a livepatch replaces code only.
    ChangedData,
    /// A variable changed size: the running kernel's data keeps the old layout.
    DataLayout,
    /// A changed function has no `call __fentry__`: ftrace cannot redirect it.
    NoFentry,
    /// A change inside a section shared by several functions (`.sched.text`, `.noinstr.text`).
    SharedSection,
    /// A changed weak function: the running kernel may use another definition.
    WeakFunction,
    /// A symbol changed type or binding.
    SymbolChange,
}

impl RefusalKind {
    pub fn reason(self) -> &'static str {
        match self {
            RefusalKind::InitCode => "__init/__exit code or data changed; it cannot be patched",
            RefusalKind::ChangedData => {
                "initialised static or global data changed; a livepatch replaces functions only"
            }
            RefusalKind::DataLayout => {
                "a variable or a type defined in this file changed layout; the running kernel's data keeps the old one"
            }
            RefusalKind::NoFentry => {
                "the function has no __fentry__ call (notrace or not instrumented); ftrace cannot redirect it"
            }
            RefusalKind::SharedSection => {
                "a function in a shared section (.sched.text, .noinstr.text, ...) changed; these are not patchable"
            }
            RefusalKind::WeakFunction => {
                "a weak function changed; the kernel may resolve the name to another definition"
            }
            RefusalKind::SymbolChange => "a symbol changed its type or binding",
        }
    }

    /// What a person can do about it: adapt the diff for live patching, or leave the change
    /// to the next reboot.
    pub fn next_step(self) -> &'static str {
        match self {
            RefusalKind::InitCode => {
                "leave the __init/__exit hunk out of the live patch: that code has run already, so the fix to it takes effect at the next reboot"
            }
            RefusalKind::ChangedData => {
                "keep the variable's initial value and put the new behaviour in the functions that read it (a manual adaptation of the diff)"
            }
            RefusalKind::DataLayout => {
                "keep the type as it is and hold new fields in a shadow variable (klp_shadow_get_or_alloc) in a manual adaptation of the diff"
            }
            RefusalKind::NoFentry => {
                "make the diff change the callers of that function instead, or leave the change to the next reboot"
            }
            RefusalKind::SharedSection => {
                "move the change into a caller outside that section, or leave it to the next reboot"
            }
            RefusalKind::WeakFunction => {
                "patch the strong definition the kernel uses, or the callers"
            }
            RefusalKind::SymbolChange => {
                "keep the symbol's binding and type (e.g. do not make a static function global) in the live-patch version of the diff"
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// The section and symbol concerned, e.g. `.data.limit (limit)`.
    pub location: String,
}

/// The result of comparing one translation unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffReport {
    /// Changed functions, by their name in the running kernel.
    pub changed_functions: Vec<String>,
    pub new_functions: Vec<String>,
    pub new_data: Vec<String>,
    /// Functions that differ only in line-number immediates: not patched.
    pub line_only: Vec<String>,
    pub removed_functions: Vec<String>,
    /// Changed functions without an fentry call (notrace, e.g. a syscall's `__do_sys_*`):
    /// copied into the patch, and the functions calling them are patched instead.
    pub notrace_copied: Vec<String>,
    /// Changed functions that look like a kernel thread's main loop: a task sleeping inside
    /// one never leaves it, so the transition cannot complete while that thread lives.
    pub may_stall: Vec<String>,
    pub refusals: Vec<Refusal>,
}

impl DiffReport {
    pub fn is_empty(&self) -> bool {
        self.changed_functions.is_empty()
            && self.new_functions.is_empty()
            && self.new_data.is_empty()
            && self.refusals.is_empty()
    }

    /// A stable, human-readable rendering (used in build reports and golden tests).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let list = |out: &mut String, title: &str, items: &[String]| {
            if !items.is_empty() {
                let _ = writeln!(out, "{title}:");
                for i in items {
                    let _ = writeln!(out, "  {i}");
                }
            }
        };
        list(&mut out, "changed functions", &self.changed_functions);
        list(&mut out, "new functions", &self.new_functions);
        list(&mut out, "new data", &self.new_data);
        list(&mut out, "line numbers only (not patched)", &self.line_only);
        list(&mut out, "removed functions", &self.removed_functions);
        list(
            &mut out,
            "changed without fentry (copied; callers patched)",
            &self.notrace_copied,
        );
        list(
            &mut out,
            "warning: a kthread main loop; the transition stalls while the thread runs (patch the functions it calls instead, or restart the thread)",
            &self.may_stall,
        );
        if !self.refusals.is_empty() {
            let _ = writeln!(out, "refused:");
            for r in &self.refusals {
                let _ = writeln!(out, "  {}: {}", r.location, r.kind.reason());
            }
            let mut kinds: Vec<RefusalKind> = self.refusals.iter().map(|r| r.kind).collect();
            kinds.dedup();
            let _ = writeln!(out, "what to do:");
            for k in kinds {
                let _ = writeln!(out, "  {}", k.next_step());
            }
        }
        if out.is_empty() {
            out.push_str("no functional change\n");
        }
        out
    }
}

/// Both objects with their correlation: the input of the emitter.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub orig: Elf,
    pub patched: Elf,
    /// Patched symbol → original symbol.
    pub sym_twin: HashMap<usize, usize>,
    /// Patched section → original section.
    pub sec_twin: HashMap<usize, usize>,
    /// Status of each patched section.
    pub status: HashMap<usize, Status>,
    /// Patched sections that go into the patch object (functions, new data, fresh copies).
    pub included: BTreeSet<usize>,
    /// Patched sections of changed functions (the ones that get a `klp_func`).
    pub changed_funcs: BTreeMap<usize, ChangedFunction>,
    pub report: DiffReport,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedFunction {
    /// Symbol in the patched object.
    pub patched_sym: usize,
    /// Name in the original object (and in the running kernel).
    pub old_name: String,
    /// Index of the function's symbol in the original object.
    pub orig_sym: usize,
}

/// Compares two objects of one translation unit.
pub fn analyze(orig: &[u8], patched: &[u8]) -> Result<Analysis, ElfError> {
    let orig = Elf::parse(orig, "original object")?;
    let patched = Elf::parse(patched, "patched object")?;
    Ok(analyze_elves(orig, patched))
}

pub fn analyze_elves(orig: Elf, patched: Elf) -> Analysis {
    let sym_twin = correlate_symbols(&orig, &patched);
    let mut sec_twin = HashMap::new();
    // Bundled symbols carry their sections along.
    for (&p, &o) in &sym_twin {
        let (Some(ps), Some(os)) = (patched.sym(p), orig.sym(o)) else {
            continue;
        };
        if let (Some(psec), Some(osec)) = (ps.section, os.section)
            && patched.sec(psec).and_then(|s| s.bundled) == Some(p)
            && orig.sec(osec).and_then(|s| s.bundled) == Some(o)
        {
            sec_twin.insert(psec, osec);
        }
    }
    // Other sections by exact name, then by unique mangled name.
    let taken: BTreeSet<usize> = sec_twin.values().copied().collect();
    let mut orig_by_name: HashMap<&str, usize> = HashMap::new();
    let mut orig_by_mangled: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, s) in orig.sections() {
        if taken.contains(&i) || s.bundled.is_some() {
            continue;
        }
        orig_by_name.insert(&s.name, i);
        orig_by_mangled.entry(mangled(&s.name)).or_default().push(i);
    }
    for (i, s) in patched.sections() {
        if sec_twin.contains_key(&i) || s.bundled.is_some() {
            continue;
        }
        if let Some(&o) = orig_by_name.get(s.name.as_str()) {
            sec_twin.insert(i, o);
        } else if let Some(v) = orig_by_mangled.get(&mangled(&s.name))
            && v.len() == 1
        {
            sec_twin.insert(i, v[0]);
        }
    }

    let mut status = HashMap::new();
    for (i, s) in patched.sections() {
        if s.rela_base.is_some() {
            continue;
        }
        let st = match sec_twin.get(&i) {
            None => Status::New,
            Some(&o) => compare_sections(&orig, o, &patched, i),
        };
        status.insert(i, st);
    }

    let mut a = Analysis {
        orig,
        patched,
        sym_twin,
        sec_twin,
        status,
        included: BTreeSet::new(),
        changed_funcs: BTreeMap::new(),
        report: DiffReport::default(),
    };
    classify(&mut a);
    let roots: Vec<usize> = a.included.iter().copied().collect();
    include_closure(&mut a, roots);
    a
}

/// Pairs defined FUNC/OBJECT symbols: exact name first, then a unique mangled name.
fn correlate_symbols(orig: &Elf, patched: &Elf) -> HashMap<usize, usize> {
    let candidates = |e: &Elf| -> Vec<usize> {
        e.symbols()
            .filter(|(_, s)| {
                (s.is_func() || s.is_object()) && s.section.is_some() && !is_special_static(&s.name)
            })
            .map(|(i, _)| i)
            .collect()
    };
    let o_c = candidates(orig);
    let p_c = candidates(patched);
    let mut twin = HashMap::new();
    let mut o_used = BTreeSet::new();
    let mut o_exact: HashMap<(&str, u8), Vec<usize>> = HashMap::new();
    for &i in &o_c {
        let s = orig.sym(i).expect("candidate");
        o_exact.entry((&s.name, s.st_type)).or_default().push(i);
    }
    for &p in &p_c {
        let s = patched.sym(p).expect("candidate");
        if let Some(v) = o_exact.get(&(s.name.as_str(), s.st_type))
            && v.len() == 1
        {
            twin.insert(p, v[0]);
            o_used.insert(v[0]);
        }
    }
    let o_mangled = by_mangled_name(orig, o_c.iter().filter(|i| !o_used.contains(*i)));
    let p_mangled = by_mangled_name(patched, p_c.iter().filter(|p| !twin.contains_key(*p)));
    for (k, pv) in &p_mangled {
        if let Some(ov) = o_mangled.get(k)
            && ov.len() == 1
            && pv.len() == 1
        {
            twin.insert(pv[0], ov[0]);
        }
    }
    twin
}

/// Symbols of `e` grouped by name without compiler numbers and type.
fn by_mangled_name<'i>(
    e: &Elf,
    symbols: impl Iterator<Item = &'i usize>,
) -> HashMap<(String, u8), Vec<usize>> {
    let mut groups: HashMap<(String, u8), Vec<usize>> = HashMap::new();
    for &i in symbols {
        let s = e.sym(i).expect("candidate");
        groups
            .entry((mangled(&s.name), s.st_type))
            .or_default()
            .push(i);
    }
    groups
}

/// The meaning of a relocation target, comparable across objects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Named(String, i64),
    Str(Vec<u8>),
    /// Private read-only data ([`is_private_rodata`]): its bytes are its meaning, whatever
    /// number the compiler gave its name.
    Data(Vec<u8>, i64),
    Section(String, i64),
    Nothing,
}

fn target_of(e: &Elf, r: &Reloc) -> Target {
    let Some((si, addend)) = e.resolve_target(r) else {
        return Target::Nothing;
    };
    let Some(sym) = e.sym(si) else {
        return Target::Nothing;
    };
    let Some(sec) = sym.section.and_then(|i| e.sec(i)) else {
        return if sym.is_section() {
            Target::Section(String::new(), addend)
        } else {
            Target::Named(mangled(&sym.name), addend)
        };
    };
    if is_private_rodata(sec, e) {
        let start = if sym.is_section() {
            0
        } else {
            sym.value as i64
        };
        return Target::Data(sec.data.clone(), start.saturating_add(addend));
    }
    if !sym.is_section() {
        return Target::Named(mangled(&sym.name), addend);
    }
    if sec.is_strings() {
        let bias = if is_pc_relative(r.r_type) { 4 } else { 0 };
        let start = addend.saturating_add(bias);
        if start >= 0 && (start as u64) < sec.data.len() as u64 {
            let rest = &sec.data[start as usize..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            return Target::Str(rest[..end].to_vec());
        }
    }
    Target::Section(mangled(&sec.name), addend)
}

fn compare_sections(o: &Elf, oi: usize, p: &Elf, pi: usize) -> Status {
    let (Some(os), Some(ps)) = (o.sec(oi), p.sec(pi)) else {
        return Status::Changed;
    };
    if os.sh_type != ps.sh_type || os.flags != ps.flags || os.size != ps.size {
        return Status::Changed;
    }
    if os.relocs.len() != ps.relocs.len() {
        return Status::Changed;
    }
    for (a, b) in os.relocs.iter().zip(&ps.relocs) {
        if a.offset != b.offset || a.r_type != b.r_type || target_of(o, a) != target_of(p, b) {
            return Status::Changed;
        }
    }
    let od = masked(os);
    let pd = masked(ps);
    if od == pd {
        return Status::Same;
    }
    if is_text_name(&os.name) && line_only(o, os, &od, &pd) {
        return Status::LineOnly;
    }
    Status::Changed
}

/// Section bytes with relocation sites zeroed.
fn masked(s: &Section) -> Vec<u8> {
    let mut d = s.data.clone();
    for r in &s.relocs {
        let start = r.offset as usize;
        let end = start
            .saturating_add(reloc_width(r.r_type) as usize)
            .min(d.len());
        if start < end {
            d[start..end].fill(0);
        }
    }
    d
}

/// Functions that take a line number in their second or third argument.
const LINE_TAKERS: [&str; 10] = [
    "__warn_printk",
    "warn_slowpath_fmt",
    "__might_sleep",
    "___might_sleep",
    "__might_resched",
    "__might_fault",
    "printk",
    "_printk",
    "lockdep_rcu_suspicious",
    "__btrfs_abort_transaction",
];

/// True if every differing byte lies in the immediate of `mov $imm32,%esi` or
/// `mov $imm32,%edx` that is followed within 64 bytes by a call to a line-taking function.
fn line_only(o: &Elf, os: &Section, od: &[u8], pd: &[u8]) -> bool {
    let mut covered_any = false;
    let mut i = 0;
    while i < od.len() {
        if od[i] == pd[i] {
            i += 1;
            continue;
        }
        let Some(q) = (i.saturating_sub(4)..i)
            .rev()
            .find(|&q| matches!(od[q], 0xbe | 0xba) && od[q] == pd[q] && i <= q + 4)
        else {
            return false;
        };
        let insn_end = q + 5;
        if od[i..insn_end.min(od.len())] == pd[i..insn_end.min(pd.len())] {
            return false;
        }
        let call = os.relocs.iter().find(|r| {
            r.offset as usize > insn_end
                && (r.offset as usize) < insn_end + 64
                && matches!(r.r_type, R_X86_64_PC32 | R_X86_64_PLT32)
                && r.offset >= 1
                && od.get(r.offset as usize - 1) == Some(&0xe8)
        });
        let Some(call) = call else { return false };
        let takes_line = call
            .sym
            .and_then(|s| o.sym(s))
            .is_some_and(|s| LINE_TAKERS.contains(&s.name.as_str()));
        if !takes_line {
            return false;
        }
        covered_any = true;
        i = insn_end;
    }
    covered_any
}

fn location(e: &Elf, sec: usize) -> String {
    let s = e.sec(sec);
    let name = s.map(|s| s.name.as_str()).unwrap_or("?");
    match s.and_then(|s| s.bundled).and_then(|b| e.sym(b)) {
        Some(sym) => format!("{name} ({})", sym.name),
        None => {
            let inside: Vec<&str> = e
                .symbols()
                .filter(|(_, y)| y.section == Some(sec) && (y.is_func() || y.is_object()))
                .map(|(_, y)| y.name.as_str())
                .collect();
            if inside.is_empty() {
                name.to_owned()
            } else {
                format!("{name} ({})", inside.join(", "))
            }
        }
    }
}

fn classify(a: &mut Analysis) {
    let mut report = DiffReport::default();
    let mut notrace: Vec<usize> = Vec::new();
    let p = &a.patched;
    let o = &a.orig;
    let mut sections: Vec<usize> = a.status.keys().copied().collect();
    sections.sort_unstable();
    for &si in &sections {
        let st = a.status[&si];
        let Some(sec) = p.sec(si) else { continue };
        let name = sec.name.as_str();
        if is_ignored_section(name) || st == Status::Same {
            continue;
        }
        if is_init(name) {
            if st == Status::Changed || (st == Status::New && sec.size > 0) {
                report.refusals.push(Refusal {
                    kind: RefusalKind::InitCode,
                    location: location(p, si),
                });
            }
            continue;
        }
        if SHARED_TEXT.contains(&name) {
            if st != Status::New || sec.size > 0 {
                report.refusals.push(Refusal {
                    kind: RefusalKind::SharedSection,
                    location: location(p, si),
                });
            }
            continue;
        }
        let bundled = sec.bundled.and_then(|b| p.sym(b).map(|s| (b, s)));
        if let Some((b, sym)) = bundled
            && sym.is_func()
        {
            match st {
                Status::Same => {}
                Status::LineOnly => report.line_only.push(sym.name.clone()),
                Status::New => {
                    report.new_functions.push(sym.name.clone());
                    if !sym.is_local() {
                        a.included.insert(si);
                    }
                }
                Status::Changed => {
                    let Some(&ob) = a.sym_twin.get(&b) else {
                        continue;
                    };
                    let osym = o.sym(ob).expect("twin exists");
                    let osec = a.sec_twin.get(&si).copied();
                    if osym.st_type != sym.st_type || osym.bind != sym.bind {
                        report.refusals.push(Refusal {
                            kind: RefusalKind::SymbolChange,
                            location: location(p, si),
                        });
                        continue;
                    }
                    if sym.bind == object::elf::STB_WEAK.0 {
                        report.refusals.push(Refusal {
                            kind: RefusalKind::WeakFunction,
                            location: location(p, si),
                        });
                        continue;
                    }
                    a.included.insert(si);
                    if let Some(parent) = sym.name.strip_suffix(".cold") {
                        // The hot part jumps into the cold part and back: patch them together.
                        let parent_idx = p.symbols().find(|(_, s)| s.name == parent && s.is_func());
                        if let Some((pi, ps)) = parent_idx
                            && let Some(psec) = ps.section
                            && let Some(&po) = a.sym_twin.get(&pi)
                        {
                            a.included.insert(psec);
                            a.changed_funcs.entry(psec).or_insert(ChangedFunction {
                                patched_sym: pi,
                                old_name: o.sym(po).expect("twin").name.clone(),
                                orig_sym: po,
                            });
                        }
                        continue;
                    }
                    if !osec.is_some_and(|os| o.has_fentry(os)) {
                        // Resolved below: a local one is copied and its callers patched.
                        notrace.push(si);
                        continue;
                    }
                    a.changed_funcs.insert(
                        si,
                        ChangedFunction {
                            patched_sym: b,
                            old_name: osym.name.clone(),
                            orig_sym: ob,
                        },
                    );
                }
            }
            continue;
        }
        if is_text_name(name) {
            continue;
        }
        // Data.
        if is_private_rodata(sec, p) && st == Status::Changed && referenced_from_data(p, si) {
            // Only code that reads it takes the new copy: a table the kernel reaches through
            // other data (a netlink family's policy, an ops table's array) keeps the old one.
            report.refusals.push(Refusal {
                kind: RefusalKind::ChangedData,
                location: location(p, si),
            });
            continue;
        }
        if is_fresh_copy(sec, p) {
            continue;
        }
        match st {
            Status::New => {
                if let Some((_, sym)) = bundled {
                    report.new_data.push(sym.name.clone());
                    if !sym.is_local() {
                        a.included.insert(si);
                    }
                }
            }
            Status::Changed | Status::LineOnly => report.refusals.push(Refusal {
                kind: RefusalKind::ChangedData,
                location: location(p, si),
            }),
            Status::Same => {}
        }
    }
    patch_callers_of_notrace(a, notrace, &mut report);
    let p = &a.patched;
    let o = &a.orig;
    // Size changes of correlated variables.
    for (&ps, &os) in &a.sym_twin {
        let (Some(psym), Some(osym)) = (p.sym(ps), o.sym(os)) else {
            continue;
        };
        // A private read-only copy may change size: every reader is patched with it.
        let private = psym
            .section
            .and_then(|s| p.sec(s))
            .is_some_and(|s| is_private_rodata(s, p));
        if psym.is_object() && psym.size != osym.size && !private {
            report.refusals.push(Refusal {
                kind: RefusalKind::DataLayout,
                location: format!(
                    "{} ({}: {} -> {} bytes)",
                    psym.section.map(|s| p.section_name(s)).unwrap_or("?"),
                    psym.name,
                    osym.size,
                    psym.size
                ),
            });
        }
    }
    // Types defined in this file (headers cannot change: they are refused before) whose
    // layout changed: instances in the running kernel keep the old one.
    for change in crate::layout::changed_layouts(o, p) {
        report.refusals.push(Refusal {
            kind: RefusalKind::DataLayout,
            location: change,
        });
    }
    // Functions that disappeared.
    let twins: BTreeSet<usize> = a.sym_twin.values().copied().collect();
    for (i, s) in o.symbols() {
        if s.is_func()
            && s.section.is_some()
            && !twins.contains(&i)
            && o.sec(s.section.unwrap_or(0)).and_then(|x| x.bundled) == Some(i)
        {
            report.removed_functions.push(s.name.clone());
        }
    }
    for (&si, f) in &a.changed_funcs {
        report.changed_functions.push(f.old_name.clone());
        if calls_any(p, si, &KTHREAD_LOOP) {
            report.may_stall.push(f.old_name.clone());
        }
    }
    report.changed_functions.sort();
    report.changed_functions.dedup();
    report.new_functions.sort();
    report.new_data.sort();
    report.line_only.sort();
    report.removed_functions.sort();
    report.notrace_copied.sort();
    report.may_stall.sort();
    report.refusals.sort();
    report.refusals.dedup();
    a.report = report;
}

/// Sections that only refer to code locations (tables regenerated per function): they do
/// not make a function a caller.
fn is_code_table(name: &str) -> bool {
    is_ignored_section(name) || name.starts_with(".discard")
}

/// A changed function without `call __fentry__` cannot be redirected, but if it is local
/// and only called (never address-taken) from functions of this file, a private copy goes
/// into the patch and each caller is patched instead, recursively. Anything else is refused.
fn patch_callers_of_notrace(a: &mut Analysis, notrace: Vec<usize>, report: &mut DiffReport) {
    let mut seen: BTreeSet<usize> = BTreeSet::new();
    let mut work = notrace;
    while let Some(si) = work.pop() {
        if !seen.insert(si) {
            continue;
        }
        let p = &a.patched;
        let Some(sym_i) = p.sec(si).and_then(|s| s.bundled) else {
            continue;
        };
        let Some(sym) = p.sym(sym_i) else { continue };
        if !sym.is_local() {
            report.refusals.push(Refusal {
                kind: RefusalKind::NoFentry,
                location: location(p, si),
            });
            continue;
        }
        let mut callers = Vec::new();
        let mut address_taken = None;
        for (ci, c) in p.sections() {
            if ci == si || c.rela_base.is_some() || is_code_table(&c.name) {
                continue;
            }
            let refers = c.relocs.iter().any(|r| {
                p.resolve_target(r)
                    .and_then(|(t, _)| p.sym(t))
                    .is_some_and(|t| t.section == Some(si))
            });
            if !refers {
                continue;
            }
            let caller = c
                .bundled
                .and_then(|b| p.sym(b).map(|s| (b, s)))
                .filter(|(_, s)| s.is_func() && is_text_name(&c.name));
            match caller {
                Some((b, _)) => callers.push((ci, b)),
                None => address_taken = Some(ci),
            }
        }
        if let Some(ci) = address_taken {
            report.refusals.push(Refusal {
                kind: RefusalKind::NoFentry,
                location: format!(
                    "{} (referenced from {})",
                    location(p, si),
                    p.section_name(ci)
                ),
            });
            continue;
        }
        if callers.is_empty() {
            report.refusals.push(Refusal {
                kind: RefusalKind::NoFentry,
                location: format!("{} (no caller in this file)", location(p, si)),
            });
            continue;
        }
        report.notrace_copied.push(sym.name.clone());
        a.included.insert(si);
        for (ci, b) in callers {
            a.included.insert(ci);
            let Some(&ob) = a.sym_twin.get(&b) else {
                // A new caller: it is copied anyway.
                continue;
            };
            let osec = a.sec_twin.get(&ci).copied();
            if osec.is_some_and(|os| a.orig.has_fentry(os)) {
                let old_name = a.orig.sym(ob).map(|s| s.name.clone()).unwrap_or_default();
                a.changed_funcs.entry(ci).or_insert(ChangedFunction {
                    patched_sym: b,
                    old_name,
                    orig_sym: ob,
                });
            } else {
                work.push(ci);
            }
        }
    }
}

/// The out-of-line cold part of a function (`foo.cold`, `foo.part.0.cold`): entered by a
/// jump from its parent and jumping back into it, so it must be copied with the parent.
/// True if a data section (not code, not debug information) of `e` refers to section `si`.
fn referenced_from_data(e: &Elf, si: usize) -> bool {
    e.sections().any(|(_, s)| {
        s.is_alloc()
            && !is_text_name(&s.name)
            && !is_ignored_section(&s.name)
            && s.relocs.iter().any(|r| {
                e.resolve_target(r)
                    .and_then(|(t, _)| e.sym(t))
                    .is_some_and(|t| t.section == Some(si))
            })
    })
}

/// Calls that mark a kernel thread's main loop.
const KTHREAD_LOOP: [&str; 3] = [
    "kthread_should_stop",
    "kthread_should_park",
    "kthread_freezable_should_stop",
];

/// True if the code of section `si` refers to one of `names`.
fn calls_any(e: &Elf, si: usize, names: &[&str]) -> bool {
    e.sec(si).is_some_and(|s| {
        s.relocs.iter().any(|r| {
            r.sym
                .and_then(|i| e.sym(i))
                .is_some_and(|y| names.contains(&y.name.as_str()))
        })
    })
}

fn is_cold_part(name: &str) -> bool {
    name.ends_with(".cold") || mangled(name).ends_with(".cold")
}

/// Adds to `a.included` every section that included code needs a private copy of: new
/// functions and data, string literals, fresh statics.
pub fn include_closure(a: &mut Analysis, roots: Vec<usize>) {
    let mut work = roots;
    while let Some(si) = work.pop() {
        let Some(sec) = a.patched.sec(si) else {
            continue;
        };
        for r in &sec.relocs {
            let Some((t, _)) = a.patched.resolve_target(r) else {
                continue;
            };
            let Some(tsec) = a.patched.sym(t).and_then(|s| s.section) else {
                continue;
            };
            if a.included.contains(&tsec) {
                continue;
            }
            let Some(ts) = a.patched.sec(tsec) else {
                continue;
            };
            let st = a.status.get(&tsec).copied().unwrap_or(Status::Same);
            let name = ts.name.as_str();
            let cold = a
                .patched
                .sym(t)
                .is_some_and(|s| s.is_func() && is_cold_part(&s.name))
                && is_text_name(name)
                // Code tables list every function of the file; only code pulls cold parts in.
                && is_text_name(&sec.name);
            let take = (st == Status::New && !is_init(name) && !is_ignored_section(name))
                || is_fresh_copy(ts, &a.patched)
                || cold;
            if take {
                a.included.insert(tsec);
                work.push(tsec);
            }
        }
    }
}
