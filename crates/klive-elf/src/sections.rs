//! What a section of a kernel object is, by name and content: ignored metadata, `__init`
//! code, sections shared by several functions, special tables filtered per function (and
//! their entry sizes), and the fresh copies patched code takes with it (string literals,
//! private read-only data).

use crate::model::{Elf, Section, is_special_static};

const INIT_PREFIXES: [&str; 8] = [
    ".init.",
    ".exit.",
    ".meminit.",
    ".ref.",
    ".head.text",
    ".initcall",
    ".con_initcall",
    ".x86_cpu_dev.init",
];
pub(crate) const SHARED_TEXT: [&str; 9] = [
    ".text",
    ".sched.text",
    ".noinstr.text",
    ".spinlock.text",
    ".cpuidle.text",
    ".entry.text",
    ".kprobes.text",
    ".irqentry.text",
    ".softirqentry.text",
];

/// Sections regenerated or never carried over: not compared.
pub fn is_ignored_section(name: &str) -> bool {
    const PREFIXES: [&str; 22] = [
        ".discard",
        ".debug",
        ".comment",
        ".note",
        ".modinfo",
        "__ksymtab",
        "___ksymtab",
        "__kcrctab",
        ".BTF",
        "__mcount_loc",
        "__patchable_function_entries",
        ".orc_unwind",
        ".eh_frame",
        ".llvm",
        ".altinstr_replacement",
        ".altinstr_aux",
        ".symtab",
        ".strtab",
        ".shstrtab",
        ".rela",
        ".group",
        "__versions",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || special_entry_size(name).is_some()
}

/// The entry size of special section `sec`: [`special_entry_size`], except where it changed
/// between kernel versions and the section itself tells (`struct alt_instr` is 12 bytes in
/// Linux 6.1 and 14 from 6.3 on; each entry has two relocations).
pub fn entry_size_of(sec: &Section) -> Option<u64> {
    let table = special_entry_size(&sec.name)?;
    if sec.name == ".altinstructions"
        && !sec.relocs.is_empty()
        && sec.relocs.len().is_multiple_of(2)
    {
        let entries = (sec.relocs.len() / 2) as u64;
        if sec.size.is_multiple_of(entries) && matches!(sec.size / entries, 12 | 14) {
            return Some(sec.size / entries);
        }
    }
    Some(table)
}

/// Fixed-size tables whose entries refer to code (x86-64, Linux 6.1); filtered per function.
pub fn special_entry_size(name: &str) -> Option<u64> {
    Some(match name {
        "__bug_table" => 12,
        "__ex_table" => 12,
        "__jump_table" => 16,
        ".static_call_sites" => 8,
        ".altinstructions" => 12,
        ".parainstructions" => 16,
        ".smp_locks" => 4,
        ".retpoline_sites" => 4,
        ".return_sites" => 4,
        ".call_sites" => 4,
        ".ibt_endbr_seal" => 4,
        ".orc_unwind_ip" => 4,
        "__mcount_loc" => 8,
        _ => return None,
    })
}

pub(crate) fn is_init(name: &str) -> bool {
    INIT_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Sections copied fresh into the patch whenever patched code refers to them.
pub fn is_fresh_copy(sec: &Section, elf: &Elf) -> bool {
    let n = sec.name.as_str();
    sec.is_strings()
        || n == ".rodata"
        || n.starts_with(".rodata.cst")
        || n.starts_with(".rodata.str")
        || n == ".data.once"
        || n == ".data..once"
        || n == ".altinstr_aux"
        // Dynamic debug descriptors: the patch registers its own for its pr_debug sites.
        || n == "__dyndbg"
        || n == "__dyndbg_classes"
        || is_private_rodata(sec, elf)
        || sec
            .bundled
            .and_then(|b| elf.sym(b))
            .is_some_and(|s| is_special_static(&s.name))
}

/// Read-only data of this object alone and free of pointers: netlink extack messages
/// (`__msg.N`), `static const` tables of numbers or strings. The patch takes its own copy, as
/// it does of string literals, so nothing is looked up in the running kernel (such names
/// exist dozens of times there) and a changed value travels with the code that reads it.
/// Tables that hold pointers stay shared with the running kernel: code that stores their
/// address (an ops table) must not end up pointing into the livepatch module.
pub fn is_private_rodata(sec: &Section, elf: &Elf) -> bool {
    let flags = object::elf::SHF_WRITE.0 | object::elf::SHF_EXECINSTR.0;
    sec.is_alloc()
        && sec.flags & flags == 0
        && sec.sh_type == object::elf::SHT_PROGBITS.0
        && sec.name.starts_with(".rodata.")
        && sec.relocs.is_empty()
        && sec
            .bundled
            .and_then(|b| elf.sym(b))
            .is_some_and(|s| s.is_local() && s.is_object())
}
