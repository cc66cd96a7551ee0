//! Unified diffs: which translation units they touch, and applying them in order.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The files a unified diff changes (`+++ b/path`, `-p1`).
pub fn touched_files(diff: &str) -> Vec<String> {
    let mut files: Vec<String> = diff
        .lines()
        .filter_map(|l| l.strip_prefix("+++ "))
        .map(|p| p.split('\t').next().unwrap_or(p).trim())
        .filter(|p| *p != "/dev/null")
        .map(|p| p.split_once('/').map_or(p, |(_, rest)| rest).to_owned())
        .collect();
    files.sort();
    files.dedup();
    files
}

/// The objects to compile for the touched `.c` files, and the touched headers (whose users
/// [`crate::headers`] finds in the tree); refuses what cannot be patched this way.
pub fn translation_units(files: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let mut tus = Vec::new();
    let mut headers = Vec::new();
    for f in files {
        if f.ends_with(".S") || f.ends_with(".s") {
            return Err(crate::Stop::Refused(format!(
                "{f}: assembly files cannot be live-patched; drop this hunk or patch the C caller"
            ))
            .into());
        }
        if f.ends_with(".h") {
            headers.push(f.clone());
        } else if let Some(stem) = f.strip_suffix(".c") {
            tus.push(format!("{stem}.o"));
        } else {
            return Err(crate::Stop::Refused(format!(
                "{f}: only C sources and headers can be patched; leave this file's change to the next reboot"
            ))
            .into());
        }
    }
    if tus.is_empty() && headers.is_empty() {
        return Err(crate::Stop::NothingToPatch("the diffs change no file".into()).into());
    }
    Ok((tus, headers))
}

/// Where a build records the diffs it applies to the shared prepared tree, before it applies
/// them: a build killed before it reverted them leaves them listed, and the next build to use
/// the tree takes them back ([`undo_interrupted`]) instead of compiling a patched "original".
const APPLIED: &str = ".klive-build-applied";

/// Takes back the diffs an interrupted build left applied in `root`, newest first; false if
/// that failed (the tree must then be prepared again).
pub fn undo_interrupted(root: &Path) -> bool {
    let dir = root.join(APPLIED);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return true;
    };
    let mut saved: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    saved.sort();
    for d in saved.iter().rev() {
        // A diff that was recorded but not (or not wholly) applied is skipped by --forward.
        if patch(root, d, &["-R", "--dry-run"]).is_ok() && patch(root, d, &["-R"]).is_err() {
            return false;
        }
        let _ = std::fs::remove_file(d);
    }
    std::fs::remove_dir_all(&dir).is_ok()
}

/// Applies the diffs in order; on failure, reverts the ones applied and names the diff.
pub fn apply_all(root: &Path, diffs: &[PathBuf]) -> Result<()> {
    let dir = root.join(APPLIED);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, d) in diffs.iter().enumerate() {
        std::fs::copy(d, dir.join(format!("{i:04}.patch")))
            .with_context(|| format!("recording {} in {}", d.display(), dir.display()))?;
    }
    for (i, d) in diffs.iter().enumerate() {
        let ok = patch(root, d, &["--dry-run"]);
        if let Err(e) = ok {
            revert_all(root, &diffs[..i]);
            return Err(e.context(format!(
                "{} does not apply to the kernel source after the diffs before it; rebase it on this kernel version",
                d.display()
            )));
        }
        patch(root, d, &[])?;
    }
    Ok(())
}

/// Reverts applied diffs in reverse order; the record of them goes once all are reverted
/// (else the next build takes them back).
pub fn revert_all(root: &Path, diffs: &[PathBuf]) {
    let mut clean = true;
    for d in diffs.iter().rev() {
        if let Err(e) = patch(root, d, &["-R"]) {
            eprintln!("klive-build: could not revert {}: {e:#}", d.display());
            clean = false;
        }
    }
    if clean {
        let _ = std::fs::remove_dir_all(root.join(APPLIED));
    }
}

fn patch(root: &Path, diff: &Path, extra: &[&str]) -> Result<()> {
    let out = Command::new("patch")
        .current_dir(root)
        .args([
            "-p1",
            "--batch",
            "--forward",
            "--no-backup-if-mismatch",
            "-i",
        ])
        .arg(
            diff.canonicalize()
                .with_context(|| format!("reading {}", diff.display()))?,
        )
        .args(extra)
        .output()
        .context("running patch; install it (apt-get install patch)")?;
    if !out.status.success() {
        bail!(
            "patch {}: {}",
            extra.join(" "),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_units() {
        let d = "--- a/fs/proc/cmdline.c\t2026\n+++ b/fs/proc/cmdline.c\t2026\n@@ -1 +1 @@\n";
        let f = touched_files(d);
        assert_eq!(f, ["fs/proc/cmdline.c"]);
        assert_eq!(
            translation_units(&f).unwrap(),
            (vec!["fs/proc/cmdline.o".to_owned()], vec![])
        );
        let err = translation_units(&["arch/x86/entry/entry_64.S".into()]).unwrap_err();
        assert!(err.to_string().contains("assembly"), "{err}");
        assert!(matches!(
            err.downcast_ref::<crate::Stop>(),
            Some(crate::Stop::Refused(_))
        ));
        let err = translation_units(&[]).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<crate::Stop>(),
            Some(crate::Stop::NothingToPatch(_))
        ));
        assert_eq!(
            translation_units(&["include/linux/fs.h".into()]).unwrap(),
            (vec![], vec!["include/linux/fs.h".to_owned()])
        );
        assert!(translation_units(&["Makefile".into()]).is_err());
        assert!(translation_units(&[]).is_err());
    }

    #[test]
    fn diffs_left_applied_by_a_killed_build_are_taken_back() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("linux");
        std::fs::create_dir_all(root.join("fs")).unwrap();
        std::fs::write(root.join("fs/a.c"), "int a = 1;\n").unwrap();
        let diff = d.path().join("fix.patch");
        std::fs::write(
            &diff,
            "--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1 +1 @@\n-int a = 1;\n+int a = 2;\n",
        )
        .unwrap();
        apply_all(&root, std::slice::from_ref(&diff)).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("fs/a.c")).unwrap(),
            "int a = 2;\n"
        );
        // Killed here: no revert_all. The next build finds the record and takes it back.
        assert!(undo_interrupted(&root));
        assert_eq!(
            std::fs::read_to_string(root.join("fs/a.c")).unwrap(),
            "int a = 1;\n"
        );
        assert!(!root.join(APPLIED).exists());
        // A clean tree is left alone; a normal build removes its record.
        assert!(undo_interrupted(&root));
        apply_all(&root, std::slice::from_ref(&diff)).unwrap();
        revert_all(&root, std::slice::from_ref(&diff));
        assert!(!root.join(APPLIED).exists());
        assert_eq!(
            std::fs::read_to_string(root.join("fs/a.c")).unwrap(),
            "int a = 1;\n"
        );
    }
}
