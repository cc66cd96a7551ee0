//! Input that is not a well-formed object: every reader answers with an error.

use klive_elf::analyze;
use klive_elf::emit::emit;
use klive_elf::klp::{fixup_module, verify_module};
use klive_elf::symbols::SymbolTable;

use crate::support::{BASE, KALLSYMS, Vmlinux, pair};

#[test]
fn garbage_input_is_an_error() {
    let (o, _) = pair(BASE, BASE);
    for cut in [0, 16, 64, o.len() / 2, o.len() - 1] {
        let _ = analyze(&o[..cut], &o);
        let _ = analyze(&o, &o[..cut]);
    }
    let mut flipped = o.clone();
    for i in (0..flipped.len()).step_by(97) {
        flipped[i] ^= 0xff;
        let _ = analyze(&flipped, &o);
    }
    assert!(analyze(b"not an elf", &o).is_err());
}

/// A valid object cut short anywhere (an interrupted copy, a full disk) is refused with an
/// error naming it by every reader, never read as a smaller object and never a panic.
#[test]
fn truncated_objects_are_errors() {
    let patched = BASE.replace("return helper(2);", "return helper(3) + 1;");
    let (o, p) = pair(BASE, &patched);
    let a = analyze(&o, &p).unwrap();
    let vmlinux = Vmlinux::new(KALLSYMS);
    let resolver = vmlinux.resolver();
    let e = emit(&p, &a, &resolver, "t0").unwrap();
    let (module, _) = fixup_module(&e.object).unwrap();
    let cuts = |len: usize| [0, 1, 16, 63, 64, 100, len / 4, len / 2, len - 64, len - 1];
    for cut in cuts(o.len()) {
        let err = analyze(&o[..cut], &p).unwrap_err().to_string();
        assert!(err.contains("original object"), "cut at {cut}: {err}");
        assert!(
            SymbolTable::from_module_object(&o[..cut], "cut.ko").is_err(),
            "symbol table read from an object cut at {cut}"
        );
    }
    for cut in cuts(p.len()) {
        let err = analyze(&o, &p[..cut]).unwrap_err().to_string();
        assert!(err.contains("patched object"), "cut at {cut}: {err}");
        assert!(
            emit(&p[..cut], &a, &resolver, "t0").is_err(),
            "emit accepted a patched object cut at {cut}"
        );
    }
    for cut in cuts(module.len()) {
        assert!(
            fixup_module(&module[..cut]).is_err(),
            "fix-up accepted a module cut at {cut}"
        );
        assert!(
            verify_module(&module[..cut]).is_err(),
            "verify accepted a module cut at {cut}"
        );
    }
}
