//! The installed Debian kernel the guest boots: its release, image, headers and GNU build-id.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail};

/// An installed kernel with both an image and a kbuild tree for its modules.
#[derive(Debug, Clone)]
pub struct TargetKernel {
    /// The release (`uname -r`), e.g. `6.1.0-56-amd64`.
    pub release: String,
    pub image: PathBuf,
    /// `/lib/modules/<release>`: modules.dep and the kernel's own modules.
    pub modules_dir: PathBuf,
    /// `/lib/modules/<release>/build`: the kbuild tree from the headers package.
    pub build_dir: PathBuf,
}

impl TargetKernel {
    /// Picks the newest release that has `/boot/vmlinuz-<release>` and
    /// `/lib/modules/<release>/build/Makefile`.
    pub fn discover() -> Result<Self> {
        let mut releases = Vec::new();
        let entries = fs::read_dir("/boot").context("listing /boot for installed kernels")?;
        for entry in entries {
            let name = entry.context("listing /boot")?.file_name();
            let Some(release) = name.to_str().and_then(|n| n.strip_prefix("vmlinuz-")) else {
                continue;
            };
            let modules_dir = Path::new("/lib/modules").join(release);
            if modules_dir.join("build/Makefile").is_file()
                && modules_dir.join("modules.dep").is_file()
            {
                releases.push(release.to_string());
            }
        }
        releases.sort_by(|a, b| compare_releases(a, b));
        let Some(release) = releases.pop() else {
            bail!(
                "no installed kernel has both /boot/vmlinuz-<release> and \
                 /lib/modules/<release>/build: install linux-image-amd64 and linux-headers-amd64"
            );
        };
        let modules_dir = Path::new("/lib/modules").join(&release);
        Ok(Self {
            image: Path::new("/boot").join(format!("vmlinuz-{release}")),
            build_dir: modules_dir.join("build"),
            modules_dir,
            release,
        })
    }
}

/// Orders releases like `6.1.0-9-amd64` < `6.1.0-56-amd64`: numeric runs compare as numbers.
fn compare_releases(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 {
                out.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
                rest = &rest[digits..];
            } else {
                let text =
                    rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
                out.push((0, rest[..text].to_string()));
                rest = &rest[text..];
            }
        }
        out
    }
    chunks(a).cmp(&chunks(b))
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
    fn newest_release_wins_numerically() {
        let mut r = vec!["6.1.0-56-amd64", "6.1.0-9-amd64", "6.1.0-55-amd64"];
        r.sort_by(|a, b| compare_releases(a, b));
        assert_eq!(r, ["6.1.0-9-amd64", "6.1.0-55-amd64", "6.1.0-56-amd64"]);
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
