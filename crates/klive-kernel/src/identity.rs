//! Who the running kernel is and whether it can be live patched.

use klive_format::BuildId;
use klive_format::status::{KernelInfo, Support, Taint, TaintFlag};

use crate::{SysRoot, SysfsError};

/// `NT_GNU_BUILD_ID`
const NT_GNU_BUILD_ID: u32 = 3;

/// Reads the running kernel's identity.
pub fn kernel_info(root: &SysRoot) -> Result<KernelInfo, SysfsError> {
    let release = root.read_trimmed("/proc/sys/kernel/osrelease")?;
    let version = root.read_trimmed("/proc/sys/kernel/version")?;
    let arch = root
        .read_optional("/proc/sys/kernel/arch")?
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let build_id = match root.read_bytes("/sys/kernel/notes") {
        Ok(notes) => gnu_build_id(&notes),
        Err(_) => None,
    };
    let package_version = package_version(&version);
    let distro = root
        .read_optional("/etc/os-release")?
        .and_then(|text| os_release_field(&text, "PRETTY_NAME"));
    Ok(KernelInfo {
        release,
        version,
        arch,
        build_id,
        package_version,
        distro,
    })
}

/// Finds the GNU build-id in a sequence of ELF notes (the format of `/sys/kernel/notes`).
/// Malformed input yields `None`, never a panic.
pub fn gnu_build_id(notes: &[u8]) -> Option<BuildId> {
    let mut rest = notes;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    while rest.len() >= 12 {
        let namesz = usize::try_from(word(rest, 0)?).ok()?;
        let descsz = usize::try_from(word(rest, 4)?).ok()?;
        let kind = word(rest, 8)?;
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = 12usize.checked_add(namesz.checked_next_multiple_of(4)?)?;
        let desc_end = desc_start.checked_add(descsz)?;
        let next = desc_start.checked_add(descsz.checked_next_multiple_of(4)?)?;
        let name = rest.get(12..name_end)?;
        let desc = rest.get(desc_start..desc_end)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return BuildId::from_bytes(desc).ok();
        }
        rest = rest.get(next..)?;
    }
    None
}

/// Debian puts its package version in `uname -v`: `#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-10-01)`.
fn package_version(version: &str) -> Option<String> {
    let mut words = version.split_whitespace();
    while let Some(w) = words.next() {
        if w == "Debian" || w == "Ubuntu" {
            return words.next().map(str::to_owned);
        }
    }
    None
}

fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

/// Whether klive can load livepatches into this kernel, with reasons when it cannot.
pub fn support(root: &SysRoot) -> Result<Support, SysfsError> {
    let mut reasons = Vec::new();
    let mut livepatch = true;
    if !root.is_dir("/sys/kernel/livepatch") {
        livepatch = false;
        reasons.push(
            "the kernel has no /sys/kernel/livepatch (built without CONFIG_LIVEPATCH): \
             a reboot into a fixed kernel is the only way to install fixes"
                .to_owned(),
        );
    }
    if root
        .read_optional("/proc/sys/kernel/modules_disabled")?
        .as_deref()
        == Some("1")
    {
        livepatch = false;
        reasons.push(
            "module loading is disabled (kernel.modules_disabled=1) until the next reboot"
                .to_owned(),
        );
    }
    let lockdown = root
        .read_optional("/sys/kernel/security/lockdown")?
        .and_then(|s| lockdown_mode(&s));
    let sig_param = root.read_optional("/sys/module/module/parameters/sig_enforce")?;
    let module_sig_enforce = sig_param.as_deref() == Some("Y")
        || matches!(lockdown.as_deref(), Some("integrity" | "confidentiality"));
    if module_sig_enforce {
        reasons.push(
            "the kernel only loads signed modules: klive modules must be signed with a key the \
             kernel trusts (enrolled MOK or built-in keyring)"
                .to_owned(),
        );
    }
    Ok(Support {
        livepatch,
        reasons,
        lockdown,
        module_sig_enforce,
    })
}

/// `none [integrity] confidentiality` → `integrity`.
fn lockdown_mode(text: &str) -> Option<String> {
    text.split_whitespace().find_map(|w| {
        w.strip_prefix('[')
            .and_then(|w| w.strip_suffix(']'))
            .map(str::to_owned)
    })
}

/// The taint bits of Linux 6.1 (`Documentation/admin-guide/tainted-kernels.rst`).
const TAINT_BITS: &[(u8, char, &str)] = &[
    (0, 'P', "proprietary module was loaded"),
    (1, 'F', "module was force loaded"),
    (2, 'S', "kernel running on an out of specification system"),
    (3, 'R', "module was force unloaded"),
    (4, 'M', "processor reported a machine check exception"),
    (5, 'B', "bad page referenced or unexpected page flags"),
    (6, 'U', "taint requested by userspace"),
    (7, 'D', "kernel died recently (oops or BUG)"),
    (8, 'A', "ACPI table overridden by user"),
    (9, 'W', "kernel issued a warning"),
    (10, 'C', "staging driver was loaded"),
    (11, 'I', "workaround for a platform firmware bug applied"),
    (12, 'O', "externally-built (out-of-tree) module was loaded"),
    (13, 'E', "unsigned module was loaded"),
    (14, 'L', "soft lockup occurred"),
    (15, 'K', "kernel has been live patched"),
    (16, 'X', "auxiliary taint (distribution defined)"),
    (17, 'T', "kernel built with the struct randomization plugin"),
    (18, 'N', "an in-kernel test has been run"),
];

/// Bit 15: set once a livepatch has ever been loaded; it never clears.
pub const TAINT_LIVEPATCH: u64 = 1 << 15;

pub fn decode_taint(value: u64) -> Taint {
    let mut flags = Vec::new();
    for bit in 0..64u8 {
        if value & (1u64 << bit) == 0 {
            continue;
        }
        let (letter, meaning) = TAINT_BITS
            .iter()
            .find(|(b, _, _)| *b == bit)
            .map(|(_, l, m)| (*l, (*m).to_owned()))
            .unwrap_or(('?', format!("unknown taint bit {bit}")));
        flags.push(TaintFlag {
            bit,
            letter,
            meaning,
        });
    }
    Taint { value, flags }
}

pub fn taint(root: &SysRoot) -> Result<Taint, SysfsError> {
    Ok(decode_taint(root.read_int("/proc/sys/kernel/tainted")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((name.len() as u32).to_ne_bytes());
        v.extend((desc.len() as u32).to_ne_bytes());
        v.extend(kind.to_ne_bytes());
        v.extend(name);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend(desc);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    #[test]
    fn build_id_found_after_other_notes() {
        // /sys/kernel/notes of a Debian 6.1 kernel starts with Xen notes, then the GNU one.
        let mut notes = note(b"Xen\0", 6, b"linux\0");
        notes.extend(note(b"Linux\0", 0x100, &[1, 2, 3]));
        notes.extend(note(b"GNU\0", 3, &[0xab; 20]));
        assert_eq!(gnu_build_id(&notes).unwrap().as_str(), "ab".repeat(20));
    }

    #[test]
    fn malformed_notes_give_none() {
        assert_eq!(gnu_build_id(&[]), None);
        assert_eq!(gnu_build_id(&[0xff; 40]), None);
        let mut n = note(b"GNU\0", 3, &[1; 20]);
        n.truncate(30);
        assert_eq!(gnu_build_id(&n), None);
    }

    #[test]
    fn debian_version_string() {
        assert_eq!(
            package_version("#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-10-01)").as_deref(),
            Some("6.1.192-2")
        );
        assert_eq!(package_version("#1 SMP"), None);
    }

    #[test]
    fn lockdown_and_taint() {
        assert_eq!(
            lockdown_mode("none [integrity] confidentiality").as_deref(),
            Some("integrity")
        );
        let t = decode_taint(TAINT_LIVEPATCH | 1 << 12 | 1 << 13);
        let letters: String = t.flags.iter().map(|f| f.letter).collect();
        assert_eq!(letters, "OEK");
        assert_eq!(decode_taint(1 << 40).flags[0].letter, '?');
    }
}
