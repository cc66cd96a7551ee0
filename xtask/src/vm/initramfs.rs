//! The guest's initramfs: an uncompressed newc cpio archive written here, holding busybox,
//! the agent, the test modules, the scenarios and the few Debian modules needed to mount
//! the state disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use klive_build::debian;

use super::kernel::TargetKernel;

/// Kernel modules the guest loads at boot for the state disk: virtio PCI transport, virtio
/// block device, ext4 and the crc32c it checksums metadata with; and the virtio network
/// card of the fleet boot (the other boots have none). Their dependencies are added from
/// each module's `depends=` modinfo (what depmod would write to modules.dep, which unpacked
/// packages lack); any that the kernel has built in are skipped.
pub const BOOT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "virtio_net",
];

/// A newc ("070701") cpio archive being built in memory.
#[derive(Debug, Default)]
pub struct Cpio {
    data: Vec<u8>,
    next_inode: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Cpio {
    /// Adds a directory and, first, any parent directories not added yet.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        self.entry(path, S_IFDIR | 0o755, b"");
    }

    pub fn file(&mut self, path: &str, mode: u32, contents: &[u8]) {
        let path = path.trim_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, S_IFREG | mode, contents);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = path.trim_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, S_IFLNK | 0o777, target.as_bytes());
    }

    fn entry(&mut self, name: &str, mode: u32, contents: &[u8]) {
        self.next_inode += 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        self.header(self.next_inode, mode, nlink, contents.len(), name);
        self.data.extend_from_slice(contents);
        self.pad();
    }

    fn header(&mut self, inode: u32, mode: u32, nlink: u32, size: usize, name: &str) {
        // Sizes above 4 GiB cannot occur here: the inputs are a few megabytes.
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
        let fields = [inode, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0];
        self.data.extend_from_slice(b"070701");
        for field in fields {
            self.data
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, 0, "TRAILER!!!");
        self.data
    }
}

/// What goes into the initramfs besides the fixed layout.
#[derive(Debug)]
pub struct Contents<'a> {
    pub root: &'a Path,
    pub kernel: &'a TargetKernel,
    pub build_id: &'a str,
    pub agent: &'a Path,
    /// `tests/vm/bench/peakrss.c`, built static: the benchmark's peak-RSS meter.
    pub peakrss: &'a Path,
    pub modules: &'a Path,
}

/// Writes the initramfs to `out`; returns the scenarios it packed for each phase.
///
/// Layout: `/init`, busybox in `/bin` with its applet links, `/bin/klive`, `/bin/peakrss`,
/// `/modules/*.ko`,
/// `/lib/klive-boot/` (the Debian modules for the disk, and `order`, the load order),
/// `/tests/lib.sh`, `/tests/phase1/`, `/tests/phase2/`, `/tests/phasefleet/`,
/// `/tests/phasekallsyms/`, `/tests/demo/`, `/tests/bench/` ([`PHASE_DIRS`]), and facts about
/// the target kernel in `/etc/klive-test/` (`release`, `line`, `build-id`, `wrong-release`).
pub fn write(contents: &Contents<'_>, out: &Path) -> Result<Scenarios> {
    let mut cpio = Cpio::default();
    for dir in [
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "var/lib/klive",
        "mnt",
        "root",
        "etc",
    ] {
        cpio.dir(dir);
    }
    add_busybox(&mut cpio)?;
    cpio.file("bin/klive", 0o755, &read(contents.agent)?);
    cpio.file("bin/peakrss", 0o755, &read(contents.peakrss)?);

    let mut names: Vec<PathBuf> = fs::read_dir(contents.modules)
        .with_context(|| format!("listing {}", contents.modules.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ko"))
        .collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        cpio.file(&format!("modules/{name}"), 0o644, &read(&path)?);
    }

    let boot = boot_modules(contents.kernel)?;
    let mut order = String::new();
    for (name, bytes) in &boot {
        cpio.file(&format!("lib/klive-boot/{name}.ko"), 0o644, bytes);
        order.push_str(name);
        order.push('\n');
    }
    cpio.file("lib/klive-boot/order", 0o644, order.as_bytes());

    let vm = contents.root.join("tests/vm");
    cpio.file("init", 0o755, &read(&vm.join("init.sh"))?);
    cpio.file("tests/lib.sh", 0o644, &read(&vm.join("lib.sh"))?);
    let mut packed = Scenarios::default();
    for (phase, dir) in PHASE_DIRS {
        let into = guest_dir(phase);
        cpio.dir(&into);
        let mut names = Vec::new();
        for script in scripts(&vm.join(dir))? {
            let name = script.file_name().unwrap_or_default().to_string_lossy();
            cpio.file(&format!("{into}/{name}"), 0o755, &read(&script)?);
            names.push(name.trim_end_matches(".sh").to_owned());
        }
        packed.0.insert(phase, names);
    }

    let release = &contents.kernel.release;
    cpio.file(
        "etc/klive-test/release",
        0o644,
        format!("{release}\n").as_bytes(),
    );
    cpio.file(
        "etc/klive-test/line",
        0o644,
        format!("{}\n", contents.kernel.line).as_bytes(),
    );
    cpio.file(
        "etc/klive-test/build-id",
        0o644,
        format!("{}\n", contents.build_id).as_bytes(),
    );
    let wrong = super::modules::other_release(release);
    cpio.file(
        "etc/klive-test/wrong-release",
        0o644,
        format!("{wrong}\n").as_bytes(),
    );
    cpio.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    cpio.file("etc/group", 0o644, b"root:x:0:\n");

    fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))?;
    Ok(packed)
}

/// Each boot phase (`klive.phase=`) and the directory of `tests/vm/` holding its scripts.
const PHASE_DIRS: [(&str, &str); 6] = [
    ("1", "scenarios/phase1"),
    ("2", "scenarios/phase2"),
    ("demo", "demo"),
    ("bench", "bench"),
    // The agent against a klive-server on the host (vm/fleet.rs).
    ("fleet", "scenarios/fleet"),
    // The boot that takes klive-build's symbol source (vm/kallsyms.rs).
    ("kallsyms", "scenarios/kallsyms"),
];

/// The directory of `tests/vm/` holding the scripts of `phase`.
pub fn phase_dir(phase: &str) -> &'static str {
    PHASE_DIRS
        .iter()
        .find(|(p, _)| *p == phase)
        .map_or("scenarios/none", |(_, d)| d)
}

/// Where /init looks for a phase's scripts (init.sh): `tests/demo`, `tests/phase1`, ...
fn guest_dir(phase: &str) -> String {
    match phase {
        "demo" | "bench" => format!("tests/{phase}"),
        _ => format!("tests/phase{phase}"),
    }
}

/// The scenarios packed for each phase (script names without `.sh`, in the order /init runs
/// them): what a boot of that phase must start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scenarios(BTreeMap<&'static str, Vec<String>>);

impl Scenarios {
    pub fn of(&self, phase: &str) -> &[String] {
        self.0.get(phase).map_or(&[], Vec::as_slice)
    }
}

/// The `*.sh` files of a directory in name order (a missing directory has none).
pub fn scripts(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    out.sort();
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Busybox-static from Debian with a link for each applet, where busybox itself would put it.
fn add_busybox(cpio: &mut Cpio) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("running /bin/busybox --list-full: install busybox-static")?;
    if !output.status.success() {
        bail!("/bin/busybox --list-full failed: reinstall busybox-static");
    }
    let bytes = read(busybox)?;
    if !is_static_elf(&bytes) {
        bail!("/bin/busybox is not statically linked: install busybox-static instead of busybox");
    }
    cpio.file("bin/busybox", 0o755, &bytes);
    let list = String::from_utf8_lossy(&output.stdout);
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if applet == "bin/busybox" {
            continue;
        }
        cpio.symlink(applet, "/bin/busybox");
    }
    Ok(())
}

/// A static executable has no PT_INTERP program header (an ELF file `object` cannot read is
/// not taken for one).
fn is_static_elf(elf: &[u8]) -> bool {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let Ok(file) = ElfFile64::<object::Endianness>::parse(elf) else {
        return false;
    };
    let endian = file.endian();
    file.elf_program_headers()
        .iter()
        .all(|ph| ph.p_type(endian) != object::elf::PT_INTERP)
}

/// The boot modules and their dependencies in load order (dependencies first), each with
/// its bytes as a plain ELF file: 6.12 ships `.ko.xz`, which busybox `insmod` cannot read, so
/// they are decompressed here.
pub fn boot_modules(kernel: &TargetKernel) -> Result<Vec<(String, Vec<u8>)>> {
    let builtin_file = kernel.modules_dir.join("modules.builtin");
    let builtin = fs::read_to_string(&builtin_file)
        .with_context(|| format!("reading {}", builtin_file.display()))?;
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut bytes: HashMap<String, Vec<u8>> = HashMap::new();
    let order = load_order(BOOT_MODULES, &builtin, |name| {
        let path = debian::find_module_file(&kernel.modules_dir, name).with_context(|| {
            format!(
                "module {name} is neither built into {} nor under {}",
                kernel.release,
                kernel.modules_dir.display()
            )
        })?;
        let elf = debian::read_module(&path)?;
        let deps = modinfo_depends(&elf)
            .with_context(|| format!("reading the modinfo of {}", path.display()))?;
        bytes.insert(name.to_owned(), elf);
        Ok(deps)
    })?;
    Ok(order
        .into_iter()
        .map(|name| {
            let elf = bytes.remove(&name).unwrap_or_default();
            (name, elf)
        })
        .collect())
}

/// `ext4` for `kernel/fs/ext4/ext4.ko` (also `.ko.xz` etc.); dashes become underscores as
/// the kernel does for module names.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The modules a module needs loaded first: its `.modinfo` `depends=` list.
fn modinfo_depends(elf: &[u8]) -> Result<Vec<String>> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).context("not an ELF file")?;
    let section = file
        .section_by_name(".modinfo")
        .context("no .modinfo section")?;
    let data = section.data().context("reading .modinfo")?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| list.split(|&b| b == b','))
        .filter(|d| !d.is_empty())
        .map(|d| module_name(&String::from_utf8_lossy(d)))
        .collect())
}

/// `wanted` and what they depend on (`deps_of`), dependencies first, each once; modules in
/// `builtin` are left out.
fn load_order(
    wanted: &[&str],
    builtin: &BTreeSet<String>,
    mut deps_of: impl FnMut(&str) -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        builtin: &BTreeSet<String>,
        deps_of: &mut dyn FnMut(&str) -> Result<Vec<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if builtin.contains(name) || !seen.insert(name.to_string()) {
            return Ok(());
        }
        for dep in deps_of(name)? {
            visit(&dep, builtin, deps_of, seen, order)?;
        }
        order.push(name.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        visit(name, builtin, &mut deps_of, &mut seen, &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_builtins_are_skipped() {
        let deps: HashMap<&str, Vec<&str>> = [
            ("ext4", vec!["crc16", "mbcache", "jbd2"]),
            ("mbcache", vec![]),
            ("jbd2", vec![]),
            ("crc16", vec![]),
            ("virtio_blk", vec!["virtio"]),
            ("virtio", vec![]),
        ]
        .into_iter()
        .collect();
        let builtin: BTreeSet<String> = ["mbcache".to_owned()].into_iter().collect();
        let lookup = |name: &str| -> Result<Vec<String>> {
            let d = deps.get(name).context("unknown module")?;
            Ok(d.iter().map(|s| s.to_string()).collect())
        };
        let order = load_order(&["virtio_blk", "ext4"], &builtin, lookup).unwrap();
        assert_eq!(order, ["virtio", "virtio_blk", "crc16", "jbd2", "ext4"]);
        assert!(load_order(&["nope"], &builtin, lookup).is_err());
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(
            module_name("kernel/crypto/crc32c-generic.ko"),
            "crc32c_generic"
        );
    }

    #[test]
    fn modinfo_depends_lists_the_modules_named() {
        use object::write::Object as Writer;
        use object::{Architecture, BinaryFormat, Endianness, SectionKind};
        let mut w = Writer::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let section = w.add_section(Vec::new(), b".modinfo".to_vec(), SectionKind::Data);
        w.append_section_data(
            section,
            b"license=GPL\0depends=crc16,mbcache,jbd2\0name=ext4\0",
            1,
        );
        let elf = w.write().unwrap();
        assert_eq!(modinfo_depends(&elf).unwrap(), ["crc16", "mbcache", "jbd2"]);
        assert!(modinfo_depends(b"not elf").is_err());
    }

    #[test]
    fn a_dynamic_executable_or_garbage_is_not_static() {
        // The test binary itself is linked against glibc: it has a PT_INTERP header.
        let me = fs::read("/proc/self/exe").unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"\x7fELF\x02\x01garbage"));
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut cpio = Cpio::default();
        cpio.file("a/b/c", 0o644, b"hello");
        cpio.symlink("bin/sh", "/bin/busybox");
        let data = cpio.finish();
        assert_eq!(data.len() % 4, 0);
        assert!(data.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&data);
        for name in ["a\0", "a/b\0", "a/b/c\0", "bin/sh\0", "TRAILER!!!\0"] {
            assert!(text.contains(name), "{name:?} missing");
        }
    }
}
