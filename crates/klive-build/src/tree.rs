//! Step 2, prepare: the prepared kernel tree (unpacked source + the target's config + `make
//! olddefconfig prepare` with the target's compiler, cached under `CACHE/trees/` by the
//! SHA-256 of the source's content and the config) and the build's work directories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use klive_format::digest::Sha256;

/// The compiler of a kernel: the command `CONFIG_CC_VERSION_TEXT` starts with (Debian 12:
/// `gcc-12` for 6.1, `x86_64-linux-gnu-gcc-12` for 6.12).
pub fn compiler(config: &str) -> Result<String> {
    let text = config_value(config, "CONFIG_CC_VERSION_TEXT")
        .context("the config has no CONFIG_CC_VERSION_TEXT; pass the target's .config from its headers package")?;
    let cc = text.split_whitespace().next().unwrap_or("");
    if !cc.contains("gcc")
        || !cc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
    {
        bail!("the kernel was built with {text:?}; klive-build supports GCC-built kernels only");
    }
    Ok(cc.to_owned())
}

#[derive(Debug)]
pub struct Tree {
    pub root: PathBuf,
    /// Variables every make in the tree gets: the compiler (`CC=gcc-12`), and `RUSTC` pointed
    /// at nothing for kernels built without Rust (6.12's Kconfig records the rustc version,
    /// 0 in Debian's config, and would take the build machine's).
    pub make_vars: Vec<String>,
    /// Seconds spent preparing, or `None` when the cache was warm.
    pub prepare_secs: Option<f64>,
    /// Held while the build uses the tree: diffs are applied to it in place.
    _lock: std::fs::File,
}

fn config_value(config: &str, key: &str) -> Option<String> {
    config.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_owned())
    })
}

/// Fails unless the config enables livepatching: such a kernel cannot load a livepatch.
pub fn check_livepatch(config: &str, release: &str) -> Result<()> {
    if config_value(config, "CONFIG_LIVEPATCH").as_deref() != Some("y") {
        return Err(crate::Stop::Refused(format!(
            "{release} is built without CONFIG_LIVEPATCH=y, so it cannot load a livepatch; build for a kernel flavour that has it"
        ))
        .into());
    }
    Ok(())
}

/// Fails unless `CC --version` matches the compiler the target kernel was built with.
pub fn check_compiler(config: &str) -> Result<String> {
    let want = config_value(config, "CONFIG_CC_VERSION_TEXT")
        .context("the config has no CONFIG_CC_VERSION_TEXT; pass the target's .config from its headers package")?;
    let cc = compiler(config)?;
    let out = Command::new(&cc)
        .arg("--version")
        .output()
        .with_context(|| format!("running {cc}; install the compiler the kernel was built with (Debian 12: apt-get install gcc-12)"))?;
    let have = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    if have.trim() != want.trim() {
        bail!(
            "compiler mismatch: the target kernel was built with {want:?} but {cc} is {have:?}; install the matching compiler"
        );
    }
    Ok(cc)
}

/// The SHA-256 (hex) of the source's content: of a tarball's bytes, or of a directory's
/// files (relative path, length and bytes of each, in sorted order; symlinks by target).
fn hash_source(source: &Path) -> Result<String> {
    let meta = std::fs::metadata(source)
        .with_context(|| format!("reading the kernel source {}", source.display()))?;
    if !meta.is_dir() {
        return Ok(crate::debian::sha256_file(source)?);
    }
    let mut h = Sha256::new();
    hash_dir(source, Path::new(""), &mut h)?;
    Ok(h.finish_hex())
}

fn hash_dir(root: &Path, rel: &Path, h: &mut Sha256) -> Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    entries.sort();
    for name in entries {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update(b"\0");
        if meta.file_type().is_symlink() {
            h.update(std::fs::read_link(&path)?.to_string_lossy().as_bytes());
        } else if meta.is_dir() {
            hash_dir(root, &rel, h)?;
        } else {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
    }
    Ok(())
}

/// The cache directory name of a tree: 16 hex digits of the SHA-256 of the source's content
/// hash (hex) and the config. Its spelling must not change, or every prepared tree is
/// prepared again.
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
pub fn prepare(job: &crate::Job) -> Result<Work> {
    let t = &job.target;
    let tree = prepare_tree(
        &t.source,
        t.source_sha256.as_deref(),
        &t.config,
        &t.release,
        &job.cache.join("trees"),
        job.jobs,
    )?;
    let work = job.out.join("work");
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

/// Returns a prepared tree for `source` (a directory or a `.tar.xz`, whose SHA-256 may be
/// known already) and `config`, locked for this build.
fn prepare_tree(
    source: &Path,
    source_sha256: Option<&str>,
    config_path: &Path,
    release: &str,
    cache: &Path,
    jobs: u32,
) -> Result<Tree> {
    let config = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading the kernel config {}", config_path.display()))?;
    check_livepatch(&config, release)?;
    let cc = check_compiler(&config)?;
    let mut make_vars = vec![format!("CC={cc}")];
    if config_value(&config, "CONFIG_RUSTC_VERSION").as_deref() == Some("0") {
        make_vars.push("RUSTC=klive-build-no-rustc".into());
    }
    let hash = match source_sha256 {
        Some(h) => h.to_owned(),
        None => hash_source(source)?,
    };
    let key = cache_key(&hash, &config);
    let dir = cache.join(&key);
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let lock_path = cache.join(format!("{key}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let root = dir.join("linux");
    let stamp = dir.join("prepared");
    if stamp.exists() && !crate::patches::undo_interrupted(&root) {
        // Diffs a killed build left applied could not be taken back: prepare it again.
        eprintln!(
            "klive-build: the cached tree {} was left patched by an interrupted build; preparing it again",
            dir.display()
        );
        std::fs::remove_file(&stamp).with_context(|| format!("removing {}", stamp.display()))?;
    }
    if stamp.exists() {
        return Ok(Tree {
            root,
            make_vars,
            prepare_secs: None,
            _lock: lock,
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
    run(
        make(&root, &make_vars).arg("olddefconfig"),
        "make olddefconfig",
    )?;
    let after = std::fs::read_to_string(root.join(".config"))?;
    if after != config {
        let diff: Vec<String> = diff_lines(&config, &after);
        bail!(
            "the source tree does not match the config: olddefconfig changed {}; use the linux-source version of the target kernel (and install dwarves if PAHOLE options differ)",
            diff.join(", ")
        );
    }
    run(
        make(&root, &make_vars)
            .arg(format!("-j{jobs}"))
            .arg("prepare"),
        "make prepare",
    )?;
    std::fs::write(&stamp, b"")?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("klive-build: tree prepared in {secs:.1} s");
    Ok(Tree {
        root,
        make_vars,
        prepare_secs: Some(secs),
        _lock: lock,
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

pub fn make(root: &Path, vars: &[String]) -> Command {
    let mut c = Command::new("make");
    c.current_dir(root).arg("-s").args(vars);
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
    fn the_compiler_comes_from_the_config() {
        let c = "CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\n";
        assert_eq!(compiler(c).unwrap(), "x86_64-linux-gnu-gcc-12");
        assert!(compiler("CONFIG_CC_VERSION_TEXT=\"Debian clang version 14\"\n").is_err());
    }

    #[test]
    fn kernels_without_livepatch_are_refused() {
        let err =
            check_livepatch("# CONFIG_LIVEPATCH is not set\n", "6.1.0-57-rt-amd64").unwrap_err();
        assert!(matches!(
            err.downcast_ref::<crate::Stop>(),
            Some(crate::Stop::Refused(_))
        ));
        assert!(err.to_string().contains("CONFIG_LIVEPATCH"), "{err}");
        assert!(check_livepatch("CONFIG_LIVEPATCH=y\n", "x").is_ok());
    }

    #[test]
    fn directory_sources_are_hashed_by_content() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("fs")).unwrap();
        std::fs::write(a.path().join("fs/x.c"), "int x;\n").unwrap();
        let first = hash_source(a.path()).unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(b.path().join("fs")).unwrap();
        std::fs::write(b.path().join("fs/x.c"), "int x;\n").unwrap();
        assert_eq!(
            hash_source(b.path()).unwrap(),
            first,
            "same content, other path"
        );
        std::fs::write(b.path().join("fs/x.c"), "int y;\n").unwrap();
        assert_ne!(hash_source(b.path()).unwrap(), first);
    }

    #[test]
    fn wrong_compiler_is_named() {
        let err = check_compiler("CONFIG_CC_VERSION_TEXT=\"gcc-99 (Nope) 99.0\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gcc-99"), "{err}");
    }
}
