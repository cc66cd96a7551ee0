//! The test kernel modules: built with kbuild from `tests/modules/`, plus two damaged copies
//! made here by rewriting bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::kernel::TargetKernel;

/// Modules built from C sources in `tests/modules/`.
pub const BUILT: &[&str] = &[
    "klive_test_l1",
    "klive_test_l2",
    "klive_test_stall",
    "klive_test_plain",
];

/// Builds the test modules against `kernel` in `work/modules-build` (a copy of the sources)
/// and returns the directory holding every `.ko` the guest gets under `/modules/`.
pub fn build(root: &Path, kernel: &TargetKernel, build_id: &str, work: &Path) -> Result<PathBuf> {
    let sources = root.join("tests/modules");
    let build = work.join("modules-build");
    if build.exists() {
        fs::remove_dir_all(&build).with_context(|| format!("removing {}", build.display()))?;
    }
    fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
    for entry in fs::read_dir(&sources).with_context(|| format!("listing {}", sources.display()))? {
        let entry = entry.with_context(|| format!("listing {}", sources.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "Kbuild" || name.ends_with(".c") || name.ends_with(".h") {
            fs::copy(entry.path(), build.join(&*name))
                .with_context(|| format!("copying {} to {}", name, build.display()))?;
        }
    }

    let mut make = Command::new("make");
    make.arg("-C")
        .arg(&kernel.build_dir)
        .arg(format!("M={}", build.display()))
        .arg(format!("KLIVE_BUILD_ID={build_id}"))
        .arg(format!("-j{}", jobs()))
        .arg("modules");
    let output = make
        .output()
        .context("running make for the test modules: is `make` installed?")?;
    if !output.status.success() {
        bail!(
            "building the test modules against {} failed ({}):\n{}{}",
            kernel.build_dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let out = work.join("modules");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for name in BUILT {
        let ko = build.join(format!("{name}.ko"));
        fs::copy(&ko, out.join(format!("{name}.ko")))
            .with_context(|| format!("kbuild did not produce {}", ko.display()))?;
    }

    let l1 = fs::read(out.join("klive_test_l1.ko")).context("reading klive_test_l1.ko")?;
    let wrong = wrong_kernel_copy(&l1, &kernel.release)?;
    fs::write(out.join("klive_test_wrongkernel.ko"), wrong)
        .context("writing klive_test_wrongkernel.ko")?;
    fs::write(out.join("klive_test_truncated.ko"), &l1[..l1.len() / 2])
        .context("writing klive_test_truncated.ko")?;
    Ok(out)
}

/// Kbuild of four small modules is quick; two jobs is what the machine offers.
fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// Another kernel release of the same length, e.g. `6.1.0-56-amd64` → `6.1.0-99-amd64`:
/// the digits of the ABI number (between the first two dashes; else of the version) become
/// nines, or eights if they were nines.
pub fn other_release(release: &str) -> String {
    let mut parts: Vec<String> = release.split('-').map(str::to_string).collect();
    let index = if parts.len() > 1 && parts[1].bytes().all(|b| b.is_ascii_digit()) {
        1
    } else {
        0
    };
    let digits_to = |to: char| -> String {
        parts[index]
            .chars()
            .map(|c| if c.is_ascii_digit() { to } else { c })
            .collect()
    };
    let nines = digits_to('9');
    parts[index] = if nines == parts[index] {
        digits_to('8')
    } else {
        nines
    };
    let other = parts.join("-");
    if other == release {
        // Only possible for a release without any part to change: vary its last character.
        let mut bytes = other.into_bytes();
        if let Some(last) = bytes.last_mut() {
            *last = if *last == b'x' { b'y' } else { b'x' };
        }
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    other
}

/// The module with its `.modinfo` rewritten in place, same length: `vermagic=` names another
/// kernel release and `klive_build_id=` another build-id. Only the module's metadata lies; the
/// kernel would still accept it (with modversions it compares symbol CRCs, not the release),
/// so refusing it is the agent's job.
pub fn wrong_kernel_copy(module: &[u8], release: &str) -> Result<Vec<u8>> {
    let mut out = module.to_vec();
    let vermagic = format!("vermagic={release} ");
    let at = find(&out, vermagic.as_bytes())
        .with_context(|| format!("`{}` not found in klive_test_l1.ko", vermagic.trim_end()))?;
    let start = at + "vermagic=".len();
    out[start..start + release.len()].copy_from_slice(other_release(release).as_bytes());

    let tag = b"klive_build_id=";
    let at = find(&out, tag).context("`klive_build_id=` not found in klive_test_l1.ko")?;
    let start = at + tag.len();
    let len = out[start..].iter().position(|&b| b == 0).unwrap_or(0);
    if len == 0 {
        bail!("the klive_build_id tag of klive_test_l1.ko is empty");
    }
    for b in &mut out[start..start + len] {
        // Every hex digit changes, so the id cannot match the kernel's by accident.
        *b = match *b {
            b'f' => b'0',
            b'9' => b'a',
            _ => *b + 1,
        };
    }
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_release_keeps_length_and_differs() {
        assert_eq!(other_release("6.1.0-56-amd64"), "6.1.0-99-amd64");
        assert_eq!(other_release("6.1.0-99-amd64"), "6.1.0-88-amd64");
        assert_eq!(other_release("6.12.9+bpo-amd64"), "9.99.9+bpo-amd64");
        for r in ["6.1.0-56-amd64", "x", "6.1.0-9-cloud-amd64"] {
            assert_eq!(other_release(r).len(), r.len());
            assert_ne!(other_release(r), r);
        }
    }

    #[test]
    fn wrong_kernel_copy_rewrites_vermagic_and_build_id() {
        let module = b"\0license=GPL\0klive_build_id=09af\0vermagic=6.1.0-56-amd64 SMP preempt \0";
        let out = wrong_kernel_copy(module, "6.1.0-56-amd64").unwrap();
        assert_eq!(out.len(), module.len());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("vermagic=6.1.0-99-amd64 SMP"), "{text}");
        assert!(text.contains("klive_build_id=1ab0\0"), "{text}");
    }

    #[test]
    fn wrong_kernel_copy_of_other_bytes_is_an_error() {
        assert!(wrong_kernel_copy(b"nothing here", "6.1.0-56-amd64").is_err());
    }
}
