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
    let (fixed, fix) = fixup_module(&e.object, "vmlinux").unwrap();
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
