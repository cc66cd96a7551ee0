//! The diff of one translation unit: what changed, what is ignored, what is refused.

use klive_elf::{RefusalKind, analyze};

use crate::support::{BASE, golden, pair};

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

/// A struct defined inside the .c file, as many drivers do; the kernel builds with DWARF.
const PRIVATE_STRUCT: &str = r#"
struct conn { int id; unsigned long flags; struct conn *next; };
static struct conn *conns;
int conn_flags(int id) { struct conn *c; for (c = conns; c; c = c->next) if (c->id == id) return (int)c->flags; return -1; }
"#;

#[test]
fn a_layout_change_of_a_struct_defined_in_the_file_is_refused() {
    let patched = PRIVATE_STRUCT.replace(
        "int id; unsigned long flags;",
        "int id; int gen; unsigned long flags;",
    );
    let (o, p) = crate::support::pair_with(PRIVATE_STRUCT, &patched, &["-g"]);
    let a = analyze(&o, &p).unwrap();
    let layout: Vec<_> = a
        .report
        .refusals
        .iter()
        .filter(|r| r.kind == RefusalKind::DataLayout)
        .collect();
    assert_eq!(layout.len(), 1, "{}", a.report.render());
    assert!(
        layout[0].location.contains("struct conn"),
        "{}",
        layout[0].location
    );
    // Reordering keeps the size: still refused, the member is named.
    let patched = PRIVATE_STRUCT.replace(
        "int id; unsigned long flags; struct conn *next;",
        "int id; struct conn *next; unsigned long flags;",
    );
    let (o, p) = crate::support::pair_with(PRIVATE_STRUCT, &patched, &["-g"]);
    let a = analyze(&o, &p).unwrap();
    assert!(
        a.report.refusals.iter().any(
            |r| r.kind == RefusalKind::DataLayout && r.location.contains("struct conn: member")
        ),
        "{}",
        a.report.render()
    );
}

#[test]
fn a_code_only_change_with_debug_info_is_not_a_layout_change() {
    let patched = PRIVATE_STRUCT.replace("return -1;", "return -2;");
    let (o, p) = crate::support::pair_with(PRIVATE_STRUCT, &patched, &["-g"]);
    let a = analyze(&o, &p).unwrap();
    assert!(a.report.refusals.is_empty(), "{}", a.report.render());
    assert_eq!(a.report.changed_functions, ["conn_flags"]);
}

#[test]
fn a_changed_kthread_main_loop_is_flagged() {
    let src = r#"
extern int kthread_should_stop(void);
extern void schedule(void);
int work_done;
int worker(void *arg) { while (!kthread_should_stop()) { work_done++; schedule(); } return 0; }
int other(int a) { return a + 1; }
"#;
    let (o, p) = pair(src, &src.replace("work_done++;", "work_done += 2;"));
    let a = analyze(&o, &p).unwrap();
    assert_eq!(a.report.may_stall, ["worker"]);
    assert!(a.report.render().contains("kthread main loop"));
    let (o, p) = pair(src, &src.replace("a + 1", "a + 2"));
    assert!(analyze(&o, &p).unwrap().report.may_stall.is_empty());
}
