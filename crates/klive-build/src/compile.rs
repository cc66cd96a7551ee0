//! Step 3, compile: the touched translation units built twice in the prepared tree, as the
//! kernel was built and with the diffs applied, and the klp object (vmlinux or a module)
//! they belong to.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::patches;
use crate::tree::{self, Work};

/// What [`compile`] gives besides the objects in the work directories.
#[derive(Debug)]
pub struct Compiled {
    /// The klp object every touched unit belongs to: `vmlinux` or a module name.
    pub gate: String,
    pub orig_secs: f64,
    pub patched_secs: f64,
}

/// Takes the work directories, the units and the diffs; compiles the units into
/// `work.orig`, applies the diffs, compiles them into `work.patched` and reverts the diffs
/// (also when that compile fails). Refuses units of several klp objects.
pub fn compile(work: &Work, tus: &[String], diffs: &[PathBuf]) -> Result<Compiled> {
    let root = &work.tree.root;
    let cc = &work.tree.make_vars;
    let orig_secs = compile_units(root, cc, tus, &work.orig)?;
    let mut objects = BTreeMap::new();
    for tu in tus {
        let cmd = root.join(tu).with_file_name(format!(
            ".{}.cmd",
            Path::new(tu)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        ));
        objects.insert(tu.clone(), klp_object_of(&cmd)?);
    }
    patches::apply_all(root, diffs)?;
    let patched = compile_units(root, cc, tus, &work.patched);
    patches::revert_all(root, diffs);
    let patched_secs = patched?;

    let gates: BTreeSet<&String> = objects.values().collect();
    if gates.len() != 1 {
        bail!(
            "the diffs touch objects of several klp objects ({:?}); build one livepatch per object for now",
            gates
        );
    }
    let gate = gates.into_iter().next().expect("one gate").clone();
    Ok(Compiled {
        gate,
        orig_secs,
        patched_secs,
    })
}

/// Builds `tus` afresh in `root` with one section per function and variable and copies the
/// objects into `dest`; gives the seconds kbuild took.
fn compile_units(root: &Path, cc: &[String], tus: &[String], dest: &Path) -> Result<f64> {
    for tu in tus {
        let _ = std::fs::remove_file(root.join(tu));
    }
    let start = Instant::now();
    tree::run(
        tree::make(root, cc)
            .arg("KCFLAGS=-ffunction-sections -fdata-sections")
            .args(tus),
        "compiling the touched files",
    )?;
    let secs = start.elapsed().as_secs_f64();
    for tu in tus {
        let to = dest.join(object_file_name(tu));
        std::fs::copy(root.join(tu), &to)
            .with_context(|| format!("copying {tu} to {}", to.display()))?;
    }
    Ok(secs)
}

/// The name of a unit's object in the work directories: `fs/proc/cmdline.o` →
/// `fs__proc__cmdline.o`.
pub fn object_file_name(tu: &str) -> String {
    tu.replace('/', "__")
}

/// What kbuild says about one object: built-in (`vmlinux`) or the module it belongs to.
fn klp_object_of(cmd_file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(cmd_file)
        .with_context(|| format!("reading {}", cmd_file.display()))?;
    if !text.contains("-DMODULE") {
        return Ok("vmlinux".into());
    }
    let name = text
        .split("-DKBUILD_MODNAME=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(|r| {
            r.trim_matches(|c| c == '\'' || c == '"' || c == '\\')
                .to_owned()
        })
        .context("module object without KBUILD_MODNAME in its .cmd file")?;
    Ok(name.replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmd_files_tell_modules_from_builtins() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join(".x.o.cmd");
        std::fs::write(
            &m,
            "cmd := gcc -DMODULE -DKBUILD_BASENAME='\"x\"' -DKBUILD_MODNAME='\"xfs\"' -c",
        )
        .unwrap();
        assert_eq!(klp_object_of(&m).unwrap(), "xfs");
        std::fs::write(&m, "cmd := gcc -DKBUILD_MODNAME='\"proc\"' -c").unwrap();
        assert_eq!(klp_object_of(&m).unwrap(), "vmlinux");
    }
}
