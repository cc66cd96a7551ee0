//! Step 3, compile: the touched translation units built twice in the prepared tree, as the
//! kernel was built and with the diffs applied, and the klp object (vmlinux or a module)
//! they belong to.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::patches;
use crate::tree::{self, Work};

/// What [`compile`] gives besides the objects in the work directories.
#[derive(Debug)]
pub struct Compiled {
    /// Every compiled unit and its klp object (`vmlinux` or a module name), in order.
    pub units: Vec<(String, String)>,
    /// Units that include a changed header but do not build unpatched: not part of this
    /// kernel's config.
    pub not_built: Vec<String>,
    pub orig_secs: f64,
    pub patched_secs: f64,
}

/// Takes the work directories, the units and the diffs; compiles the units into
/// `work.orig`, applies the diffs, compiles them into `work.patched` and reverts the diffs
/// (also when that compile fails). A unit in `optional` (it includes a changed header) that
/// does not build unpatched is left out rather than an error.
pub fn compile(
    work: &Work,
    tus: &[String],
    optional: &BTreeSet<String>,
    diffs: &[PathBuf],
) -> Result<Compiled> {
    let root = &work.tree.root;
    let cc = &work.tree.make_vars;
    let (orig_secs, not_built) = compile_units(root, cc, tus, optional, &work.orig)?;
    let built: Vec<String> = tus
        .iter()
        .filter(|t| !not_built.contains(t))
        .cloned()
        .collect();
    let mut units = Vec::new();
    for tu in &built {
        let cmd = root.join(tu).with_file_name(format!(
            ".{}.cmd",
            Path::new(tu)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        ));
        units.push((tu.clone(), klp_object_of(&cmd)?));
    }
    patches::apply_all(root, diffs)?;
    let patched = compile_units(root, cc, &built, &BTreeSet::new(), &work.patched);
    patches::revert_all(root, diffs);
    let (patched_secs, _) = patched?;
    Ok(Compiled {
        units,
        not_built,
        orig_secs,
        patched_secs,
    })
}

/// Builds `tus` afresh in `root` with one section per function and variable and copies the
/// objects into `dest`; gives the seconds kbuild took and the units of `optional` that did
/// not build (kbuild keeps going past them; any other failure is an error).
fn compile_units(
    root: &Path,
    cc: &[String],
    tus: &[String],
    optional: &BTreeSet<String>,
    dest: &Path,
) -> Result<(f64, Vec<String>)> {
    for tu in tus {
        let _ = std::fs::remove_file(root.join(tu));
    }
    let start = Instant::now();
    let mut make = tree::make(root, cc);
    make.arg("KCFLAGS=-ffunction-sections -fdata-sections");
    if !optional.is_empty() {
        make.arg("-k");
    }
    let result = tree::run(make.args(tus), "compiling the touched files");
    let secs = start.elapsed().as_secs_f64();
    let missing: Vec<String> = tus
        .iter()
        .filter(|t| !root.join(t).is_file())
        .cloned()
        .collect();
    if let Err(e) = result
        && (missing.is_empty() || missing.iter().any(|t| !optional.contains(t)))
    {
        return Err(e);
    }
    for tu in tus.iter().filter(|t| !missing.contains(t)) {
        let to = dest.join(object_file_name(tu));
        std::fs::copy(root.join(tu), &to)
            .with_context(|| format!("copying {tu} to {}", to.display()))?;
    }
    Ok((secs, missing))
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
