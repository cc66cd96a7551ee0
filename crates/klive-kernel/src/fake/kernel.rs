//! The fake kernel over a temp-dir sysfs, for tests that must not need root.
//!
//! It materialises what a real kernel shows after each operation (livepatch directories,
//! `/sys/module/<name>`, the taint bit, per-task `patch_state`), records every call, and can
//! be told to fail a syscall or to stall a transition on a blocked task.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};

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

#[derive(Debug)]
struct Behaviour {
    plan: TransitionPlan,
    fail_load: Option<i32>,
    fail_delete: Vec<(String, i32)>,
}

#[derive(Debug)]
pub struct FakeKernel {
    root: SysRoot,
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
        let k = Self {
            root: SysRoot::new(dir),
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
        let p = self.root.path(rel);
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
        self.root
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
        for pid in self.root.list_dir("/proc").unwrap_or_default() {
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
                for other in self.root.list_dir(LIVEPATCH_DIR).unwrap_or_default() {
                    if other != name {
                        fs::remove_dir_all(self.root.path(&format!("{LIVEPATCH_DIR}/{other}")))?;
                    }
                }
            }
            for obj in self.root.list_dir(&dir).unwrap_or_default() {
                if self.root.exists(&format!("{dir}/{obj}/patched")) {
                    self.put(&format!("{dir}/{obj}/patched"), "1")?;
                }
            }
        } else {
            fs::remove_dir_all(self.root.path(&dir))?;
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
        if self.root.is_dir(&format!("/sys/module/{}", info.name)) {
            return Err(Self::err("init_module", &shown, libc::EEXIST));
        }
        let release = self.root.read_trimmed("/proc/sys/kernel/osrelease")?;
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
        let mut taint: u64 = self.root.read_int("/proc/sys/kernel/tainted")?;
        taint |= 1 << 12 | 1 << 13;
        if !info.livepatch {
            self.put("/proc/sys/kernel/tainted", &taint.to_string())
                .map_err(&io)?;
            return Ok(());
        }
        if self.root.list_dir(LIVEPATCH_DIR)?.iter().any(|p| {
            self.root
                .read_trimmed(&format!("{LIVEPATCH_DIR}/{p}/transition"))
                .unwrap_or_default()
                == "1"
        }) {
            fs::remove_dir_all(self.root.path(&format!("/sys/module/{name}"))).map_err(&io)?;
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
        fs::create_dir_all(
            self.root
                .path(&format!("{dir}/vmlinux/cmdline_proc_show,1")),
        )
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
        if let Some((_, errno)) = self
            .behaviour
            .borrow()
            .fail_delete
            .iter()
            .find(|(n, _)| n == name)
        {
            return Err(Self::err("delete_module", name, *errno));
        }
        if !self.root.is_dir(&format!("/sys/module/{name}")) {
            return Err(Self::err("delete_module", name, libc::ENOENT));
        }
        if self.root.is_dir(&format!("{LIVEPATCH_DIR}/{name}")) {
            return Err(Self::err("delete_module", name, libc::EBUSY));
        }
        fs::remove_dir_all(self.root.path(&format!("/sys/module/{name}")))
            .map_err(Self::io("delete_module", name))
    }

    fn set_enabled(&self, patch: &str, enabled: bool) -> Result<(), KernelError> {
        self.calls
            .borrow_mut()
            .push(Call::SetEnabled(patch.to_owned(), enabled));
        let dir = format!("{LIVEPATCH_DIR}/{patch}");
        let attr = format!("{dir}/enabled");
        // The real attribute refuses a write of its current value with EINVAL.
        let current = self.root.read_trimmed(&attr)? == "1";
        if current == enabled {
            return Err(Self::err("write enabled", patch, libc::EINVAL));
        }
        self.root.write(&attr, if enabled { "1" } else { "0" })?;
        // Reversal or unpatching: the fake's tasks switch back at once.
        self.finish_transition(patch)
            .map_err(Self::io("write enabled", patch))
    }
}
