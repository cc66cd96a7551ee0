//! Debian's kernels by name: everything a build (or a test boot) needs for one kernel ABI
//! (`6.1.0-57-amd64`, `6.12.117+deb12-cloud-amd64`), fetched from the archive apt knows with
//! `apt-get download` into a cache and unpacked there with `dpkg-deb`. Nothing is installed
//! and nothing of the build machine's own kernel (`/lib/modules`, `/boot`) is read.
//!
//! Cache layout (every entry is unpacked into a temporary directory and renamed into place,
//! so an interrupted run never leaves a half entry that looks complete):
//!
//! - `debs/`: downloaded packages (the large source and `-dbg` ones are removed once unpacked);
//! - `kernels/<abi>_<version>/`: image, headers, headers-common and kbuild unpacked into one
//!   root, so the headers' relative `scripts` and `tools` links resolve, plus `build-id`;
//! - `sources/<package>_<version>/`: the `linux-source-*.tar.xz` and its `sha256`;
//! - `dbg/<abi>_<version>/vmlinux`: the unstripped vmlinux of the `-dbg` package.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a kernel could not be had from the archive.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "no Debian kernel named {abi:?} in apt's index (neither linux-image-{abi} nor linux-image-{abi}-unsigned); list the names with `apt-cache search --names-only '^linux-image-[0-9].*-amd64(-unsigned)?$'` (run apt-get update first if the list is old)"
    )]
    UnknownKernel { abi: String },
    #[error(
        "cannot fetch {package}={version} with apt-get download: {apt_error}; check the network and apt's sources (apt-get update), or pass the inputs with --source/--config/--kbuild/--kallsyms/--build-id/--release"
    )]
    Fetch {
        package: String,
        version: String,
        apt_error: String,
    },
    #[error("{package}: {reason}; check apt-cache show {package}")]
    Index { package: String, reason: String },
    #[error("{what}: {reason}")]
    Unpack { what: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, FetchError>;

fn io(what: impl fmt::Display) -> impl FnOnce(std::io::Error) -> FetchError {
    let what = what.to_string();
    move |source| FetchError::Io { what, source }
}

/// One Debian kernel, fetched and unpacked in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The ABI name, which is also `uname -r`: `6.1.0-57-amd64`.
    pub release: String,
    /// The Debian version of the image: `6.1.192-3`.
    pub version: String,
    /// `6.1` or `6.12`: the line, as in `linux-source-6.1`.
    pub series: String,
    /// The image package used: `linux-image-ABI` or `linux-image-ABI-unsigned`.
    pub image_package: String,
    /// GNU build-id of the kernel (hex), read from the image's vmlinuz.
    pub build_id: String,
    /// The unpacked root: `boot/`, `lib/modules/`, `usr/src/`, `usr/lib/linux-kbuild-*`.
    pub root: PathBuf,
    pub vmlinuz: PathBuf,
    /// `lib/modules/ABI` (6.1 ships `.ko`, 6.12 `.ko.xz`).
    pub modules_dir: PathBuf,
    /// `usr/src/linux-headers-ABI`: the kbuild directory of external modules.
    pub headers_dir: PathBuf,
    /// The headers package's `.config`.
    pub config: PathBuf,
}

/// The kernel's source: `linux-source-SERIES.tar.xz` of the image's version.
#[derive(Debug, Clone)]
pub struct Source {
    pub tarball: PathBuf,
    /// SHA-256 (hex) of the tarball.
    pub sha256: String,
}

/// The default cache: `$XDG_CACHE_HOME/klive-build`, else `$HOME/.cache/klive-build`.
pub fn default_cache() -> Option<PathBuf> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("klive-build"))
}

impl Kernel {
    /// Resolves `abi` in apt's index, downloads what is missing from the cache and unpacks
    /// it: image (signed or unsigned), headers, headers-common and kbuild. The source and the
    /// `-dbg` vmlinux come on demand: [`Kernel::source`], [`Kernel::vmlinux`].
    pub fn fetch(abi: &str, cache: &Path) -> Result<Kernel> {
        let series = series_of(abi).ok_or_else(|| FetchError::UnknownKernel {
            abi: abi.to_owned(),
        })?;
        let (image_package, image) = find_image(abi)?;
        let version = field(&image, "Version", &image_package)?.to_owned();
        let entry = cache.join("kernels").join(format!("{abi}_{version}"));
        if !entry.join("build-id").is_file() {
            let headers_pkg = format!("linux-headers-{abi}");
            let headers = pick(&headers_pkg, &Constraint::Eq(version.clone()))?;
            let mut debs = vec![
                download(cache, &image_package, &image)?,
                download(cache, &headers_pkg, &headers)?,
            ];
            for (pkg, stanza) in header_dependencies(&headers, &headers_pkg)? {
                debs.push(download(cache, &pkg, &stanza)?);
            }
            unpack_kernel(abi, &debs, &entry)?;
        }
        let build_id = std::fs::read_to_string(entry.join("build-id"))
            .map_err(io(format!("reading {}", entry.join("build-id").display())))?
            .trim()
            .to_owned();
        let headers_dir = entry.join("usr/src").join(format!("linux-headers-{abi}"));
        Ok(Kernel {
            release: abi.to_owned(),
            series,
            image_package,
            build_id,
            vmlinuz: entry.join("boot").join(format!("vmlinuz-{abi}")),
            modules_dir: entry.join("lib/modules").join(abi),
            config: headers_dir.join(".config"),
            headers_dir,
            root: entry,
            version,
        })
    }

    /// The source tarball of the image's version (`linux-source-SERIES=VERSION`, about
    /// 150 MB), unpacked from its package once.
    pub fn source(&self, cache: &Path) -> Result<Source> {
        let tarball = fetch_source(cache, &self.series, &self.version)?;
        let digest = tarball.with_file_name("sha256");
        let sha = std::fs::read_to_string(&digest)
            .map_err(io(format!("reading {}", digest.display())))?;
        Ok(Source {
            tarball,
            sha256: sha.trim().to_owned(),
        })
    }

    /// The unstripped vmlinux of `linux-image-ABI-dbg` (about 1 GB to download; only the
    /// vmlinux is unpacked and the package is removed after), checked against the build-id.
    pub fn vmlinux(&self, cache: &Path) -> Result<PathBuf> {
        let entry = cache
            .join("dbg")
            .join(format!("{}_{}", self.release, self.version));
        let file = entry.join("vmlinux");
        if file.is_file() {
            return Ok(file);
        }
        let pkg = format!("linux-image-{}-dbg", self.release);
        let stanza = pick(&pkg, &Constraint::Eq(self.version.clone()))?;
        let deb = download(cache, &pkg, &stanza)?;
        let tmp = temp_dir(&entry)?;
        let member = format!("./usr/lib/debug/boot/vmlinux-{}", self.release);
        eprintln!("klive-build: unpacking {member} from {}", deb.display());
        extract_member(&deb, &member, &tmp)?;
        let from = tmp.join(&member);
        let bytes = std::fs::read(&from).map_err(io(format!(
            "{} holds no {member}; check dpkg-deb -c {}",
            pkg,
            deb.display()
        )))?;
        let id =
            klive_elf::symbols::gnu_build_id(&bytes, &member).map_err(|e| FetchError::Unpack {
                what: pkg.clone(),
                reason: e.to_string(),
            })?;
        if id.as_deref() != Some(self.build_id.as_str()) {
            return Err(FetchError::Unpack {
                what: pkg,
                reason: format!(
                    "its vmlinux has build-id {id:?} but the image's is {}",
                    self.build_id
                ),
            });
        }
        std::fs::rename(&from, tmp.join("vmlinux")).map_err(io("moving the vmlinux"))?;
        let _ = std::fs::remove_dir_all(tmp.join("usr"));
        commit(&tmp, &entry)?;
        let _ = std::fs::remove_file(&deb);
        Ok(file)
    }

    /// The `.ko` of module `name` (`-` and `_` alike) as bytes, decompressed when the
    /// package ships it as `.ko.xz`; `None` when the kernel has no such module.
    pub fn module(&self, name: &str) -> Result<Option<(PathBuf, Vec<u8>)>> {
        let Some(path) = find_module_file(&self.modules_dir, name) else {
            return Ok(None);
        };
        let bytes = read_module(&path)?;
        Ok(Some((path, bytes)))
    }

    /// Whether the kernel's config enables livepatching (`CONFIG_LIVEPATCH=y`).
    pub fn livepatch_enabled(&self) -> Result<bool> {
        let text = std::fs::read_to_string(&self.config)
            .map_err(io(format!("reading {}", self.config.display())))?;
        Ok(text.lines().any(|l| l.trim() == "CONFIG_LIVEPATCH=y"))
    }
}

/// `6.1.0-57-amd64` → `6.1`, `6.12.117+deb12-cloud-amd64` → `6.12`.
pub fn series_of(abi: &str) -> Option<String> {
    let mut it = abi.split(['.', '-', '+']);
    let (major, minor) = (it.next()?, it.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(major) && digits(minor) && abi.contains('-')).then(|| format!("{major}.{minor}"))
}

/// The `.ko` or `.ko.xz` of module `name` anywhere under `dir`.
pub fn find_module_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let want = name.replace('-', "_");
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_module_file(&p, name) {
                return Some(f);
            }
        } else if let Some(f) = p.file_name().and_then(|f| f.to_str())
            && let Some(stem) = f.strip_suffix(".ko").or_else(|| f.strip_suffix(".ko.xz"))
            && stem.replace('-', "_") == want
        {
            return Some(p);
        }
    }
    None
}

/// A module file's ELF bytes: read, and decompressed with `xz` when it ends in `.xz`.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz")
            .args(["-dc", "--"])
            .arg(path)
            .output()
            .map_err(io("running xz; install xz-utils"))?;
        if !out.status.success() {
            return Err(FetchError::Unpack {
                what: path.display().to_string(),
                reason: format!("xz -d: {}", String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        Ok(out.stdout)
    } else {
        std::fs::read(path).map_err(io(format!("reading {}", path.display())))
    }
}

/// One package stanza of `apt-cache show`.
type Stanza = HashMap<String, String>;

fn field<'s>(s: &'s Stanza, key: &str, package: &str) -> Result<&'s str> {
    s.get(key)
        .map(String::as_str)
        .ok_or_else(|| FetchError::Index {
            package: package.to_owned(),
            reason: format!("the index entry has no {key} field"),
        })
}

/// Every version of `package` apt's index holds (empty when none).
fn apt_show(package: &str) -> Result<Vec<Stanza>> {
    let out = Command::new("apt-cache")
        .args(["show", "--", package])
        .output()
        .map_err(io(
            "running apt-cache; klive-build --kernel needs apt (Debian)",
        ))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && text.trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(parse_stanzas(&text))
}

fn parse_stanzas(text: &str) -> Vec<Stanza> {
    let mut all = Vec::new();
    let mut cur = Stanza::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                all.push(std::mem::take(&mut cur));
            }
            last = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(k) = &last
                && let Some(v) = cur.get_mut(k)
            {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.to_owned(), v.trim().to_owned());
            last = Some(k.to_owned());
        }
    }
    if !cur.is_empty() {
        all.push(cur);
    }
    all
}

/// `linux-image-ABI`, else `linux-image-ABI-unsigned` (same vmlinuz and modules): the name
/// and its newest stanza.
fn find_image(abi: &str) -> Result<(String, Stanza)> {
    for pkg in [
        format!("linux-image-{abi}"),
        format!("linux-image-{abi}-unsigned"),
    ] {
        if let Ok(s) = pick(&pkg, &Constraint::Any) {
            return Ok((pkg, s));
        }
    }
    Err(FetchError::UnknownKernel {
        abi: abi.to_owned(),
    })
}

/// A version constraint of a `Depends` field.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Constraint {
    Any,
    Eq(String),
    Ge(String),
    Le(String),
    Gt(String),
    Lt(String),
}

impl Constraint {
    fn parse(text: &str) -> Option<Constraint> {
        let t = text.trim();
        let (op, v) = if let Some(v) = t.strip_prefix(">=") {
            (">=", v)
        } else if let Some(v) = t.strip_prefix("<=") {
            ("<=", v)
        } else if let Some(v) = t.strip_prefix(">>") {
            (">>", v)
        } else if let Some(v) = t.strip_prefix("<<") {
            ("<<", v)
        } else if let Some(v) = t.strip_prefix('=') {
            ("=", v)
        } else {
            return None;
        };
        let v = v.trim().to_owned();
        Some(match op {
            ">=" => Constraint::Ge(v),
            "<=" => Constraint::Le(v),
            ">>" => Constraint::Gt(v),
            "<<" => Constraint::Lt(v),
            _ => Constraint::Eq(v),
        })
    }

    fn allows(&self, v: &str) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Constraint::Any => true,
            Constraint::Eq(w) => klive_format::debver::compare(v, w) == Equal,
            Constraint::Ge(w) => klive_format::debver::compare(v, w) != Less,
            Constraint::Le(w) => klive_format::debver::compare(v, w) != Greater,
            Constraint::Gt(w) => klive_format::debver::compare(v, w) == Greater,
            Constraint::Lt(w) => klive_format::debver::compare(v, w) == Less,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Any => write!(f, "any version"),
            Constraint::Eq(v) => write!(f, "= {v}"),
            Constraint::Ge(v) => write!(f, ">= {v}"),
            Constraint::Le(v) => write!(f, "<= {v}"),
            Constraint::Gt(v) => write!(f, ">> {v}"),
            Constraint::Lt(v) => write!(f, "<< {v}"),
        }
    }
}

/// The newest version of `package` in the index that `c` allows.
fn pick(package: &str, c: &Constraint) -> Result<Stanza> {
    let all = apt_show(package)?;
    if all.is_empty() {
        return Err(FetchError::Index {
            package: package.to_owned(),
            reason: "not in apt's index".into(),
        });
    }
    let mut ok: Vec<Stanza> = all
        .into_iter()
        .filter(|s| s.get("Version").is_some_and(|v| c.allows(v)))
        .collect();
    ok.sort_by(|a, b| klive_format::debver::compare(&a["Version"], &b["Version"]));
    ok.pop().ok_or_else(|| FetchError::Index {
        package: package.to_owned(),
        reason: format!("no version in the index satisfies {c}"),
    })
}

/// The kernel-build packages the headers package depends on, as the index says: its
/// `linux-headers-*-common` and `linux-kbuild-*`, each the newest version allowed (older 6.1
/// ABIs take the kbuild version still in the archive).
fn header_dependencies(headers: &Stanza, headers_pkg: &str) -> Result<Vec<(String, Stanza)>> {
    let depends = field(headers, "Depends", headers_pkg)?;
    let mut out = Vec::new();
    for group in depends.split(',') {
        for alt in group.split('|') {
            let alt = alt.trim();
            let (name, rest) = alt.split_once(' ').unwrap_or((alt, ""));
            let name = name.split(':').next().unwrap_or(name);
            let wanted = name.starts_with("linux-kbuild-")
                || (name.starts_with("linux-headers-") && name.ends_with("-common"));
            if !wanted {
                continue;
            }
            let c = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .and_then(Constraint::parse)
                .unwrap_or(Constraint::Any);
            out.push((name.to_owned(), pick(name, &c)?));
            break;
        }
    }
    if !out.iter().any(|(n, _)| n.starts_with("linux-kbuild-"))
        || !out.iter().any(|(n, _)| n.ends_with("-common"))
    {
        return Err(FetchError::Index {
            package: headers_pkg.to_owned(),
            reason: format!(
                "its Depends ({depends}) names no linux-kbuild-* and headers -common package"
            ),
        });
    }
    Ok(out)
}

/// Whether the process runs as root: `/proc/self` belongs to the effective user.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The `.deb` of `package` at the stanza's version in `CACHE/debs/`, downloaded with
/// `apt-get download` (which checks the archive's signatures and the file's hash) into a
/// temporary directory first.
fn download(cache: &Path, package: &str, stanza: &Stanza) -> Result<PathBuf> {
    let version = field(stanza, "Version", package)?;
    let filename = field(stanza, "Filename", package)?;
    let base = filename.rsplit('/').next().unwrap_or(filename);
    let debs = cache.join("debs");
    let deb = debs.join(base);
    if deb.is_file() {
        return Ok(deb);
    }
    let tmp = temp_dir(&deb)?;
    eprintln!("klive-build: apt-get download {package}={version}");
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(&tmp).args(["-q", "download"]);
    if is_root() {
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    let out = cmd
        .arg(format!("{package}={version}"))
        .output()
        .map_err(io(
            "running apt-get; klive-build --kernel needs apt (Debian)",
        ))?;
    let got = std::fs::read_dir(&tmp)
        .map_err(io(format!("reading {}", tmp.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"));
    let (true, Some(got)) = (out.status.success(), got) else {
        let _ = std::fs::remove_dir_all(&tmp);
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(FetchError::Fetch {
            package: package.to_owned(),
            version: version.to_owned(),
            apt_error: if err.is_empty() {
                format!("exit status {}", out.status)
            } else {
                err.join(" / ")
            },
        });
    };
    std::fs::rename(&got, &deb).map_err(io(format!("moving {} into the cache", got.display())))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(deb)
}

/// A fresh directory beside `dest` (`.tmp-NAME-PID`) to build an entry in.
fn temp_dir(dest: &Path) -> Result<PathBuf> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(format!("removing {}", tmp.display())))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    Ok(tmp)
}

/// Renames the finished `tmp` to `dest`; when another run got there first, keeps theirs.
fn commit(tmp: &Path, dest: &Path) -> Result<()> {
    match std::fs::rename(tmp, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.exists() => {
            let _ = std::fs::remove_dir_all(tmp);
            Ok(())
        }
        Err(e) => Err(FetchError::Io {
            what: format!("moving {} to {}", tmp.display(), dest.display()),
            source: e,
        }),
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(io(format!("{what}: starting {cmd:?}")))?;
    if !out.status.success() {
        return Err(FetchError::Unpack {
            what: what.to_owned(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Unpacks the kernel's packages into one root, points the headers' Makefile at the
/// headers-common directory of that root, records the build-id and renames it to `entry`.
fn unpack_kernel(abi: &str, debs: &[PathBuf], entry: &Path) -> Result<()> {
    let tmp = temp_dir(entry)?;
    for deb in debs {
        run_ok(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp),
            &format!("unpacking {}", deb.display()),
        )?;
    }
    let headers = tmp.join("usr/src").join(format!("linux-headers-{abi}"));
    let makefile = headers.join("Makefile");
    let text = std::fs::read_to_string(&makefile)
        .map_err(io(format!("reading {}", makefile.display())))?;
    std::fs::write(&makefile, relocate_makefile(&text))
        .map_err(io(format!("writing {}", makefile.display())))?;
    for link in ["scripts", "tools"] {
        if !headers.join(link).exists() {
            return Err(FetchError::Unpack {
                what: format!("linux-headers-{abi}"),
                reason: format!("its {link} link does not resolve in the unpacked root"),
            });
        }
    }
    let vmlinuz = tmp.join("boot").join(format!("vmlinuz-{abi}"));
    let id = vmlinuz_build_id(&vmlinuz)?;
    std::fs::write(tmp.join("build-id"), format!("{id}\n")).map_err(io("writing build-id"))?;
    commit(&tmp, entry)
}

/// The headers package's Makefile includes the common one by its absolute installed path
/// (`include /usr/src/linux-headers-X-common/Makefile`); the unpacked copy includes it
/// relative to itself, so the tree works wherever the cache is.
fn relocate_makefile(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("include /usr/src/") {
            Some(rest) => format!("include $(dir $(lastword $(MAKEFILE_LIST)))../{rest}"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The `linux-source-SERIES.tar.xz` of `version`, unpacked from its package once, with its
/// SHA-256 beside it.
fn fetch_source(cache: &Path, series: &str, version: &str) -> Result<PathBuf> {
    let pkg = format!("linux-source-{series}");
    let entry = cache.join("sources").join(format!("{pkg}_{version}"));
    let tarball = entry.join(format!("{pkg}.tar.xz"));
    if entry.join("sha256").is_file() && tarball.is_file() {
        return Ok(tarball);
    }
    let stanza = pick(&pkg, &Constraint::Eq(version.to_owned()))?;
    let deb = download(cache, &pkg, &stanza)?;
    let tmp = temp_dir(&entry)?;
    let member = format!("./usr/src/{pkg}.tar.xz");
    extract_member(&deb, &member, &tmp)?;
    let from = tmp.join(&member);
    let to = tmp.join(format!("{pkg}.tar.xz"));
    std::fs::rename(&from, &to).map_err(io(format!(
        "{pkg} {version} holds no {member}; check dpkg-deb -c {}",
        deb.display()
    )))?;
    let _ = std::fs::remove_dir_all(tmp.join("usr"));
    let sha = sha256_file(&to)?;
    std::fs::write(tmp.join("sha256"), format!("{sha}\n")).map_err(io("writing sha256"))?;
    commit(&tmp, &entry)?;
    let _ = std::fs::remove_file(&deb);
    Ok(tarball)
}

/// SHA-256 (hex) of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io(format!("reading {}", path.display())))?;
    let mut h = klive_format::digest::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish_hex())
}

/// Streams the package's file tree through `tar` and keeps only `member` (the first one),
/// under `dest`; tar stops reading once it has it.
fn extract_member(deb: &Path, member: &str, dest: &Path) -> Result<()> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io("running dpkg-deb"))?;
    let stdout = dpkg.stdout.take().expect("piped stdout");
    let out = Command::new("tar")
        .arg("-x")
        .arg("--occurrence=1")
        .arg("-C")
        .arg(dest)
        .arg(member)
        .stdin(stdout)
        .output()
        .map_err(io("running tar"));
    // tar closing the pipe early ends dpkg-deb with SIGPIPE: its status says nothing then.
    let _ = dpkg.kill();
    let _ = dpkg.wait();
    let out = out?;
    if !out.status.success() || !dest.join(member).is_file() {
        return Err(FetchError::Unpack {
            what: format!("{member} from {}", deb.display()),
            reason: format!(
                "tar: {}",
                String::from_utf8_lossy(&out.stderr).trim().to_owned()
            ),
        });
    }
    Ok(())
}

/// The build-id of a bzImage: the payload (xz for 6.1, zstd for 6.12, or gzip) is
/// decompressed and the vmlinux ELF's GNU build-id note read.
pub fn vmlinuz_build_id(vmlinuz: &Path) -> Result<String> {
    let bad = |reason: String| FetchError::Unpack {
        what: vmlinuz.display().to_string(),
        reason,
    };
    let data = std::fs::read(vmlinuz).map_err(io(format!("reading {}", vmlinuz.display())))?;
    let payload = bzimage_payload(&data).ok_or_else(|| bad("not an x86 bzImage".into()))?;
    let tool = if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        ["xz", "-dc", "--single-stream"].as_slice()
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ["zstd", "-dcq"].as_slice()
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        ["gzip", "-dc"].as_slice()
    } else {
        return Err(bad("its payload is neither xz, zstd nor gzip".into()));
    };
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io(format!("running {}; install it", tool[0])))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    // The last 4 bytes are the decompressed size kbuild appends, not part of the stream.
    let stream = payload[..payload.len().saturating_sub(4)].to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&stream);
    });
    let out = child
        .wait_with_output()
        .map_err(io(format!("running {}", tool[0])))?;
    let _ = writer.join();
    // A trailing-garbage complaint after a whole stream still leaves the whole ELF.
    let id = klive_elf::symbols::gnu_build_id(&out.stdout, "the vmlinuz payload")
        .map_err(|e| bad(format!("{e} ({} exited with {})", tool[0], out.status)))?;
    id.ok_or_else(|| bad("its vmlinux has no GNU build-id note".into()))
}

/// The compressed kernel inside a bzImage, from the setup header's payload fields.
fn bzimage_payload(data: &[u8]) -> Option<&[u8]> {
    if data.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let u32_at = |o: usize| -> Option<usize> {
        Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?) as usize)
    };
    let setup_sects = match *data.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    data.get(start..start.checked_add(u32_at(0x24c)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn debian_versions_order_as_dpkg_does() {
        assert_eq!(
            klive_format::debver::compare("6.1.192-3", "6.1.176-1"),
            Greater
        );
        assert_eq!(
            klive_format::debver::compare("6.1.192-3", "6.1.192-3"),
            Equal
        );
        assert_eq!(
            klive_format::debver::compare("6.12.118-1~deb12u1", "6.12.118-1"),
            Less,
            "~ sorts before the end"
        );
        assert_eq!(
            klive_format::debver::compare("6.12.117-1~deb12u1", "6.12.107-1~deb12u1"),
            Greater
        );
        assert_eq!(klive_format::debver::compare("1:1.0", "2.0"), Greater);
        assert_eq!(klive_format::debver::compare("1.0a", "1.0+"), Less);
        assert_eq!(klive_format::debver::compare("6.1.9-1", "6.1.10-1"), Less);
        assert!(
            Constraint::parse(">= 6.1.187-1")
                .unwrap()
                .allows("6.1.192-3")
        );
        assert!(
            !Constraint::parse(">= 6.1.192-3")
                .unwrap()
                .allows("6.1.176-1")
        );
        assert!(
            Constraint::parse("= 6.1.192-3")
                .unwrap()
                .allows("6.1.192-3")
        );
    }

    #[test]
    fn series_come_from_the_abi() {
        assert_eq!(series_of("6.1.0-57-amd64").as_deref(), Some("6.1"));
        assert_eq!(
            series_of("6.12.117+deb12-cloud-amd64").as_deref(),
            Some("6.12")
        );
        assert_eq!(series_of("linux"), None);
        assert_eq!(series_of("6.1"), None);
    }

    #[test]
    fn stanzas_and_dependencies_are_read_from_apt_output() {
        let text = "Package: linux-headers-6.1.0-57-amd64\nVersion: 6.1.192-3\nDepends: linux-headers-6.1.0-57-common (= 6.1.192-3), linux-kbuild-6.1 (>= 6.1.192-3), linux-compiler-gcc-12-x86\nDescription: x\n more\n\nPackage: other\nVersion: 1\n";
        let s = parse_stanzas(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0]["Version"], "6.1.192-3");
        assert_eq!(s[0]["Description"], "x\nmore");
        assert_eq!(s[1]["Package"], "other");
    }

    #[test]
    fn the_headers_makefile_includes_common_relative_to_itself() {
        assert_eq!(
            relocate_makefile("include /usr/src/linux-headers-6.1.0-57-common/Makefile\n"),
            "include $(dir $(lastword $(MAKEFILE_LIST)))../linux-headers-6.1.0-57-common/Makefile\n"
        );
    }

    #[test]
    fn bzimage_payload_is_found_from_the_setup_header() {
        let mut img = vec![0u8; 4096];
        img[0x1f1] = 2;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&4u32.to_le_bytes());
        img[3 * 512 + 16..3 * 512 + 20].copy_from_slice(b"\x28\xb5\x2f\xfd");
        assert_eq!(bzimage_payload(&img), Some(&b"\x28\xb5\x2f\xfd"[..]));
        assert_eq!(bzimage_payload(&[0u8; 100]), None);
    }
}
