//! The invariants of ARCHITECTURE.md, checked against the workspace's sources and manifests.
//!
//! Each rule reads the files as text (comments skipped), so a rule that breaks names the file
//! and line and says which invariant it is. Tests (`tests/` folders and `#[cfg(test)]`
//! modules) are exempt: they may reach into any layer to set up and check state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("klive-testkit lives in crates/")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, relative to the workspace.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The lines of a product source file that are code: comments dropped, and everything from
/// the first `#[cfg(test)]` on (test modules sit at the end of a file in this workspace).
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push((i + 1, line.to_owned()));
    }
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(workspace())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn server_src() -> PathBuf {
    workspace().join("crates/klive-server/src")
}

/// The layer of a klive-server source file: the first folder under src/, or the file's stem
/// for files at the top (error, clock, lib, main).
fn server_layer(path: &Path) -> String {
    let inner = path.strip_prefix(server_src()).unwrap();
    let first = inner.components().next().unwrap().as_os_str();
    let first = first.to_string_lossy();
    first.strip_suffix(".rs").unwrap_or(&first).to_owned()
}

fn assert_no_violations(rule: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{rule}\n{}",
        violations
            .iter()
            .map(|v| format!("  {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn only_the_store_issues_sql() {
    const SQL_MARKERS: [&str; 8] = [
        "sqlx::query",
        "QueryBuilder",
        "sqlx::Row",
        "AnyRow",
        "\"SELECT ",
        "\"INSERT ",
        "\"UPDATE ",
        "\"DELETE ",
    ];
    let mut violations = Vec::new();
    for file in rust_files(&server_src()) {
        if server_layer(&file) == "store" {
            continue;
        }
        for (n, line) in code_lines(&file) {
            if let Some(m) = SQL_MARKERS.iter().find(|m| line.contains(*m)) {
                violations.push(format!("{}:{n}: {m}", rel(&file)));
            }
        }
    }
    assert_no_violations(
        "klive-server: only src/store/ holds SQL; other layers call store functions",
        violations,
    );
}

/// The server's layers, bottom to top: a layer may use the ones before it, never one after.
const SERVER_LAYERS: [&[&str]; 6] = [
    &["error", "clock", "failpoint"],
    &["store"],
    &["trust"],
    &["domain"],
    &["evidence"],
    &["http", "cli", "lib", "main"],
];

fn layer_rank(layer: &str) -> Option<usize> {
    SERVER_LAYERS.iter().position(|l| l.contains(&layer))
}

#[test]
fn server_layers_only_use_the_layers_below() {
    let mut violations = Vec::new();
    for file in rust_files(&server_src()) {
        let layer = server_layer(&file);
        let rank = layer_rank(&layer)
            .unwrap_or_else(|| panic!("{}: a layer ARCHITECTURE.md does not name", rel(&file)));
        for (n, line) in code_lines(&file) {
            for (at, _) in line.match_indices("crate::") {
                let used: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let Some(used_rank) = layer_rank(&used) else {
                    continue;
                };
                if used_rank > rank {
                    violations.push(format!(
                        "{}:{n}: {layer} uses crate::{used}, a layer above it",
                        rel(&file)
                    ));
                }
            }
        }
    }
    assert_no_violations(
        "klive-server layers (error/clock/failpoint < store < trust < domain < evidence < http/cli)",
        violations,
    );
}

#[test]
fn service_is_extended_only_in_the_domain() {
    let mut violations = Vec::new();
    for file in rust_files(&server_src()) {
        if server_layer(&file) == "domain" {
            continue;
        }
        for (n, line) in code_lines(&file) {
            if line.trim_start().starts_with("impl Service") {
                violations.push(format!("{}:{n}", rel(&file)));
            }
        }
    }
    assert_no_violations(
        "klive-server: Service's methods live in src/domain; other layers take a &Service",
        violations,
    );
}

#[test]
fn only_klive_format_derives_serialize() {
    let mut violations = Vec::new();
    for krate in ["crates", "xtask"] {
        for file in rust_files(&workspace().join(krate)) {
            let r = rel(&file);
            if r.starts_with("crates/klive-format/") || r.contains("/tests/") {
                continue;
            }
            for (n, line) in code_lines(&file) {
                if line.contains("derive(") && line.contains("Serialize") {
                    violations.push(format!("{r}:{n}"));
                }
            }
        }
    }
    assert_no_violations(
        "only klive-format derives Serialize: other crates convert to its types at their edge",
        violations,
    );
}

#[test]
fn klive_elf_does_no_io() {
    const IO: [&str; 6] = [
        "std::fs",
        "std::net",
        "std::process",
        "std::io::stdin",
        "File::",
        "std::env::var",
    ];
    let mut violations = Vec::new();
    for file in rust_files(&workspace().join("crates/klive-elf/src")) {
        for (n, line) in code_lines(&file) {
            if let Some(m) = IO.iter().find(|m| line.contains(*m)) {
                violations.push(format!("{}:{n}: {m}", rel(&file)));
            }
        }
    }
    assert_no_violations(
        "klive-elf is pure: bytes in, bytes and reports out",
        violations,
    );
}

/// The normal (not dev) dependencies of each workspace crate on other workspace crates.
fn workspace_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let crates = std::fs::read_dir(workspace().join("crates")).unwrap();
    for entry in crates.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut section = String::new();
        let mut deps = BTreeSet::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_owned();
                continue;
            }
            if section == "[dependencies]" && line.starts_with("klive-") {
                let dep: String = line
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                deps.insert(dep);
            }
        }
        out.insert(name, deps);
    }
    out
}

#[test]
fn crate_dependencies_follow_the_code_map() {
    // ARCHITECTURE.md: klive-format <- {klive-kernel, klive-elf} <- {klive-agent, klive-build};
    // klive-format <- klive-server; klive-testkit is for tests only.
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("klive-format", &[][..]),
        ("klive-kernel", &["klive-format"][..]),
        ("klive-elf", &[][..]),
        ("klive-agent", &["klive-format", "klive-kernel"][..]),
        ("klive-build", &["klive-format", "klive-elf"][..]),
        ("klive-server", &["klive-format"][..]),
        (
            "klive-testkit",
            &[
                "klive-format",
                "klive-kernel",
                "klive-agent",
                "klive-server",
            ][..],
        ),
    ]);
    let mut violations = Vec::new();
    for (krate, deps) in workspace_dependencies() {
        let Some(ok) = allowed.get(krate.as_str()) else {
            violations.push(format!("{krate}: a crate the code map does not name"));
            continue;
        };
        for dep in deps {
            if !ok.contains(&dep.as_str()) {
                violations.push(format!("{krate} depends on {dep}"));
            }
        }
    }
    for (krate, deps) in workspace_dependencies() {
        if krate != "klive-testkit" && deps.contains("klive-testkit") {
            violations.push(format!("{krate}: klive-testkit is a dev-dependency only"));
        }
    }
    assert_no_violations(
        "crate dependencies (the agent never depends on the server; the server never on kernel code)",
        violations,
    );
}
