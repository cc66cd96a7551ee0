//! The Debian kernels the guest boots: one per kernel line Debian 12 ships (6.1, and 6.12 from
//! bookworm-security), each the newest ABI of its line, fetched with `apt-get download` and
//! unpacked with `dpkg-deb -x` under the harness's cache, never installed system-wide; and
//! the GNU build-id of an image.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail};

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
    /// `lib/modules/<release>`: modules.dep and the kernel's own modules.
    pub modules_dir: PathBuf,
    /// The kbuild tree of the headers package (`usr/src/linux-headers-<release>`).
    pub build_dir: PathBuf,
}

impl TargetKernel {
    /// The kernel made of these paths, checked to be what the harness needs.
    pub fn from_paths(
        line: &'static str,
        release: &str,
        image: PathBuf,
        modules_dir: PathBuf,
        build_dir: PathBuf,
    ) -> Result<Self> {
        for (what, path) in [
            ("kernel image", image.clone()),
            ("modules.dep", modules_dir.join("modules.dep")),
            ("kbuild Makefile", build_dir.join("Makefile")),
            ("kernel config", build_dir.join(".config")),
        ] {
            if !path.is_file() {
                bail!("kernel {release}: its {what} {} is missing", path.display());
            }
        }
        Ok(Self {
            line,
            release: release.to_owned(),
            image,
            modules_dir,
            build_dir,
        })
    }

    /// The newest ABI of `line` in the apt archive, fetched into `cache` unless it is there
    /// already (`cache/<release>/`: the unpacked image, headers and kbuild packages).
    pub fn fetch(line: &Line, cache: &Path) -> Result<Self> {
        let release = newest_release(line)?;
        let dir = unpacked(&release, cache)?;
        Self::from_paths(
            line.name,
            &release,
            dir.join(format!("boot/vmlinuz-{release}")),
            dir.join("lib/modules").join(&release),
            dir.join("usr/src").join(format!("linux-headers-{release}")),
        )
    }
}

/// The ABI the line's metapackage depends on now: `linux-image-6.12-amd64` →
/// `6.12.117+deb12-amd64`.
fn newest_release(line: &Line) -> Result<String> {
    let deps = apt_depends(line.metapackage)?;
    deps.iter()
        .filter_map(|d| d.strip_prefix("linux-image-"))
        .map(|d| d.strip_suffix("-unsigned").unwrap_or(d))
        .next()
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{} depends on no linux-image-<abi> package ({deps:?}); run apt-get update",
                line.metapackage
            )
        })
}

/// The package names `apt-cache depends PACKAGE` lists as `Depends:` (alternatives too).
fn apt_depends(package: &str) -> Result<Vec<String>> {
    let output = Command::new("apt-cache")
        .args([
            "depends",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
        ])
        .args(["--no-breaks", "--no-replaces", "--no-enhances", package])
        .output()
        .context("running apt-cache: the harness fetches its kernels with apt")?;
    if !output.status.success() {
        bail!(
            "apt-cache depends {package} failed: {}; run apt-get update",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends: "))
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.starts_with('<'))
        .collect())
}

/// The version apt would install of `package`, if it has one.
fn candidate(package: &str) -> Result<Option<String>> {
    let output = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .context("running apt-cache policy")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::trim)
        .filter(|v| *v != "(none)")
        .map(str::to_owned))
}

/// The packages that make up `release`, pinned to their candidate versions: the image
/// (`linux-image-<abi>`, or only `-unsigned` where that is all the archive has), the
/// headers and what they depend on for kbuild (`-common` headers, `linux-kbuild-*`).
fn packages(release: &str) -> Result<Vec<String>> {
    let pinned = |package: &str| -> Result<Option<String>> {
        Ok(candidate(package)?.map(|v| format!("{package}={v}")))
    };
    let image = format!("linux-image-{release}");
    let image = match pinned(&image)? {
        Some(p) => p,
        None => pinned(&format!("{image}-unsigned"))?
            .with_context(|| format!("neither {image} nor {image}-unsigned is in the archive"))?,
    };
    let headers = format!("linux-headers-{release}");
    let mut out = vec![
        image,
        pinned(&headers)?.with_context(|| format!("{headers} is not in the archive"))?,
    ];
    for dep in apt_depends(&headers)? {
        if (dep.starts_with("linux-headers-") && dep.contains("-common"))
            || dep.starts_with("linux-kbuild-")
        {
            out.push(pinned(&dep)?.with_context(|| format!("{dep} is not in the archive"))?);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `cache/<release>/`, made of the release's packages (and the `modules.dep` depmod makes
/// from them); fetched and unpacked into a temporary
/// directory renamed into place at the end, so an interrupted run never leaves half a
/// kernel behind. `cache/<release>/packages` lists what it was made of; a newer Debian
/// version of the same ABI replaces it.
fn unpacked(release: &str, cache: &Path) -> Result<PathBuf> {
    let dir = cache.join(release);
    let stamp = dir.join("packages");
    let cached = fs::read_to_string(&stamp).ok();
    let wanted = match packages(release) {
        Ok(p) => p.join("\n") + "\n",
        // Offline with a complete copy: use it.
        Err(e) if cached.is_some() => {
            eprintln!("xtask: using the cached kernel {release} ({e:#})");
            return Ok(dir);
        }
        Err(e) => return Err(e),
    };
    if cached.as_deref() == Some(wanted.as_str()) {
        return Ok(dir);
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let tmp = cache.join(format!(".{release}.tmp-{}", std::process::id()));
    remove_dir_if_exists(&tmp)?;
    let debs = tmp.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    eprintln!(
        "xtask: fetching kernel {release}: {}",
        wanted.trim().replace('\n', " ")
    );
    let mut download = Command::new("apt-get");
    download
        .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
        .args(wanted.lines())
        .current_dir(&debs);
    crate::run(download)
        .with_context(|| format!("downloading the packages of kernel {release}"))?;
    for entry in fs::read_dir(&debs).with_context(|| format!("listing {}", debs.display()))? {
        let deb = entry
            .with_context(|| format!("listing {}", debs.display()))?
            .path();
        let mut unpack = Command::new("dpkg-deb");
        unpack.arg("-x").arg(&deb).arg(&tmp);
        crate::run(unpack).with_context(|| format!("unpacking {}", deb.display()))?;
    }
    fs::remove_dir_all(&debs).with_context(|| format!("removing {}", debs.display()))?;
    relocate_headers(&tmp, release, &dir)?;
    // modules.dep is made by the package's postinst (depmod), which unpacking skips.
    let depmod = ["/usr/sbin/depmod", "/sbin/depmod"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("depmod");
    let mut deps = Command::new(depmod);
    deps.arg("-b").arg(&tmp).arg(release);
    crate::run(deps).with_context(|| format!("running depmod for kernel {release} (kmod)"))?;
    fs::write(tmp.join("packages"), &wanted).context("writing the kernel's package list")?;
    // A stale copy (another Debian version of this ABI) goes first; then the new one
    // appears in one rename.
    let old = cache.join(format!(".{release}.old-{}", std::process::id()));
    if dir.exists() {
        fs::rename(&dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    fs::rename(&tmp, &dir).with_context(|| format!("renaming {} into place", tmp.display()))?;
    remove_dir_if_exists(&old)?;
    Ok(dir)
}

/// Debian's `usr/src/linux-headers-<abi>/Makefile` includes the `-common` tree by absolute
/// path (`include /usr/src/linux-headers-<version>-common/Makefile`); it is made to point
/// into `final_dir`, where the unpacked tree will live. Relative symlinks (`scripts`,
/// `tools` into `usr/lib/linux-kbuild-*`) work as unpacked.
fn relocate_headers(unpacked: &Path, release: &str, final_dir: &Path) -> Result<()> {
    let makefile = unpacked
        .join("usr/src")
        .join(format!("linux-headers-{release}"))
        .join("Makefile");
    let text =
        fs::read_to_string(&makefile).with_context(|| format!("reading {}", makefile.display()))?;
    let fixed = rebase_includes(&text, final_dir);
    if fixed == text {
        bail!(
            "{} includes nothing under /usr/src: has Debian changed its headers layout?",
            makefile.display()
        );
    }
    fs::write(&makefile, fixed).with_context(|| format!("writing {}", makefile.display()))
}

/// `include /usr/src/X` lines become `include <root>/usr/src/X`.
fn rebase_includes(makefile: &str, root: &Path) -> String {
    makefile
        .lines()
        .map(|l| match l.strip_prefix("include /usr/src/") {
            Some(rest) => format!("include {}/usr/src/{rest}", root.display()),
            None => l.to_owned(),
        })
        .map(|l| l + "\n")
        .collect()
}

/// Removes leftovers of interrupted fetches (`.<release>.tmp-*`, `.<release>.old-*`) in
/// `cache`; the caller holds the harness lock, so none is in use.
pub fn clean_cache(cache: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(cache) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", cache.display()))?
            .path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-")) {
            remove_dir_if_exists(&path)?;
        }
    }
    Ok(())
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// The GNU build-id of the kernel image, as lowercase hex: what `/sys/kernel/notes` of the
/// booted guest holds and what every klive patch for this kernel is tagged with.
///
/// The compressed vmlinux is found inside the bzImage (like the kernel's
/// `scripts/extract-vmlinux`), decompressed with the xz/zstd/gzip tool and its GNU
/// build-id note read with `object`. That takes a second or two, so the result is cached in
/// `cache_dir`, keyed by the image's size and modification time. The guest checks the value against
/// `/sys/kernel/notes` in the harness scenario.
pub fn build_id(kernel: &TargetKernel, cache_dir: &Path) -> Result<String> {
    let meta = fs::metadata(&kernel.image)
        .with_context(|| format!("reading {}", kernel.image.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let key = format!("{} {} {}", kernel.image.display(), meta.len(), mtime);
    let cache = cache_dir.join(format!("{}.build-id", kernel.release));
    if let Ok(text) = fs::read_to_string(&cache)
        && let Some((cached_key, id)) = text.trim().rsplit_once(' ')
        && cached_key == key
        && klive_format::digest::unhex(id).is_some_and(|b| !b.is_empty())
    {
        return Ok(id.to_string());
    }
    let image = fs::read(&kernel.image)
        .with_context(|| format!("reading {} (run as root?)", kernel.image.display()))?;
    let id = build_id_from_bzimage(&image)
        .with_context(|| format!("finding the GNU build-id of {}", kernel.image.display()))?;
    fs::write(&cache, format!("{key} {id}\n"))
        .with_context(|| format!("writing {}", cache.display()))?;
    Ok(id)
}

/// Compression formats a bzImage payload can use, with the tool that undoes them.
const PAYLOADS: &[(&[u8], &str, &[&str])] = &[
    (b"\xfd7zXZ\x00", "xz", &["-dc", "--single-stream"]),
    (b"\x28\xb5\x2f\xfd", "zstd", &["-dcq"]),
    (b"\x1f\x8b\x08", "gzip", &["-dcq"]),
];

fn build_id_from_bzimage(image: &[u8]) -> Result<String> {
    if image.starts_with(b"\x7fELF") {
        return elf_gnu_build_id(image);
    }
    let mut tried = 0;
    for (magic, tool, args) in PAYLOADS {
        for offset in find_all(image, magic) {
            tried += 1;
            let Ok(vmlinux) = decompress(tool, args, &image[offset..]) else {
                continue;
            };
            if vmlinux.starts_with(b"\x7fELF") {
                return elf_gnu_build_id(&vmlinux);
            }
        }
    }
    bail!(
        "no compressed vmlinux found in the image ({tried} candidate payloads tried); \
         is xz-utils installed?"
    )
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

/// Runs `tool args` with `input` on stdin and returns what it wrote, even when it complains
/// about the bytes that follow the payload.
fn decompress(tool: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {tool}"))?;
    let mut stdin = child
        .stdin
        .take()
        .context("opening the decompressor's stdin")?;
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        // The tool may stop reading at the end of its stream: a broken pipe is expected.
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .with_context(|| format!("running {tool}"))?;
    let _ = feeder.join();
    Ok(out.stdout)
}

/// The GNU build-id note of an ELF file (`object` walks its note sections, or its note
/// segments when it has no section headers).
pub fn elf_gnu_build_id(elf: &[u8]) -> Result<String> {
    use object::Object;
    let file = object::File::parse(elf).context("not an ELF file object can read")?;
    match file.build_id().context("reading the ELF notes")? {
        Some(id) if !id.is_empty() => Ok(klive_format::digest::hex(id)),
        _ => bail!("the ELF file has no GNU build-id note"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_includes_point_into_the_unpacked_tree() {
        let makefile = "include /usr/src/linux-headers-6.12.117+deb12-common/Makefile\nX = 1\n";
        assert_eq!(
            rebase_includes(makefile, Path::new("/c/6.12.117+deb12-amd64")),
            "include /c/6.12.117+deb12-amd64/usr/src/linux-headers-6.12.117+deb12-common/Makefile\nX = 1\n"
        );
    }

    /// A relocatable ELF file with a Xen note section and then the GNU build-id, written by
    /// `object` the way the kernel's linker lays notes out.
    fn elf_with_notes(build_id: Option<&[u8]>) -> Vec<u8> {
        use object::write::Object as Writer;
        use object::{Architecture, BinaryFormat, Endianness, SectionKind, elf};
        fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
            let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(4) * 4, 0);
            let mut n = Vec::new();
            n.extend(u32::try_from(name.len()).unwrap().to_le_bytes());
            n.extend(u32::try_from(desc.len()).unwrap().to_le_bytes());
            n.extend(kind.to_le_bytes());
            n.extend(name);
            pad(&mut n);
            n.extend(desc);
            pad(&mut n);
            n
        }
        let mut w = Writer::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let mut notes = note(b"Xen\0", 1, &[1, 2]);
        if let Some(id) = build_id {
            notes.extend(note(b"GNU\0", elf::NT_GNU_BUILD_ID.0, id));
        }
        let section = w.add_section(Vec::new(), b".notes".to_vec(), SectionKind::Note);
        w.append_section_data(section, &notes, 4);
        w.write().unwrap()
    }

    #[test]
    fn build_id_note_is_found_after_other_notes() {
        let elf = elf_with_notes(Some(&[0xab, 0xcd, 0xef]));
        assert_eq!(elf_gnu_build_id(&elf).unwrap(), "abcdef");
        let err = elf_gnu_build_id(&elf_with_notes(None)).unwrap_err();
        assert!(err.to_string().contains("no GNU build-id"), "{err:#}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(elf_gnu_build_id(b"\x7fELF\x02\x01").is_err());
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x28] = 0xff;
        elf[0x3c] = 5;
        elf[0x3a] = 64;
        assert!(elf_gnu_build_id(&elf).is_err());
    }
}
