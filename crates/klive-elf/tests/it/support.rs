//! What the tests share: objects compiled by gcc with kernel-like flags, golden reports, and
//! a source file with a kallsyms dump and Module.symvers to match.

use std::path::{Path, PathBuf};
use std::process::Command;

use klive_elf::symbols::{Exports, Resolver, SymbolTable};

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

pub fn compile_with(dir: &Path, name: &str, src: &str, extra: &[&str]) -> Vec<u8> {
    let c = dir.join(format!("{name}.c"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&c, src).unwrap();
    let out = Command::new("gcc")
        .current_dir(dir)
        .args(KFLAGS)
        .args(extra)
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

pub fn pair(orig: &str, patched: &str) -> (Vec<u8>, Vec<u8>) {
    pair_with(orig, patched, &[])
}

/// [`pair`] with more compiler flags (`-g` for DWARF, as the kernel builds with).
pub fn pair_with(orig: &str, patched: &str, extra: &[&str]) -> (Vec<u8>, Vec<u8>) {
    // Same file name in both builds, as in a kernel tree: `__FILE__` must not differ.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    (
        compile_with(&a, "unit", orig, extra),
        compile_with(&b, "unit", patched, extra),
    )
}

pub fn golden(name: &str, actual: &str) {
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

pub const BASE: &str = r#"
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

pub const SYMVERS: &str = "0x12345678\tseq_printf\tvmlinux\tEXPORT_SYMBOL\t\n0x9abcdef0\t__fentry__\tvmlinux\tEXPORT_SYMBOL\t\n";

pub const KALLSYMS: &str = "\
ffffffff81100000 t helper.constprop.0
ffffffff81100040 T cmdline_show
ffffffff81100080 T other
ffffffff81200000 t helper.constprop.0
ffffffff82000000 D saved_command_line
ffffffff82000100 d limit
ffffffff82000200 B shared_counter
";

/// A running vmlinux with the symbols of a kallsyms dump and the exports of [`SYMVERS`].
pub struct Vmlinux {
    table: SymbolTable,
    exports: Exports,
}

impl Vmlinux {
    pub fn new(kallsyms: &str) -> Vmlinux {
        Vmlinux {
            table: SymbolTable::from_kallsyms(kallsyms, "vmlinux"),
            exports: Exports::from_module_symvers(SYMVERS),
        }
    }

    pub fn resolver(&self) -> Resolver<'_> {
        Resolver {
            object: "vmlinux".into(),
            table: &self.table,
            exports: &self.exports,
        }
    }
}
