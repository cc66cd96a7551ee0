//! The fake kernel over a temp-dir sysfs, for tests that must not need root.
//!
//! It materialises what a real kernel shows after each operation (livepatch directories,
//! `/sys/module/<name>`, the taint bit, per-task `patch_state`), records every call, and can
//! be told to fail a syscall or to stall a transition on a blocked task.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::livepatch::LIVEPATCH_DIR;
use crate::module;
use crate::{Kernel, KernelError, SysRoot};

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// The file named as the source, and the bytes the kernel got.
    Load {
        source: String,
        image: Vec<u8>,
    },
    Delete(String),
    SetEnabled(String, bool),
}

/// How the next patching transition behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionPlan {
    /// Every task switches at once.
    Completes,
    /// The task `pid` sleeps in a patched function and never switches.
    Stalls {
        pid: u32,
        comm: String,
        stack: String,
    },
}

/// How the kernel frees a patch that was disabled or replaced, which removes its
/// `/sys/kernel/livepatch/<name>/` directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreePlan {
    /// In the same call that ends the transition.
    AtOnce,
    /// Later, while whoever waits reads the patch's sysfs files. A disabled patch shows
    /// `transition` 1 until the `done_after`-th read of a file in its directory (or a listing
    /// of it), then 0; a replaced patch shows `enabled` 0 and `transition` 0. The
    /// `gone_after`-th read is where the kernel frees it: that read fails with `errno` —
    /// `ENOENT`: the directory was removed just before; `ENODEV`: sysfs is tearing the
    /// directory down, so it is still listed until the next read of anything or
    /// `delete_module`.
    Deferred {
        done_after: u32,
        gone_after: u32,
        errno: i32,
    },
}

/// Patches being freed under [`FreePlan::Deferred`], shared with the read hook.
#[derive(Debug)]
struct Freeing {
    base: SysRoot,
    plan: FreePlan,
    pending: Vec<Pending>,
}

#[derive(Debug)]
struct Pending {
    name: String,
    reads: u32,
    /// The failing read happened; the directory goes on the next read or unload.
    dying: bool,
}

impl Freeing {
    fn remove(&self, name: &str) {
        let _ = fs::remove_dir_all(self.base.path(&format!("{LIVEPATCH_DIR}/{name}")));
    }

    /// Finishes tearing down the directories whose failing read happened.
    fn reap(&mut self) {
        let dying: Vec<String> = self
            .pending
            .iter()
            .filter(|p| p.dying)
            .map(|p| p.name.clone())
            .collect();
        for name in &dying {
            self.remove(name);
        }
        self.pending.retain(|p| !p.dying);
    }

    /// Called before every read through the fake's `SysRoot`.
    fn on_read(&mut self, rel: &str) -> Option<std::io::Error> {
        self.reap();
        let FreePlan::Deferred {
            done_after,
            gone_after,
            errno,
        } = self.plan
        else {
            return None;
        };
        let i = self.pending.iter().position(|p| {
            let dir = format!("{LIVEPATCH_DIR}/{}", p.name);
            rel == dir || rel.starts_with(&format!("{dir}/"))
        })?;
        self.pending[i].reads += 1;
        let reads = self.pending[i].reads;
        let name = self.pending[i].name.clone();
        if reads == done_after {
            let _ = fs::write(
                self.base
                    .path(&format!("{LIVEPATCH_DIR}/{name}/transition")),
                "0",
            );
        }
        if reads < gone_after {
            return None;
        }
        if errno == libc::ENOENT {
            self.remove(&name);
            self.pending.remove(i);
            return None;
        }
        self.pending[i].dying = true;
        Some(std::io::Error::from_raw_os_error(errno))
    }
}

#[derive(Debug)]
struct Behaviour {
    plan: TransitionPlan,
    fail_load: Option<i32>,
    fail_delete: Vec<(String, i32)>,
}

#[derive(Debug)]
pub struct FakeKernel {
    /// What callers read through: every read passes the [`FreePlan`] hook.
    root: SysRoot,
    /// The fake's own view of its files, without the hook.
    raw: SysRoot,
    freeing: Arc<Mutex<Freeing>>,
    dir: PathBuf,
    behaviour: RefCell<Behaviour>,
    calls: RefCell<Vec<Call>>,
}

/// Identity of the fake kernel.
pub const FAKE_RELEASE: &str = "6.1.0-56-amd64";
pub const FAKE_BUILD_ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
pub const FAKE_VERMAGIC: &str = "6.1.0-56-amd64 SMP preempt mod_unload modversions ";

impl FakeKernel {
    /// A host with livepatch support, no patches and no taint, rooted at `dir`.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let raw = SysRoot::new(dir);
        let freeing = Arc::new(Mutex::new(Freeing {
            base: raw.clone(),
            plan: FreePlan::AtOnce,
            pending: Vec::new(),
        }));
        let hook = Arc::clone(&freeing);
        let k = Self {
            root: raw.clone().with_hook(Arc::new(move |rel: &str| {
                hook.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .on_read(rel)
            })),
            raw,
            freeing,
            dir: dir.to_owned(),
            behaviour: RefCell::new(Behaviour {
                plan: TransitionPlan::Completes,
                fail_load: None,
                fail_delete: Vec::new(),
            }),
            calls: RefCell::new(Vec::new()),
        };
        k.put("/proc/sys/kernel/osrelease", FAKE_RELEASE)?;
        k.put(
            "/proc/sys/kernel/version",
            "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-10-01)",
        )?;
        k.put("/proc/sys/kernel/arch", "x86_64")?;
        k.put("/proc/sys/kernel/tainted", "0")?;
        k.put("/proc/sys/kernel/modules_disabled", "0")?;
        k.put("/proc/cmdline", "console=ttyS0")?;
        k.put(
            "/etc/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        )?;
        k.put("/sys/module/module/parameters/sig_enforce", "N")?;
        k.put(
            "/sys/kernel/security/lockdown",
            "[none] integrity confidentiality",
        )?;
        fs::create_dir_all(k.root.path(LIVEPATCH_DIR))?;
        let mut notes = Vec::new();
        let id = klive_format::digest::unhex(FAKE_BUILD_ID).unwrap_or_default();
        notes.extend(4u32.to_ne_bytes());
        notes.extend((id.len() as u32).to_ne_bytes());
        notes.extend(3u32.to_ne_bytes());
        notes.extend(b"GNU\0");
        notes.extend(&id);
        fs::create_dir_all(k.root.path("/sys/kernel"))?;
        fs::write(k.root.path("/sys/kernel/notes"), notes)?;
        // PID 1, always present, always able to switch.
        k.put("/proc/1/comm", "init")?;
        k.put("/proc/1/task/1/comm", "init")?;
        k.put("/proc/1/task/1/patch_state", "-1")?;
        Ok(k)
    }

    /// Writes a pseudo-file of the fake host.
    pub fn put(&self, rel: &str, content: &str) -> std::io::Result<()> {
        let p = self.raw.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(p, content)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn set_plan(&self, plan: TransitionPlan) {
        self.behaviour.borrow_mut().plan = plan;
    }

    /// How disabled and replaced patches are freed from now on.
    pub fn set_free_plan(&self, plan: FreePlan) {
        self.freeing().plan = plan;
    }

    fn freeing(&self) -> std::sync::MutexGuard<'_, Freeing> {
        self.freeing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kernel frees a disabled or replaced patch: at once, or later under
    /// [`FreePlan::Deferred`].
    fn free_patch(&self, name: &str, disabled: bool) -> std::io::Result<()> {
        let dir = format!("{LIVEPATCH_DIR}/{name}");
        let mut freeing = self.freeing();
        if freeing.plan == FreePlan::AtOnce {
            return fs::remove_dir_all(self.raw.path(&dir));
        }
        self.put(&format!("{dir}/enabled"), "0")?;
        self.put(
            &format!("{dir}/transition"),
            if disabled { "1" } else { "0" },
        )?;
        freeing.pending.retain(|p| p.name != name);
        freeing.pending.push(Pending {
            name: name.to_owned(),
            reads: 0,
            dying: false,
        });
        Ok(())
    }

    /// The next module load fails with `errno`.
    pub fn fail_next_load(&self, errno: i32) {
        self.behaviour.borrow_mut().fail_load = Some(errno);
    }

    /// Every `delete_module(name)` fails with `errno`.
    pub fn fail_delete(&self, name: &str, errno: i32) {
        self.behaviour
            .borrow_mut()
            .fail_delete
            .push((name.to_owned(), errno));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Names of loaded modules (`/sys/module/*` with a `version` or livepatch).
    pub fn loaded_modules(&self) -> Vec<String> {
        self.raw
            .list_dir("/sys/module")
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m != "module")
            .collect()
    }

    fn err(op: &'static str, object: &str, errno: i32) -> KernelError {
        KernelError::Syscall {
            op,
            object: object.to_owned(),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    fn task_dirs(&self) -> Vec<String> {
        let mut out = Vec::new();
        for pid in self.raw.list_dir("/proc").unwrap_or_default() {
            if pid.parse::<u32>().is_err() {
                continue;
            }
            for tid in self
                .root
                .list_dir(&format!("/proc/{pid}/task"))
                .unwrap_or_default()
            {
                out.push(format!("/proc/{pid}/task/{tid}"));
            }
        }
        out
    }

    fn set_all_task_states(&self, state: &str) -> std::io::Result<()> {
        for t in self.task_dirs() {
            self.put(&format!("{t}/patch_state"), state)?;
        }
        Ok(())
    }

    /// What the kernel does when a transition ends: replaced and disabled patches are freed.
    fn finish_transition(&self, name: &str) -> std::io::Result<()> {
        let dir = format!("{LIVEPATCH_DIR}/{name}");
        let enabled = self
            .root
            .read_trimmed(&format!("{dir}/enabled"))
            .unwrap_or_default()
            == "1";
        self.put(&format!("{dir}/transition"), "0")?;
        self.set_all_task_states("-1")?;
        if enabled {
            let replace = self
                .root
                .read_trimmed(&format!("{dir}/replace"))
                .unwrap_or_default()
                == "1";
            if replace {
                for other in self.raw.list_dir(LIVEPATCH_DIR).unwrap_or_default() {
                    if other != name {
                        self.free_patch(&other, false)?;
                    }
                }
            }
            for obj in self.raw.list_dir(&dir).unwrap_or_default() {
                if self.raw.exists(&format!("{dir}/{obj}/patched")) {
                    self.put(&format!("{dir}/{obj}/patched"), "1")?;
                }
            }
        } else {
            self.free_patch(name, true)?;
        }
        Ok(())
    }

    fn io<'a>(op: &'static str, object: &'a str) -> impl Fn(std::io::Error) -> KernelError + 'a {
        move |source| KernelError::Syscall {
            op,
            object: object.to_owned(),
            source,
        }
    }
}

impl Kernel for FakeKernel {
    fn root(&self) -> &SysRoot {
        &self.root
    }

    fn load_module(&self, image: &[u8], source: &Path) -> Result<(), KernelError> {
        let shown = source.display().to_string();
        self.calls.borrow_mut().push(Call::Load {
            source: shown.clone(),
            image: image.to_vec(),
        });
        if let Some(errno) = self.behaviour.borrow_mut().fail_load.take() {
            return Err(Self::err("init_module", &shown, errno));
        }
        let info = module::inspect_bytes(source, image)
            .map_err(|_| Self::err("init_module", &shown, libc::ENOEXEC))?;
        if self.raw.is_dir(&format!("/sys/module/{}", info.name)) {
            return Err(Self::err("init_module", &shown, libc::EEXIST));
        }
        let release = self.raw.read_trimmed("/proc/sys/kernel/osrelease")?;
        if info.vermagic_release() != release {
            return Err(Self::err("init_module", &shown, libc::ENOEXEC));
        }
        let io = Self::io("init_module", &shown);
        let name = info.name.clone();
        self.put(
            &format!("/sys/module/{name}/version"),
            &info.klive_level.map(|l| l.to_string()).unwrap_or_default(),
        )
        .map_err(&io)?;
        let mut taint: u64 = self.raw.read_int("/proc/sys/kernel/tainted")?;
        taint |= 1 << 12 | 1 << 13;
        if !info.livepatch {
            self.put("/proc/sys/kernel/tainted", &taint.to_string())
                .map_err(&io)?;
            return Ok(());
        }
        if self.raw.list_dir(LIVEPATCH_DIR)?.iter().any(|p| {
            self.raw
                .read_trimmed(&format!("{LIVEPATCH_DIR}/{p}/transition"))
                .unwrap_or_default()
                == "1"
        }) {
            fs::remove_dir_all(self.raw.path(&format!("/sys/module/{name}"))).map_err(&io)?;
            return Err(Self::err("init_module", &shown, libc::EBUSY));
        }
        taint |= 1 << 15;
        self.put("/proc/sys/kernel/tainted", &taint.to_string())
            .map_err(&io)?;
        let dir = format!("{LIVEPATCH_DIR}/{name}");
        self.put(&format!("{dir}/enabled"), "1").map_err(&io)?;
        self.put(&format!("{dir}/transition"), "1").map_err(&io)?;
        self.put(&format!("{dir}/replace"), "1").map_err(&io)?;
        self.put(&format!("{dir}/vmlinux/patched"), "0")
            .map_err(&io)?;
        fs::create_dir_all(self.raw.path(&format!("{dir}/vmlinux/cmdline_proc_show,1")))
            .map_err(&io)?;
        let plan = self.behaviour.borrow().plan.clone();
        match plan {
            TransitionPlan::Completes => self.finish_transition(&name).map_err(&io)?,
            TransitionPlan::Stalls { pid, comm, stack } => {
                self.set_all_task_states("1").map_err(&io)?;
                let t = format!("/proc/{pid}/task/{pid}");
                self.put(&format!("/proc/{pid}/comm"), &comm).map_err(&io)?;
                self.put(&format!("{t}/comm"), &comm).map_err(&io)?;
                self.put(&format!("{t}/stack"), &stack).map_err(&io)?;
                self.put(&format!("{t}/patch_state"), "0").map_err(&io)?;
            }
        }
        Ok(())
    }

    fn delete_module(&self, name: &str) -> Result<(), KernelError> {
        self.calls.borrow_mut().push(Call::Delete(name.to_owned()));
        self.freeing().reap();
        if let Some((_, errno)) = self
            .behaviour
            .borrow()
            .fail_delete
            .iter()
            .find(|(n, _)| n == name)
        {
            return Err(Self::err("delete_module", name, *errno));
        }
        if !self.raw.is_dir(&format!("/sys/module/{name}")) {
            return Err(Self::err("delete_module", name, libc::ENOENT));
        }
        if self.raw.is_dir(&format!("{LIVEPATCH_DIR}/{name}")) {
            return Err(Self::err("delete_module", name, libc::EBUSY));
        }
        fs::remove_dir_all(self.raw.path(&format!("/sys/module/{name}")))
            .map_err(Self::io("delete_module", name))
    }

    fn set_enabled(&self, patch: &str, enabled: bool) -> Result<(), KernelError> {
        self.calls
            .borrow_mut()
            .push(Call::SetEnabled(patch.to_owned(), enabled));
        let dir = format!("{LIVEPATCH_DIR}/{patch}");
        let attr = format!("{dir}/enabled");
        // The real attribute refuses a write of its current value with EINVAL.
        let current = self.raw.read_trimmed(&attr)? == "1";
        if current == enabled {
            return Err(Self::err("write enabled", patch, libc::EINVAL));
        }
        self.raw.write(&attr, if enabled { "1" } else { "0" })?;
        // Reversal or unpatching: the fake's tasks switch back at once.
        self.finish_transition(patch)
            .map_err(Self::io("write enabled", patch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::livepatch;

    #[test]
    fn a_patch_freed_while_polled_reads_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let k = FakeKernel::new(dir.path()).unwrap();
        let patch = format!("{LIVEPATCH_DIR}/klive_x");
        k.put(&format!("{patch}/enabled"), "1").unwrap();
        k.put(&format!("{patch}/transition"), "0").unwrap();
        k.set_free_plan(FreePlan::Deferred {
            done_after: 2,
            gone_after: 3,
            errno: libc::ENODEV,
        });
        k.free_patch("klive_x", true).unwrap();
        let root = k.root();
        assert_eq!(
            livepatch::in_transition(root, "klive_x").unwrap(),
            Some(true)
        );
        assert_eq!(
            livepatch::in_transition(root, "klive_x").unwrap(),
            Some(false)
        );
        // ENODEV while sysfs still lists the directory: gone all the same.
        assert_eq!(livepatch::in_transition(root, "klive_x").unwrap(), None);
        assert!(root.is_dir(&patch));
        assert_eq!(livepatch::patch(root, "klive_x").unwrap(), None);
        assert!(!root.is_dir(&patch));
        assert!(livepatch::patches(root).unwrap().is_empty());
    }
}
