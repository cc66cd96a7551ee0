//! Prints the diff report of two objects: `cargo run -p klive-elf --example kdiff -- orig.o patched.o`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(o), Some(p)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: kdiff ORIG.o PATCHED.o");
        std::process::exit(2);
    };
    let a = klive_elf::analyze(&std::fs::read(o).unwrap(), &std::fs::read(p).unwrap()).unwrap();
    let mut st: Vec<_> = a
        .status
        .iter()
        .map(|(s, st)| (a.patched.section_name(*s).to_owned(), *st))
        .collect();
    st.sort_by(|x, y| x.0.cmp(&y.0));
    for (n, s) in st {
        if s != klive_elf::diff::Status::Same {
            println!("{n}: {s:?}");
        }
    }
    print!("{}", a.report.render());
}
