//! Diffs of real objects compiled by gcc at test time, with kernel-like flags, checked
//! against golden reports. Regenerate the goldens with `KLIVE_BLESS=1 cargo test -p klive-elf`.

use std::path::{Path, PathBuf};
use std::process::Command;

use klive_elf::emit::emit;
use klive_elf::klp::{fixup_module, verify_module};
use klive_elf::symbols::{Exports, Resolver, SymbolTable};
use klive_elf::{RefusalKind, analyze};

/// Flags that make gcc emit what kbuild's objects look like: fentry calls, mcount records,
/// one section per function and variable, kernel code model.
const KFLAGS: &[&str] = &[
    "-O2",
    "-c",
    "-ffunction-sections",
    "-fdata-sections",
    "-pg",
    "-mfentry",
    "-mrecord-mcount",
    "-fno-pic",
    "-mcmodel=kernel",
    "-fno-asynchronous-unwind-tables",
    "-fno-stack-protector",
];

fn compile(dir: &Path, name: &str, src: &str) -> Vec<u8> {
    let c = dir.join(format!("{name}.c"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&c, src).unwrap();
    let out = Command::new("gcc")
        .current_dir(dir)
        .args(KFLAGS)
        .arg(format!("{name}.c"))
        .arg("-o")
        .arg(&o)
        .output()
        .expect("gcc is installed");
    assert!(
        out.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(o).unwrap()
}

fn pair(orig: &str, patched: &str) -> (Vec<u8>, Vec<u8>) {
    // Same file name in both builds, as in a kernel tree: `__FILE__` must not differ.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    (compile(&a, "unit", orig), compile(&b, "unit", patched))
}

fn golden(name: &str, actual: &str) {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "golden", name]
        .iter()
        .collect();
    if std::env::var_os("KLIVE_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing golden {}; run with KLIVE_BLESS=1", path.display()));
    assert_eq!(actual, expected, "report differs from {}", path.display());
}

const BASE: &str = r#"
struct seq_file;
extern int seq_printf(struct seq_file *m, const char *fmt, ...);
extern char *saved_command_line;
static int limit = 5;
int shared_counter;
static __attribute__((noinline)) int helper(int x) { return x * 3 + limit; }
int cmdline_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", saved_command_line);
	return helper(2);
}
int other(int a) { return a + 1; }
void set_limit(int l) { limit = l; }
"#;

#[test]
fn changed_function_and_new_helper() {
    let patched = BASE
        .replace(
            "int cmdline_show",
            "static __attribute__((noinline)) int extra(int y) { shared_counter += y; return y; }\nint cmdline_show",
        )
        .replace(
            "seq_printf(m, \"%s\\n\", saved_command_line);",
            "seq_printf(m, \"%s klive=1\\n\", saved_command_line); extra(1);",
        );
    let (o, p) = pair(BASE, &patched);
    let a = analyze(&o, &p).unwrap();
    golden("changed_function.txt", &a.report.render());
    assert_eq!(a.report.changed_functions, ["cmdline_show"]);
    assert!(a.report.refusals.is_empty());
}

#[test]
fn whitespace_only_is_no_change() {
    let patched = format!("\n\n/* a comment */\n{BASE}");
    let (o, p) = pair(BASE, &patched);
    let a = analyze(&o, &p).unwrap();
    golden("whitespace.txt", &a.report.render());
    assert!(a.report.is_empty());
}

#[test]
fn line_number_shift_is_ignored() {
    let src = r#"
extern void __might_sleep(const char *file, int line);
int slow(int a) { __might_sleep(__FILE__, __LINE__); return a * 7; }
"#;
    let (o, p) = pair(src, &format!("\n\n\n{src}"));
    let a = analyze(&o, &p).unwrap();
    golden("line_only.txt", &a.report.render());
    assert_eq!(a.report.line_only, ["slow"]);
    assert!(a.report.changed_functions.is_empty());
}

#[test]
fn changed_initialised_data_is_refused() {
    let (o, p) = pair(BASE, &BASE.replace("limit = 5", "limit = 6"));
    let a = analyze(&o, &p).unwrap();
    golden("changed_data.txt", &a.report.render());
    assert_eq!(a.report.refusals[0].kind, RefusalKind::ChangedData);
    assert!(a.report.refusals[0].location.contains("limit"));
}

#[test]
fn data_layout_change_is_refused() {
    let src = "int table[4] = {1, 2, 3, 4};\nint get(int i) { return table[i]; }\n";
    let (o, p) = pair(
        src,
        &src.replace("table[4] = {1, 2, 3, 4}", "table[5] = {1, 2, 3, 4}"),
    );
    let a = analyze(&o, &p).unwrap();
    golden("data_layout.txt", &a.report.render());
    assert!(
        a.report
            .refusals
            .iter()
            .any(|r| r.kind == RefusalKind::DataLayout)
    );
}

#[test]
fn init_code_change_is_refused() {
    let src = r#"
extern int printk(const char *fmt, ...);
__attribute__((section(".init.text"))) int setup_thing(void) { return printk("a\n"); }
"#;
    let (o, p) = pair(src, &src.replace("\"a\\n\"", "\"b\\n\""));
    let a = analyze(&o, &p).unwrap();
    golden("init_code.txt", &a.report.render());
    assert_eq!(a.report.refusals[0].kind, RefusalKind::InitCode);
}

#[test]
fn notrace_function_is_refused() {
    let src = "__attribute__((no_instrument_function)) int quiet(int a) { return a + 1; }\n";
    let (o, p) = pair(src, &src.replace("a + 1", "a + 2"));
    let a = analyze(&o, &p).unwrap();
    golden("notrace.txt", &a.report.render());
    assert_eq!(a.report.refusals[0].kind, RefusalKind::NoFentry);
}

const SYMVERS: &str = "0x12345678\tseq_printf\tvmlinux\tEXPORT_SYMBOL\t\n0x9abcdef0\t__fentry__\tvmlinux\tEXPORT_SYMBOL\t\n";

const KALLSYMS: &str = "\
ffffffff81100000 t helper.constprop.0
ffffffff81100040 T cmdline_show
ffffffff81100080 T other
ffffffff81200000 t helper.constprop.0
ffffffff82000000 D saved_command_line
ffffffff82000100 d limit
ffffffff82000200 B shared_counter
";

#[test]
fn emitted_object_points_non_exported_symbols_at_klp_placeholders() {
    let patched = BASE.replace(
        "seq_printf(m, \"%s\\n\", saved_command_line);",
        "seq_printf(m, \"%s klive=1\\n\", saved_command_line);",
    );
    let (o, p) = pair(BASE, &patched);
    let a = analyze(&o, &p).unwrap();
    let table = SymbolTable::from_kallsyms(KALLSYMS, "vmlinux");
    let exports = Exports::from_module_symvers(SYMVERS);
    let resolver = Resolver {
        object: "vmlinux".into(),
        table: &table,
        exports: &exports,
    };
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
    let table = SymbolTable::from_kallsyms(dump, "vmlinux");
    let exports = Exports::from_module_symvers(SYMVERS);
    let resolver = Resolver {
        object: "vmlinux".into(),
        table: &table,
        exports: &exports,
    };
    let err = emit(&p, &a, &resolver, "t0").unwrap_err().to_string();
    assert!(err.contains("helper"), "{err}");
}

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
    let table = SymbolTable::from_kallsyms(KALLSYMS, "vmlinux");
    let exports = Exports::from_module_symvers(SYMVERS);
    let resolver = Resolver {
        object: "vmlinux".into(),
        table: &table,
        exports: &exports,
    };
    let e = emit(&p, &a, &resolver, "t0").unwrap();
    let (module, _) = fixup_module(&e.object, "vmlinux").unwrap();
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
            fixup_module(&module[..cut], "vmlinux").is_err(),
            "fix-up accepted a module cut at {cut}"
        );
        assert!(
            verify_module(&module[..cut]).is_err(),
            "verify accepted a module cut at {cut}"
        );
    }
}

#[test]
fn changed_notrace_static_is_copied_and_its_callers_patched() {
    let src = "static __attribute__((noinline, no_instrument_function)) int quiet(int a) { return a * 7 + 1; }\n\
               int caller(int a) { return quiet(a) * 2; }\n\
               int caller2(int a) { return quiet(a + 1) * 3; }\n";
    let (o, p) = pair(src, &src.replace("a * 7 + 1", "a * 7 + 2"));
    let a = analyze(&o, &p).unwrap();
    assert!(a.report.refusals.is_empty(), "{}", a.report.render());
    assert_eq!(a.report.notrace_copied, ["quiet"]);
    assert_eq!(a.report.changed_functions, ["caller", "caller2"]);
}

#[test]
fn notrace_static_whose_address_is_taken_is_refused() {
    let src = "static __attribute__((noinline, no_instrument_function)) int quiet(int a) { return a * 7 + 1; }\n\
               int (*hook)(int) = quiet;\n\
               int caller(int a) { return quiet(a) * 2; }\n";
    let (o, p) = pair(src, &src.replace("a * 7 + 1", "a * 7 + 2"));
    let a = analyze(&o, &p).unwrap();
    assert_eq!(a.report.refusals.len(), 1, "{}", a.report.render());
    assert_eq!(a.report.refusals[0].kind, RefusalKind::NoFentry);
    assert!(
        a.report.refusals[0].location.contains("hook"),
        "{}",
        a.report.render()
    );
}
