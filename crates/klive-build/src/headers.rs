//! Header changes: a fix to a `static inline` helper or a macro in a header changes the code
//! of every file that includes it, directly or through other headers. Those files are found
//! by reading the `#include` lines of the kernel tree, and compiled like the files a diff
//! touches; a layout change of a type in the header then shows in their DWARF and is refused
//! there (klive-elf's layout check).
//!
//! kbuild builds only the files the config selects; which those are is learnt by compiling
//! (a file that does not build unpatched is not part of this kernel), not guessed here.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

/// More including files than this and a header fix is refused: the module would carry a
/// copy of every function those files inline it into, and the build would approach a
/// kernel build. The fix is better rewritten into the few `.c` files that need it.
pub const MAX_UNITS: usize = 48;

/// Directories never part of an x86-64 kernel build.
const SKIP: [&str; 8] = [
    ".git",
    "Documentation",
    "tools",
    "samples",
    "scripts",
    "LICENSES",
    "usr",
    "debian",
];

/// Where `#include <x>` looks, in order (x86-64 kbuild's `-I` list, generated dirs aside).
const ANGLE_DIRS: [&str; 4] = [
    "arch/x86/include",
    "include",
    "arch/x86/include/uapi",
    "include/uapi",
];

/// The `.c` files under `root` that include `header` (a path relative to `root`) directly
/// or through other headers, sorted. A header of the include directories is looked for in
/// the whole tree (about 20 s on a cold page cache); a subsystem's own header
/// (`net/mptcp/protocol.h`) in the directory above its own, where its users are.
pub fn includers(root: &Path, header: &str) -> Result<Vec<String>> {
    let global = ["include/", "arch/x86/include/"]
        .iter()
        .any(|p| header.starts_with(p));
    let scope = if global {
        PathBuf::new()
    } else {
        let dir = Path::new(header).parent().unwrap_or(Path::new(""));
        dir.parent().unwrap_or(dir).to_path_buf()
    };
    let graph = IncludeGraph::scan(root, &scope)?;
    Ok(graph.includers_of(header))
}

/// What a diff's headers add to the build.
#[derive(Debug, Default)]
pub struct HeaderUnits {
    /// The units to compile: the touched ones and the users of every changed header.
    pub tus: Vec<String>,
    /// The units compiled only because they include a changed header (kbuild compiles them
    /// whether or not the config selects them).
    pub via_header: BTreeSet<String>,
    /// Headers with more than [`MAX_UNITS`] users, and how many: their users are not
    /// compiled, and the build is refused after the touched units are compared (so that a
    /// layout change the header makes is named as such).
    pub too_wide: Vec<(String, usize)>,
}

impl HeaderUnits {
    /// The refusal for a header with too many users, if any.
    pub fn refusal(&self) -> Option<crate::Stop> {
        let (h, n) = self.too_wide.first()?;
        Some(crate::Stop::Refused(format!(
            "{h} is included by {n} files of this kernel (more than {MAX_UNITS}); klive-build compiles only the files a fix concerns: rewrite the fix into the .c files that need it"
        )))
    }
}

/// The units to compile for the touched `.c` units and headers.
pub fn units(root: &Path, tus: &[String], headers: &[String]) -> Result<HeaderUnits> {
    let mut out = HeaderUnits {
        tus: tus.to_vec(),
        ..HeaderUnits::default()
    };
    for h in headers {
        let users = includers(root, h)?;
        if users.len() > MAX_UNITS {
            out.too_wide.push((h.clone(), users.len()));
            continue;
        }
        if users.is_empty() {
            eprintln!("klive-build: {h}: no C file of the tree includes it");
        }
        for c in users {
            let tu = format!("{}.o", c.trim_end_matches(".c"));
            if !out.tus.contains(&tu) {
                out.tus.push(tu.clone());
                out.via_header.insert(tu);
            }
        }
    }
    out.tus.sort();
    Ok(out)
}

/// Reverse include edges of a tree: for every file, the files that include it.
#[derive(Debug, Default)]
struct IncludeGraph {
    included_by: BTreeMap<String, BTreeSet<String>>,
}

impl IncludeGraph {
    /// Reads the `.c` and `.h` files under `root/scope`.
    fn scan(root: &Path, scope: &Path) -> Result<IncludeGraph> {
        let mut g = IncludeGraph::default();
        let mut dirs = vec![scope.to_path_buf()];
        while let Some(rel) = dirs.pop() {
            let dir = root.join(&rel);
            let entries = std::fs::read_dir(&dir)
                .with_context(|| format!("reading the kernel tree at {}", dir.display()))?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = rel.join(&name);
                let Ok(kind) = e.file_type() else { continue };
                if kind.is_dir() {
                    let skip = (rel.as_os_str().is_empty() && SKIP.contains(&name.as_str()))
                        || (rel == Path::new("arch") && name != "x86")
                        || name.starts_with('.');
                    if !skip {
                        dirs.push(path);
                    }
                } else if kind.is_file() && (name.ends_with(".c") || name.ends_with(".h")) {
                    let Ok(text) = std::fs::read(root.join(&path)) else {
                        continue;
                    };
                    let from = path.to_string_lossy().into_owned();
                    for inc in includes(&text) {
                        if let Some(to) = resolve(root, &rel, &inc) {
                            g.included_by.entry(to).or_default().insert(from.clone());
                        }
                    }
                }
            }
        }
        Ok(g)
    }

    fn includers_of(&self, header: &str) -> Vec<String> {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut queue: VecDeque<&str> = VecDeque::from([header]);
        let mut units = BTreeSet::new();
        while let Some(h) = queue.pop_front() {
            for f in self.included_by.get(h).into_iter().flatten() {
                if !seen.insert(f) {
                    continue;
                }
                if f.ends_with(".c") {
                    units.insert(f.clone());
                } else {
                    queue.push_back(f);
                }
            }
        }
        units.into_iter().collect()
    }
}

/// An include as written: quoted (`"x.h"`, relative to the including file first) or angled.
#[derive(Debug, PartialEq, Eq)]
enum Include {
    Quoted(String),
    Angled(String),
}

/// The `#include` lines of a C file.
fn includes(text: &[u8]) -> Vec<Include> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let line = trim(line);
        let Some(rest) = line.strip_prefix(b"#") else {
            continue;
        };
        let Some(rest) = trim(rest).strip_prefix(b"include") else {
            continue;
        };
        let rest = trim(rest);
        let (close, quoted) = match rest.first() {
            Some(b'"') => (b'"', true),
            Some(b'<') => (b'>', false),
            _ => continue,
        };
        let Some(end) = rest[1..].iter().position(|&b| b == close) else {
            continue;
        };
        let name = String::from_utf8_lossy(&rest[1..1 + end]).into_owned();
        out.push(if quoted {
            Include::Quoted(name)
        } else {
            Include::Angled(name)
        });
    }
    out
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// The tree path an include names, if the file exists in the tree.
fn resolve(root: &Path, dir: &Path, inc: &Include) -> Option<String> {
    let candidates: Vec<PathBuf> = match inc {
        Include::Quoted(n) => std::iter::once(dir.join(n))
            .chain(ANGLE_DIRS.iter().map(|d| Path::new(d).join(n)))
            .collect(),
        Include::Angled(n) => ANGLE_DIRS.iter().map(|d| Path::new(d).join(n)).collect(),
    };
    candidates
        .into_iter()
        .filter_map(|c| normalise(&c))
        .find(|c| root.join(c).is_file())
        .map(|c| c.to_string_lossy().into_owned())
}

/// `a/b/../c.h` → `a/c.h`; `None` when it leaves the tree.
fn normalise(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    #[test]
    fn include_lines_are_read_as_the_preprocessor_does() {
        let t = b"#include <linux/skbuff.h>\n  #  include \"local.h\" /* c */\n// #include <no.h>\n#define X\n#include MACRO\n";
        assert_eq!(
            includes(t),
            [
                Include::Angled("linux/skbuff.h".into()),
                Include::Quoted("local.h".into())
            ]
        );
    }

    #[test]
    fn includers_are_found_through_other_headers_and_relative_paths() {
        let t = tree(&[
            (
                "include/linux/helper.h",
                "static inline int h(void) { return 1; }\n",
            ),
            ("include/linux/wrap.h", "#include <linux/helper.h>\n"),
            ("net/foo/a.c", "#include <linux/wrap.h>\n"),
            ("net/foo/b.c", "#include \"priv.h\"\n"),
            (
                "net/foo/priv.h",
                "#include \"../../include/linux/helper.h\"\n",
            ),
            ("net/foo/c.c", "#include <linux/other.h>\n"),
            ("include/linux/other.h", "\n"),
            ("Documentation/x.c", "#include <linux/helper.h>\n"),
            ("arch/arm64/y.c", "#include <linux/helper.h>\n"),
            ("arch/x86/z.c", "#include <linux/helper.h>\n"),
        ]);
        assert_eq!(
            includers(t.path(), "include/linux/helper.h").unwrap(),
            ["arch/x86/z.c", "net/foo/a.c", "net/foo/b.c"]
        );
        assert_eq!(
            includers(t.path(), "net/foo/priv.h").unwrap(),
            ["net/foo/b.c"]
        );
        assert!(
            includers(t.path(), "include/linux/none.h")
                .unwrap()
                .is_empty()
        );
    }
}
