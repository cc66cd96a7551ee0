//! The `klive-build` command on bad input: a clear error that says what to do, exit 1 (error)
//! or 2 (refused), and no module written. (Builds that need a kernel tree run in
//! `cargo xtask test`: tests/build/ and tests/build/real/.)

use std::path::Path;
use std::process::{Command, Output};

fn klive_build(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_klive-build"))
        .current_dir(dir)
        .args(args)
        .env("HOME", dir)
        .env_remove("XDG_CACHE_HOME")
        .output()
        .expect("klive-build runs")
}

fn no_module_under(dir: &Path) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ko") {
                return false;
            }
        }
    }
    true
}

const BUILD_ID: &str = "0123456789abcdef0123456789abcdef01234567";

/// The explicit description of a (fake) kernel, enough to get past the command line.
fn explicit() -> Vec<&'static str> {
    vec![
        "--source",
        "/nonexistent",
        "--config",
        "/nonexistent",
        "--kbuild",
        "/nonexistent",
        "--kallsyms",
        "/nonexistent",
        "--build-id",
        BUILD_ID,
        "--release",
        "r",
    ]
}

#[test]
fn an_unknown_kernel_name_says_how_to_list_the_names() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("fix.patch"), "+++ b/fs/proc/cmdline.c\n").unwrap();
    let o = klive_build(
        d.path(),
        &[
            "--kernel",
            "6.1.0-999-amd64",
            "--patch",
            "fix.patch",
            "--out",
            "out",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("6.1.0-999-amd64") && err.contains("apt-cache search"),
        "{err}"
    );
    assert!(no_module_under(d.path()));
}

#[test]
fn a_kernel_described_by_halves_names_the_missing_flags() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("fix.patch"), "+++ b/fs/proc/cmdline.c\n").unwrap();
    let o = klive_build(
        d.path(),
        &["--source", "/x", "--patch", "fix.patch", "--out", "out"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--kernel") && err.contains("--kbuild"),
        "{err}"
    );
}

#[test]
fn a_base_without_its_series_record_or_of_another_kernel_is_refused_before_building() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("fix.patch"), "+++ b/fs/proc/cmdline.c\n").unwrap();
    std::fs::create_dir_all(d.path().join("l1")).unwrap();
    let manifest = |build_id: &str| {
        format!(
            r#"{{"format":1,"module_name":"klive_l1","level":1,"kernel":{{"build_id":"{build_id}","release":"r","arch":"x86_64"}},"module":{{"file":"klive_l1.ko","sha256":"00","size":1}},"fixes":[]}}"#
        )
    };
    std::fs::write(d.path().join("l1/manifest.json"), manifest(BUILD_ID)).unwrap();
    let mut args = explicit();
    args.extend([
        "--base",
        "l1/manifest.json",
        "--patch",
        "fix.patch",
        "--name",
        "klive_l2",
        "--out",
        "l2",
    ]);
    let o = klive_build(d.path(), &args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no series record"), "{err}");

    // With a record, but for another kernel build.
    std::fs::create_dir_all(d.path().join("l1/patches")).unwrap();
    std::fs::write(d.path().join("l1/series"), "# empty\n").unwrap();
    let other = "fedcba9876543210fedcba9876543210fedcba98";
    std::fs::write(d.path().join("l1/manifest.json"), manifest(other)).unwrap();
    std::fs::write(d.path().join("l1/patches/0001-a.patch"), "+++ b/a.c\n").unwrap();
    std::fs::write(d.path().join("l1/series"), "patches/0001-a.patch -\n").unwrap();
    let o = klive_build(d.path(), &args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("not this one") && err.contains(other), "{err}");
    assert!(no_module_under(d.path()));
}

#[test]
fn assembly_is_refused_with_exit_2() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("fix.patch"),
        "--- a/arch/x86/lib/memcpy_64.S\n+++ b/arch/x86/lib/memcpy_64.S\n",
    )
    .unwrap();
    let mut args = explicit();
    args.extend(["--patch", "fix.patch", "--out", "out"]);
    let o = klive_build(d.path(), &args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("assembly"), "{err}");
    assert!(no_module_under(d.path()));
}
