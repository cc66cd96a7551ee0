//! Step 2, prepare: the prepared kernel tree (unpacked source + the target's config + `make
//! olddefconfig prepare` with the target's compiler, cached by source and config hash) and
//! the build's work directories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use klive_format::digest::Sha256;

/// The compiler that built Debian 12's kernels; checked against `CONFIG_CC_VERSION_TEXT`.
pub const CC: &str = "gcc-12";

#[derive(Debug)]
pub struct Tree {
    pub root: PathBuf,
    /// Seconds spent preparing, or `None` when the cache was warm.
    pub prepare_secs: Option<f64>,
}

fn config_value(config: &str, key: &str) -> Option<String> {
    config.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_owned())
    })
}

/// Fails unless `gcc-12 --version` matches the compiler the target kernel was built with.
pub fn check_compiler(config: &str) -> Result<()> {
    let want = config_value(config, "CONFIG_CC_VERSION_TEXT")
        .context("the config has no CONFIG_CC_VERSION_TEXT; pass the target's .config from its headers package")?;
    let out = Command::new(CC)
        .arg("--version")
        .output()
        .with_context(|| format!("running {CC}; install it (apt-get install {CC})"))?;
    let have = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    if have.trim() != want.trim() {
        bail!(
            "compiler mismatch: the target kernel was built with {want:?} but {CC} is {have:?}; install the matching compiler"
        );
    }
    Ok(())
}

fn hash_source(source: &Path) -> Result<String> {
    let meta = std::fs::metadata(source)
        .with_context(|| format!("reading the kernel source {}", source.display()))?;
    let mut h = Sha256::new();
    h.update(source.canonicalize()?.to_string_lossy().as_bytes());
    h.update(&meta.len().to_le_bytes());
    if let Ok(m) = meta.modified()
        && let Ok(d) = m.duration_since(std::time::UNIX_EPOCH)
    {
        h.update(&d.as_secs().to_le_bytes());
    }
    Ok(h.finish_hex())
}

/// The cache directory name of a tree: 16 hex digits of the SHA-256 of the source's hash and
/// the config. Its spelling must not change, or every prepared tree is prepared again.
fn cache_key(source_hash: &str, config: &str) -> String {
    let mut h = Sha256::new();
    h.update(source_hash.as_bytes());
    h.update(config.as_bytes());
    h.finish_hex()[..16].to_owned()
}

/// Where one build works: the prepared tree and the directories under `OUT/work`.
#[derive(Debug)]
pub struct Work {
    pub tree: Tree,
    /// The touched objects as the kernel was built, named `dir__file.o`.
    pub orig: PathBuf,
    /// The same objects with the diffs applied.
    pub patched: PathBuf,
    /// The external-module directory kbuild links the livepatch in.
    pub kbuild: PathBuf,
}

/// Takes the command line and gives the prepared tree (from the cache when it is warm) and
/// the work directories, created.
pub fn prepare(cli: &crate::Cli) -> Result<Work> {
    let tree = prepare_tree(&cli.source, &cli.config, &cli.cache, cli.jobs)?;
    let work = cli.out.join("work");
    let work = Work {
        tree,
        orig: work.join("orig"),
        patched: work.join("patched"),
        kbuild: work.join("kbuild"),
    };
    for d in [&work.orig, &work.patched, &work.kbuild] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok(work)
}

/// Returns a prepared tree for `source` (a directory or a `.tar.xz`) and `config`.
fn prepare_tree(source: &Path, config_path: &Path, cache: &Path, jobs: u32) -> Result<Tree> {
    let config = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading the kernel config {}", config_path.display()))?;
    check_compiler(&config)?;
    let dir = cache.join(cache_key(&hash_source(source)?, &config));
    let root = dir.join("linux");
    let stamp = dir.join("prepared");
    if stamp.exists() {
        return Ok(Tree {
            root,
            prepare_secs: None,
        });
    }
    let start = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the incomplete tree {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    copy_source(source, &dir, &root)?;
    std::fs::write(root.join(".config"), &config)?;
    eprintln!("klive-build: make olddefconfig prepare");
    run(make(&root).arg("olddefconfig"), "make olddefconfig")?;
    let after = std::fs::read_to_string(root.join(".config"))?;
    if after != config {
        let diff: Vec<String> = diff_lines(&config, &after);
        bail!(
            "the source tree does not match the config: olddefconfig changed {}; use the linux-source version of the target kernel (and install dwarves if PAHOLE options differ)",
            diff.join(", ")
        );
    }
    run(
        make(&root).arg(format!("-j{jobs}")).arg("prepare"),
        "make prepare",
    )?;
    std::fs::write(&stamp, b"")?;
    Ok(Tree {
        root,
        prepare_secs: Some(start.elapsed().as_secs_f64()),
    })
}

/// Puts the kernel source at `root`: a copy of a directory, or the top directory of a
/// tarball unpacked under `dir`.
fn copy_source(source: &Path, dir: &Path, root: &Path) -> Result<()> {
    if source.is_dir() {
        run(
            Command::new("cp").arg("-a").arg(source).arg(root),
            "copying the source",
        )?;
    } else {
        eprintln!("klive-build: unpacking {} (about 20 s)", source.display());
        let unpack = dir.join("unpack");
        std::fs::create_dir_all(&unpack)?;
        run(
            Command::new("tar")
                .arg("xf")
                .arg(source)
                .arg("-C")
                .arg(&unpack),
            "unpacking the source tarball",
        )?;
        let top = std::fs::read_dir(&unpack)?
            .filter_map(|e| e.ok())
            .find(|e| e.path().is_dir())
            .context("the source tarball holds no directory")?;
        std::fs::rename(top.path(), root)?;
    }
    Ok(())
}

fn diff_lines(a: &str, b: &str) -> Vec<String> {
    let sa: std::collections::BTreeSet<&str> = a.lines().collect();
    let sb: std::collections::BTreeSet<&str> = b.lines().collect();
    sa.symmetric_difference(&sb)
        .take(8)
        .map(|s| s.to_string())
        .collect()
}

pub fn make(root: &Path) -> Command {
    let mut c = Command::new("make");
    c.current_dir(root).arg("-s").arg(format!("CC={CC}"));
    c
}

pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: starting {cmd:?}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_are_read_without_quotes() {
        let c = "CONFIG_X=y\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\n";
        assert_eq!(
            config_value(c, "CONFIG_CC_VERSION_TEXT").as_deref(),
            Some("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0")
        );
        assert_eq!(config_value(c, "CONFIG_Y"), None);
    }

    #[test]
    fn cache_keys_keep_their_spelling() {
        // `printf 'abcdefCONFIG_X=y\n' | sha256sum`, first 16 digits.
        assert_eq!(cache_key("abcdef", "CONFIG_X=y\n"), "09fbc17cb55392a0");
    }

    #[test]
    fn wrong_compiler_is_named() {
        let err = check_compiler("CONFIG_CC_VERSION_TEXT=\"gcc-99 (Nope) 99.0\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gcc-99"), "{err}");
    }
}
