//! Steps 4 and 5, diff and emit: each unit's original and patched object compared by
//! meaning, and the patch object of every unit that changes functions written in memory
//! (both by klive-elf), against the symbols of the running kernel's klp object.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{Context, Result};
use klive_elf::Analysis;
use klive_elf::emit::{Emitted, PatchFunc};
use klive_elf::symbols::{Exports, Resolver, SymbolTable};

use crate::compile::object_file_name;
use crate::debian::{find_module_file, read_module};
use crate::tree::Work;
use crate::{Job, Stop, Symbols};

/// What the running kernel's klp object exports and which symbols it has, for the emitter
/// to tell exported symbols from `.klp.sym.*` references.
#[derive(Debug)]
pub struct TargetSymbols {
    /// `vmlinux` or the module name.
    object: String,
    table: SymbolTable,
    exports: Exports,
}

impl TargetSymbols {
    /// Takes the job and the klp object; gives `Module.symvers` of the target's kbuild and
    /// the object's symbol table: the kallsyms dump or the unstripped vmlinux for vmlinux,
    /// the kernel's `.ko` (or `.ko.xz`) under its modules directory for a module.
    pub fn load(job: &Job, object: &str) -> Result<TargetSymbols> {
        let symvers_path = job.target.kbuild.join("Module.symvers");
        let exports = Exports::from_module_symvers(
            &std::fs::read_to_string(&symvers_path)
                .with_context(|| format!("reading {}", symvers_path.display()))?,
        );
        let table = if object == "vmlinux" {
            vmlinux_table(job)?
        } else {
            let dir = &job.target.modules_dir;
            let ko = find_module_file(dir, object)
                .with_context(|| format!("module {object}.ko not found under {}", dir.display()))?;
            SymbolTable::from_module_object(&read_module(&ko)?, &ko.to_string_lossy())?
        };
        Ok(TargetSymbols {
            object: object.to_owned(),
            table,
            exports,
        })
    }

    pub fn resolver(&self) -> Resolver<'_> {
        Resolver {
            object: self.object.clone(),
            table: &self.table,
            exports: &self.exports,
        }
    }
}

/// The target symbols of every klp object the units belong to, loaded when first asked for.
#[derive(Debug)]
pub struct Targets<'j> {
    job: &'j Job,
    loaded: BTreeMap<String, TargetSymbols>,
}

impl<'j> Targets<'j> {
    pub fn new(job: &'j Job) -> Targets<'j> {
        Targets {
            job,
            loaded: BTreeMap::new(),
        }
    }

    pub fn get(&mut self, object: &str) -> Result<&TargetSymbols> {
        if !self.loaded.contains_key(object) {
            let t = TargetSymbols::load(self.job, object)?;
            self.loaded.insert(object.to_owned(), t);
        }
        Ok(&self.loaded[object])
    }

    /// Whether the kernel has the unit at all: its module exists, or (built-in) one of the
    /// functions it defines is in vmlinux. A symbol source that cannot be read is an error,
    /// never taken for "not in this kernel".
    fn has_unit(&mut self, object: &str, analysis: &Analysis) -> Result<bool> {
        if object != "vmlinux" && find_module_file(&self.job.target.modules_dir, object).is_none() {
            return Ok(false);
        }
        let t = self.get(object)?;
        Ok(object != "vmlinux"
            || analysis
                .orig
                .symbols()
                .any(|(_, s)| s.is_func() && s.section.is_some() && t.table.count(&s.name) > 0))
    }
}

/// The vmlinux symbol table from the job's symbol source, in kallsyms order.
fn vmlinux_table(job: &Job) -> Result<SymbolTable> {
    let path = match &job.target.symbols {
        Symbols::Kallsyms(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Ok(SymbolTable::from_kallsyms(&text, "vmlinux"));
        }
        Symbols::Vmlinux(path) => path.clone(),
        Symbols::DebianDbg(kernel) => kernel.vmlinux(&job.cache)?,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(SymbolTable::from_vmlinux(&bytes, &path.to_string_lossy())?)
}

/// One translation unit, compared.
#[derive(Debug)]
pub struct Unit {
    tu: String,
    /// Its klp object: `vmlinux` or a module name.
    object: String,
    /// The patched object, which the emitter reads again.
    patched: Vec<u8>,
    analysis: Analysis,
    /// Its section of the build report.
    report: String,
}

/// Step 4, diff: takes the compiled units and the work directories holding both builds of
/// each; gives every unit's analysis and report section, in order.
pub fn diff(units: &[(String, String)], work: &Work) -> Result<Vec<Unit>> {
    units
        .iter()
        .map(|(tu, object)| {
            let file = object_file_name(tu);
            let o = std::fs::read(work.orig.join(&file))?;
            let patched = std::fs::read(work.patched.join(&file))?;
            let analysis =
                klive_elf::analyze(&o, &patched).with_context(|| format!("comparing {tu}"))?;
            let mut report = format!("== {tu} (klp object {object})\n");
            report += &analysis.report.render();
            Ok(Unit {
                tu: tu.clone(),
                object: object.clone(),
                patched,
                analysis,
                report,
            })
        })
        .collect()
}

/// What [`emit`] gives: the patch objects, the functions they replace by klp object and the
/// report so far.
#[derive(Debug)]
pub struct Patch {
    pub objects: Vec<Emitted>,
    /// `vmlinux` or a module name → the functions of that object the patch replaces.
    pub funcs: BTreeMap<String, Vec<PatchFunc>>,
    /// Symbol namespaces of the exported symbols the patch uses (`MODULE_IMPORT_NS`).
    pub namespaces: BTreeSet<String>,
    pub report: String,
}

/// Step 5, emit: takes the compared units, which of them only include a changed header, and
/// the target symbols; gives the patch object of every unit that changes something. Stops
/// ([`Stop`], report printed) when a unit is refused or no function changes.
pub fn emit(
    units: Vec<Unit>,
    via_header: &BTreeSet<String>,
    targets: &mut Targets<'_>,
) -> Result<Patch> {
    let mut report = String::new();
    let mut objects = Vec::new();
    let mut funcs: BTreeMap<String, Vec<PatchFunc>> = BTreeMap::new();
    let mut namespaces = BTreeSet::new();
    let mut left_out = Vec::new();
    let mut refused = false;
    // The other units are still emitted after a refusal: the report printed with it then
    // shows what each of them would refer to.
    for (n, mut unit) in units.into_iter().enumerate() {
        let a = &unit.analysis;
        let changes = !a.changed_funcs.is_empty() || !a.included.is_empty();
        // kbuild compiles a file the config does not select all the same (as built-in
        // code): such a unit is not part of this kernel, and neither is its change.
        if (changes || !a.report.refusals.is_empty()) && !targets.has_unit(&unit.object, a)? {
            let why = if via_header.contains(&unit.tu) {
                "includes a changed header but"
            } else {
                "changed but"
            };
            let _ = writeln!(
                report,
                "== {} {why} is not built in this kernel's config (none of its functions is in {}); left out",
                unit.tu, unit.object
            );
            left_out.push(unit.tu.clone());
            continue;
        }
        if !a.report.refusals.is_empty() {
            refused = true;
        } else if changes {
            let target = targets.get(&unit.object)?;
            // The unit's position makes the alias names unique across units.
            let e = klive_elf::emit::emit(&unit.patched, a, &target.resolver(), &format!("{n}"))
                .with_context(|| format!("emitting {}", unit.tu))?;
            for s in &e.klp_symbols {
                let _ = writeln!(unit.report, "  klp symbol {s}");
            }
            for (s, k) in &e.special_entries {
                let _ = writeln!(unit.report, "  kept {k} {s} entries");
            }
            for tp in &e.tracepoints_off {
                let _ = writeln!(
                    unit.report,
                    "  warning: tracepoint {tp} stays off in the patched functions (its static key is in module {}, which a livepatch's jump labels cannot reach)",
                    unit.object
                );
            }
            funcs
                .entry(unit.object.clone())
                .or_default()
                .extend(e.funcs.iter().cloned());
            namespaces.extend(
                e.exported_symbols
                    .iter()
                    .filter_map(|s| target.exports.namespace.get(s).cloned()),
            );
            objects.push(e);
        }
        report += &unit.report;
    }
    if refused {
        eprint!("{report}");
        return Err(Stop::Refused(
            "the diffs change things a livepatch cannot carry (see \"refused\" above); nothing was emitted".into(),
        )
        .into());
    }
    funcs.retain(|_, f| !f.is_empty());
    if funcs.is_empty() && !left_out.is_empty() {
        eprint!("{report}");
        return Err(Stop::NothingToPatch(format!(
            "the diffs change only files this kernel's config does not build ({}); the fix does not concern this kernel",
            left_out.join(", ")
        ))
        .into());
    }
    if funcs.is_empty() {
        eprint!("{report}");
        return Err(Stop::NothingToPatch(
            "the diffs change no function (comments, whitespace or line numbers only); nothing was emitted".into(),
        )
        .into());
    }
    Ok(Patch {
        objects,
        funcs,
        namespaces,
        report,
    })
}
