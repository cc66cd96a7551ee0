//! The Debian kernels the guest boots: one per kernel line Debian 12 ships (6.1, and 6.12 from
//! bookworm-security), each the newest ABI of its line, fetched by klive-build's
//! [`klive_build::debian::Kernel::fetch`] into its cache (image, modules, headers and kbuild
//! unpacked, never installed system-wide).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use klive_build::debian;

/// A kernel line: what results are labelled with and the metapackage that names its newest
/// ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// `6.1`, `6.12`: the label of the line's results (`[6.12] phase1/...`).
    pub name: &'static str,
    /// The image metapackage; it depends on `linux-image-<abi>`.
    pub metapackage: &'static str,
}

/// The kernel lines a test run boots, in order.
pub const LINES: &[Line] = &[
    Line {
        name: "6.1",
        metapackage: "linux-image-amd64",
    },
    Line {
        name: "6.12",
        metapackage: "linux-image-6.12-amd64",
    },
];

/// A kernel with an image, its modules and a kbuild tree for building modules against it.
#[derive(Debug, Clone)]
pub struct TargetKernel {
    /// The line it belongs to (`6.1`, `6.12`).
    pub line: &'static str,
    /// The release (`uname -r`), e.g. `6.1.0-57-amd64`, `6.12.117+deb12-amd64`.
    pub release: String,
    pub image: PathBuf,
    /// `lib/modules/<release>` (`.ko` in 6.1, `.ko.xz` in 6.12; no modules.dep: the
    /// packages are unpacked, not installed).
    pub modules_dir: PathBuf,
    /// The kbuild tree of the headers package (`usr/src/linux-headers-<release>`).
    pub build_dir: PathBuf,
    /// The GNU build-id of the image (lowercase hex): what `/sys/kernel/notes` of the booted
    /// guest holds and what every klive patch for this kernel is tagged with.
    pub build_id: String,
}

impl TargetKernel {
    /// The newest ABI of `line` in the apt archive, fetched into klive-build's `cache` unless
    /// it is there already.
    pub fn fetch(line: &Line, cache: &Path) -> Result<Self> {
        let release = newest_release(line)?;
        let kernel = debian::Kernel::fetch(&release, cache)
            .with_context(|| format!("fetching kernel {release} into {}", cache.display()))?;
        Ok(Self {
            line: line.name,
            release: kernel.release,
            image: kernel.vmlinuz,
            modules_dir: kernel.modules_dir,
            build_dir: kernel.headers_dir,
            build_id: kernel.build_id,
        })
    }
}

/// The ABI the line's metapackage depends on now: `linux-image-6.12-amd64` →
/// `6.12.117+deb12-amd64`.
fn newest_release(line: &Line) -> Result<String> {
    let output = Command::new("apt-cache")
        .args([
            "depends",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
        ])
        .args([
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            line.metapackage,
        ])
        .output()
        .context("running apt-cache: the harness fetches its kernels with apt")?;
    if !output.status.success() {
        bail!(
            "apt-cache depends {} failed: {}; run apt-get update",
            line.metapackage,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    image_abi(&text).with_context(|| {
        format!(
            "{} depends on no linux-image-<abi> package:\n{text}run apt-get update",
            line.metapackage
        )
    })
}

/// The ABI of the first `linux-image-<abi>` (or `-unsigned`) that `apt-cache depends`
/// output lists as a dependency.
fn image_abi(apt_depends: &str) -> Option<String> {
    apt_depends
        .lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends: "))
        .filter_map(|d| d.trim().strip_prefix("linux-image-"))
        .map(|d| d.strip_suffix("-unsigned").unwrap_or(d))
        .map(str::to_owned)
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_dependency_names_the_abi() {
        let out = "linux-image-6.12-amd64\n  Depends: linux-image-6.12.117+deb12-amd64\n";
        assert_eq!(image_abi(out).as_deref(), Some("6.12.117+deb12-amd64"));
        let out = "linux-image-amd64\n |Depends: linux-image-6.1.0-57-amd64-unsigned\n";
        assert_eq!(image_abi(out).as_deref(), Some("6.1.0-57-amd64"));
        assert_eq!(image_abi("linux-image-amd64\n  Depends: <virtual>\n"), None);
    }
}
