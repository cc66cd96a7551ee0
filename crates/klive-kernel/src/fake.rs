//! Test doubles of the kernel; nothing here is used by a binary.
//!
//! With the `fake` feature (off by default; test suites enable it through their
//! dev-dependencies or klive-testkit's `agent` feature): [`FakeKernel`], which materialises
//! what the kernel would show in a temp dir, records calls, injects errnos and stalls
//! transitions. Modules to feed it are built by `klive_testkit::elf`.

#[cfg(feature = "fake")]
mod kernel;

#[cfg(feature = "fake")]
pub use kernel::{Call, FAKE_BUILD_ID, FAKE_RELEASE, FAKE_VERMAGIC, FakeKernel, TransitionPlan};

/// Bytes of a minimal ELF64 relocatable object that passes [`crate::module::inspect`]:
/// sections `.modinfo` (with the given tags) and `.gnu.linkonce.this_module`.
///
/// Kept, outside the `fake` feature, only until its last callers (xtask's server benchmark)
/// move to `klive_testkit::elf::module_bytes`, the same function written with `object::write`.
/// It cannot simply re-export that one: klive-testkit depends on this crate.
#[deprecated(
    note = "use klive_testkit::elf::module_bytes (same signature) or klive_testkit::elf::ModuleBuilder"
)]
pub fn module_bytes(tags: &[(&str, &str)]) -> Vec<u8> {
    let mut modinfo = Vec::new();
    for (k, v) in tags {
        modinfo.extend(format!("{k}={v}").as_bytes());
        modinfo.push(0);
    }
    let this_module = vec![0u8; 64];
    let shstrtab = b"\0.modinfo\0.gnu.linkonce.this_module\0.shstrtab\0".to_vec();
    let names = [0u32, 1, 10, 36];
    let mut out = vec![0u8; 64];
    let mut offsets = Vec::new();
    for data in [&modinfo, &this_module, &shstrtab] {
        offsets.push(out.len() as u64);
        out.extend(data.iter());
    }
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let shoff = out.len() as u64;
    out.extend([0u8; 64]); // null section
    let sizes = [modinfo.len(), this_module.len(), shstrtab.len()];
    let types = [1u32, 1, 3]; // PROGBITS, PROGBITS, STRTAB
    for i in 0..3 {
        let mut sh = [0u8; 64];
        sh[0..4].copy_from_slice(&names[i + 1].to_le_bytes());
        sh[4..8].copy_from_slice(&types[i].to_le_bytes());
        sh[24..32].copy_from_slice(&offsets[i].to_le_bytes());
        sh[32..40].copy_from_slice(&(sizes[i] as u64).to_le_bytes());
        sh[48..56].copy_from_slice(&1u64.to_le_bytes());
        out.extend(sh);
    }
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[40..48].copy_from_slice(&shoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    out[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    out[60..62].copy_from_slice(&4u16.to_le_bytes()); // e_shnum
    out[62..64].copy_from_slice(&3u16.to_le_bytes()); // e_shstrndx
    out
}
