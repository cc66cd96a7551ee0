//! The patch object: references outside the patch, symbol positions, the post-link fix-up.

use klive_elf::analyze;
use klive_elf::emit::emit;
use klive_elf::klp::{fixup_module, verify_module};

use crate::support::{BASE, KALLSYMS, Vmlinux, golden, pair};

#[test]
fn emitted_object_points_non_exported_symbols_at_klp_placeholders() {
    let patched = BASE.replace(
        "seq_printf(m, \"%s\\n\", saved_command_line);",
        "seq_printf(m, \"%s klive=1\\n\", saved_command_line);",
    );
    let (o, p) = pair(BASE, &patched);
    let a = analyze(&o, &p).unwrap();
    let vmlinux = Vmlinux::new(KALLSYMS);
    let resolver = vmlinux.resolver();
    let e = emit(&p, &a, &resolver, "t0").unwrap();
    let mut summary = String::new();
    for f in &e.funcs {
        summary += &format!(
            "func {} sympos {} -> {}\n",
            f.old_name, f.sympos, f.new_symbol
        );
    }
    for s in &e.klp_symbols {
        summary += &format!("klp {s}\n");
    }
    for s in &e.exported_symbols {
        summary += &format!("exported {s}\n");
    }
    golden("emit_cmdline.txt", &summary);
    // `helper.constprop.0` is static and appears twice in kallsyms: its neighbour `cmdline_show` picks
    // the first one.
    assert!(
        e.klp_symbols
            .contains(".klp.sym.vmlinux.helper.constprop.0,1"),
        "{summary}"
    );
    assert!(
        e.klp_symbols
            .contains(".klp.sym.vmlinux.saved_command_line,0")
    );

    // The object reads back, and the post-link fix-up turns the placeholders into klp
    // relocation sections (here on the object itself, standing in for the linked module).
    let (fixed, fix) = fixup_module(&e.object).unwrap();
    assert_eq!(
        fix.sections.keys().collect::<Vec<_>>(),
        [".klp.rela.vmlinux..text.cmdline_show"]
    );
    let verified = verify_module(&fixed).unwrap();
    assert_eq!(verified.sections[".klp.rela.vmlinux..text.cmdline_show"], 2);
    assert_eq!(verified.symbols.len(), 2);
}

#[test]
fn ambiguous_symbol_position_stops_the_emit() {
    let patched = BASE.replace("return helper(2);", "return helper(3);");
    let (o, p) = pair(BASE, &patched);
    let a = analyze(&o, &p).unwrap();
    // Both `helper`s far from anything of this file: no way to tell them apart.
    let dump = "ffffffff81100000 t helper.constprop.0\nffffffff81900000 t helper.constprop.0\nffffffff85000000 T cmdline_show\n";
    let vmlinux = Vmlinux::new(dump);
    let resolver = vmlinux.resolver();
    let err = emit(&p, &a, &resolver, "t0").unwrap_err().to_string();
    assert!(err.contains("helper"), "{err}");
}

/// A netlink-style unit: every `NL_SET_ERR_MSG` makes a local `static const char __msg[]` in
/// its own `.rodata.__msg.N` section, numbered per object.
const EXTACK: &str = r#"
struct extack { const char *msg; };
#define NL_SET_ERR_MSG(e, m) do { static const char __msg[] = m; if (e) (e)->msg = __msg; } while (0)
static const int weights[4] = {3, 5, 7, 11};
int a(struct extack *e, int x) { if (x < 0) { NL_SET_ERR_MSG(e, "negative"); return -22; } return weights[x & 3]; }
int b(struct extack *e, int x) { if (x > 10) { NL_SET_ERR_MSG(e, "too big"); return -22; } return x; }
int c(struct extack *e, int x) { if (x == 5) { NL_SET_ERR_MSG(e, "five"); return -22; } return x; }
"#;

/// The running kernel has dozens of `__msg.N` and `weights` from other files; none of them
/// may be chosen for the patch's own read-only data.
const EXTACK_KALLSYMS: &str = "\
ffffffff81100000 T a
ffffffff81100040 T b
ffffffff81100080 T c
ffffffff82000000 d __msg.0
ffffffff82000010 d __msg.1
ffffffff82000020 d __msg.2
ffffffff82100000 d __msg.0
ffffffff82100010 d __msg.1
ffffffff82100020 d __msg.2
ffffffff82200000 r weights
ffffffff82300000 r weights
";

fn object_holds(object: &[u8], needle: &[u8]) -> bool {
    object.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn read_only_data_used_by_a_changed_function_travels_with_it() {
    let patched = EXTACK.replace("if (x < 0)", "if (x < 1)");
    let (o, p) = pair(EXTACK, &patched);
    let a = analyze(&o, &p).unwrap();
    assert_eq!(a.report.changed_functions, ["a"]);
    assert!(a.report.refusals.is_empty(), "{}", a.report.render());
    let vmlinux = Vmlinux::new(EXTACK_KALLSYMS);
    let e = emit(&p, &a, &vmlinux.resolver(), "t0").unwrap();
    assert!(
        e.klp_symbols.is_empty(),
        "no lookup in the running kernel: {:?}",
        e.klp_symbols
    );
    assert!(object_holds(&e.object, b"negative\0"));
    assert!(object_holds(
        &e.object,
        &[3, 0, 0, 0, 5, 0, 0, 0, 7, 0, 0, 0, 11, 0, 0, 0]
    ));
}

#[test]
fn a_changed_message_patches_the_function_that_sets_it() {
    let patched = EXTACK.replace("\"too big\"", "\"more than 10\"");
    let (o, p) = pair(EXTACK, &patched);
    let a = analyze(&o, &p).unwrap();
    assert!(a.report.refusals.is_empty(), "{}", a.report.render());
    assert_eq!(a.report.changed_functions, ["b"]);
    let vmlinux = Vmlinux::new(EXTACK_KALLSYMS);
    let e = emit(&p, &a, &vmlinux.resolver(), "t0").unwrap();
    assert!(object_holds(&e.object, b"more than 10\0"));
}

#[test]
fn a_removed_message_renumbers_the_others_without_patching_them() {
    // GCC numbers `__msg.N` per object: removing one message renumbers the others. Their
    // text is the same, so only the function that lost its message changes, whichever it is.
    for (func, msg) in [("a", "negative"), ("b", "too big"), ("c", "five")] {
        let patched = EXTACK.replace(
            &format!("{{ NL_SET_ERR_MSG(e, \"{msg}\"); return -22; }}"),
            "{ return -22; }",
        );
        assert_ne!(patched, EXTACK);
        let (o, p) = pair(EXTACK, &patched);
        let a = analyze(&o, &p).unwrap();
        assert!(
            a.report.refusals.is_empty(),
            "{func}: {}",
            a.report.render()
        );
        assert_eq!(a.report.changed_functions, [func]);
    }
}

#[test]
fn a_changed_read_only_table_patches_every_function_that_reads_it() {
    let src = format!("{EXTACK}\nint d(int x) {{ return weights[(x + 1) & 3]; }}\n");
    let patched = src.replace("{3, 5, 7, 11}", "{3, 5, 7, 13}");
    let (o, p) = pair(&src, &patched);
    let a = analyze(&o, &p).unwrap();
    assert!(a.report.refusals.is_empty(), "{}", a.report.render());
    assert_eq!(a.report.changed_functions, ["a", "d"]);
}

#[test]
fn a_read_only_table_of_pointers_stays_the_running_kernels() {
    // Code may store an ops table's address; it must not point into the livepatch module,
    // which can be unloaded. Such a table is referenced, not copied.
    let src = r#"
struct ops { int (*run)(int); };
static int twice(int x) { return 2 * x; }
int thrice(int x) { return 3 * x; }
static const struct ops my_ops = { .run = twice };
const struct ops *current_ops;
int install(int x) { current_ops = &my_ops; return x + 1; }
"#;
    let (o, p) = pair(src, &src.replace("return x + 1;", "return x + 2;"));
    let a = analyze(&o, &p).unwrap();
    assert_eq!(a.report.changed_functions, ["install"]);
    let dump =
        "ffffffff81100000 T install\nffffffff82000000 r my_ops\nffffffff82000100 B current_ops\n";
    let vmlinux = Vmlinux::new(dump);
    let e = emit(&p, &a, &vmlinux.resolver(), "t0").unwrap();
    assert!(
        e.klp_symbols.iter().any(|s| s.contains("my_ops")),
        "{:?}",
        e.klp_symbols
    );
    // Changing such a table is a data change a livepatch cannot carry.
    let (o, p) = pair(src, &src.replace(".run = twice", ".run = thrice"));
    let a = analyze(&o, &p).unwrap();
    assert_eq!(
        a.report.refusals[0].kind,
        klive_elf::RefusalKind::ChangedData
    );
}

#[test]
fn a_changed_read_only_table_reached_through_data_is_refused() {
    // As a netlink family points at its policy: no function reads the table, so a copy in
    // the patch would never be used; the change cannot be carried.
    let src = r#"
struct policy { int type; int len; };
struct family { const char *name; const struct policy *policy; };
static const struct policy my_policy[3] = { {1, 16}, {2, 4}, {3, 8} };
struct family my_family = { "fam", my_policy };
int family_len(void) { return 3; }
"#;
    let (o, p) = pair(src, &src.replace("{1, 16}", "{7, 16}"));
    let a = analyze(&o, &p).unwrap();
    assert_eq!(
        a.report.refusals.first().map(|r| r.kind),
        Some(klive_elf::RefusalKind::ChangedData),
        "{}",
        a.report.render()
    );
    assert!(
        a.report
            .refusals
            .iter()
            .any(|r| r.location.contains("my_policy")),
        "{}",
        a.report.render()
    );
}

#[test]
fn klp_relocations_are_split_by_the_object_whose_symbol_they_use() {
    // One function of a patch to module xfs that uses a symbol of vmlinux and one of xfs:
    // the kernel applies `.klp.rela.vmlinux.*` when the patch is enabled and
    // `.klp.rela.xfs.*` when xfs loads, and refuses vmlinux symbols in the latter.
    let src = r#"
__asm__(".section .text.patched_fn,\"ax\",@progbits\n"
        ".globl patched_fn\n.type patched_fn,@function\npatched_fn:\n"
        "movl \".klp.sym.vmlinux.core_counter,0\"(%rip), %eax\n"
        "addl \".klp.sym.xfs.xfs_local,2\"(%rip), %eax\nret\n"
        ".size patched_fn, .-patched_fn\n");
"#;
    let dir = tempfile::tempdir().unwrap();
    let object = crate::support::compile_with(dir.path(), "split", src, &[]);
    let (fixed, fix) = fixup_module(&object).unwrap();
    assert_eq!(
        fix.sections.keys().collect::<Vec<_>>(),
        [
            ".klp.rela.vmlinux..text.patched_fn",
            ".klp.rela.xfs..text.patched_fn"
        ],
        "{fix:?}"
    );
    let verified = verify_module(&fixed).unwrap();
    assert_eq!(verified.sections[".klp.rela.xfs..text.patched_fn"], 1);
    assert_eq!(verified.sections[".klp.rela.vmlinux..text.patched_fn"], 1);
}

#[test]
fn functions_after_call_padding_and_endbr_are_patched() {
    // Linux 6.12 builds with CONFIG_CALL_PADDING (16 NOPs before every function) and IBT
    // (`endbr64` first, then the fentry call).
    let flags = ["-fpatchable-function-entry=16,16", "-fcf-protection=branch"];
    let patched = BASE.replace(
        "seq_printf(m, \"%s\\n\", saved_command_line);",
        "seq_printf(m, \"%s klive=1\\n\", saved_command_line);",
    );
    let (o, p) = crate::support::pair_with(BASE, &patched, &flags);
    let a = analyze(&o, &p).unwrap();
    assert_eq!(
        a.report.changed_functions,
        ["cmdline_show"],
        "{}",
        a.report.render()
    );
    assert!(a.report.refusals.is_empty(), "{}", a.report.render());
    let vmlinux = Vmlinux::new(KALLSYMS);
    let e = emit(&p, &a, &vmlinux.resolver(), "t0").unwrap();
    assert_eq!(e.funcs.len(), 1);
    // The alias the stub hands to klp points at the function's entry, past the padding.
    let file = object::File::parse(&*e.object).unwrap();
    use object::{Object as _, ObjectSymbol as _};
    let alias = file
        .symbols()
        .find(|s| s.name() == Ok(e.funcs[0].new_symbol.as_str()))
        .unwrap();
    assert_eq!(alias.address(), 16);
    // Relocations that named the section keep pointing at the same byte once they name the
    // function: the mcount entry is the fentry call after endbr64, 0x14 into the section.
    use object::ObjectSection as _;
    let mcount = file.section_by_name("__mcount_loc").unwrap();
    let (_, rel) = mcount.relocations().next().unwrap();
    let object::RelocationTarget::Symbol(si) = rel.target() else {
        panic!("mcount entry without a symbol");
    };
    let target = file.symbol_by_index(si).unwrap().address() as i64 + rel.addend();
    assert_eq!(target, 0x14);
}
