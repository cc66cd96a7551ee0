//! A typed model of `/sys/kernel/livepatch` and of the per-task `patch_state`.

use klive_format::status::{LoadedPatch, PatchState, PatchedObject};
use klive_format::{PatchLevel, modinfo};

use crate::{SysRoot, SysfsError};

pub const LIVEPATCH_DIR: &str = "/sys/kernel/livepatch";

/// One `/sys/kernel/livepatch/<name>` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub name: String,
    pub enabled: bool,
    pub transition: bool,
    /// `None` on kernels before 5.1 that lack the attribute.
    pub replace: Option<bool>,
    pub objects: Vec<Object>,
    /// `/sys/module/<name>/version`: klive modules carry their level there.
    pub module_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub patched: bool,
    pub functions: Vec<String>,
}

impl Patch {
    pub fn state(&self) -> PatchState {
        match (self.enabled, self.transition) {
            (true, false) => PatchState::Applied,
            (true, true) => PatchState::Patching,
            (false, true) => PatchState::Unpatching,
            (false, false) => PatchState::Disabled,
        }
    }

    pub fn is_klive(&self) -> bool {
        self.name.starts_with(modinfo::MODULE_PREFIX)
    }

    /// The klive level, from the module version.
    pub fn level(&self) -> Option<PatchLevel> {
        if !self.is_klive() {
            return None;
        }
        self.module_version.as_deref()?.parse().ok()
    }

    pub fn to_report(&self) -> LoadedPatch {
        LoadedPatch {
            name: self.name.clone(),
            state: self.state(),
            replace: self.replace,
            klive: self.is_klive(),
            level: self.level(),
            objects: self
                .objects
                .iter()
                .map(|o| PatchedObject {
                    name: o.name.clone(),
                    patched: o.patched,
                    functions: o.functions.clone(),
                })
                .collect(),
        }
    }
}

/// Reads every loaded livepatch. A patch that vanishes while being read (the kernel frees
/// disabled patches asynchronously) is skipped rather than reported as an error.
pub fn patches(root: &SysRoot) -> Result<Vec<Patch>, SysfsError> {
    let mut out = Vec::new();
    for name in root.list_dir(LIVEPATCH_DIR)? {
        match patch(root, &name) {
            Ok(Some(p)) => out.push(p),
            Ok(None) => {}
            Err(e) if !root.is_dir(&format!("{LIVEPATCH_DIR}/{name}")) => drop(e),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Whether the patch `name` is in transition (one sysfs read: what a waiting loop polls);
/// `None` when the patch is gone (freed by the kernel after it was disabled or replaced).
///
/// The kernel removes `/sys/kernel/livepatch/<name>/` when a disabled or replaced patch is
/// freed, so the attribute vanishing (ENOENT, or ENODEV while the directory is being torn
/// down) is the normal end of the transition, not an error.
pub fn in_transition(root: &SysRoot, name: &str) -> Result<Option<bool>, SysfsError> {
    let path = format!("{LIVEPATCH_DIR}/{name}/transition");
    let content = match root.read_trimmed(&path) {
        Ok(c) => c,
        Err(e) if e.is_vanished() => return Ok(None),
        Err(e) => return Err(e),
    };
    match content.as_str() {
        "0" => Ok(Some(false)),
        "1" => Ok(Some(true)),
        _ => Err(SysfsError::Parse {
            path: root.path(&path),
            content,
            expected: "0 or 1",
        }),
    }
}

/// Reads one patch; `None` when it is not loaded, including when its directory or one of
/// its attributes vanishes while being read (the kernel freeing a disabled or replaced patch).
pub fn patch(root: &SysRoot, name: &str) -> Result<Option<Patch>, SysfsError> {
    match read_patch(root, name) {
        Err(e) if e.is_vanished() => Ok(None),
        other => other,
    }
}

fn read_patch(root: &SysRoot, name: &str) -> Result<Option<Patch>, SysfsError> {
    let dir = format!("{LIVEPATCH_DIR}/{name}");
    if !root.is_dir(&dir) {
        return Ok(None);
    }
    let enabled = root.read_bool01(&format!("{dir}/enabled"))?;
    let transition = root.read_bool01(&format!("{dir}/transition"))?;
    let replace = if root.exists(&format!("{dir}/replace")) {
        Some(root.read_bool01(&format!("{dir}/replace"))?)
    } else {
        None
    };
    let mut objects = Vec::new();
    for entry in root.list_dir(&dir)? {
        let obj_dir = format!("{dir}/{entry}");
        if !root.exists(&format!("{obj_dir}/patched")) {
            continue;
        }
        let patched = root.read_bool01(&format!("{obj_dir}/patched"))?;
        let functions = root
            .list_dir(&obj_dir)?
            .into_iter()
            .filter(|f| root.is_dir(&format!("{obj_dir}/{f}")))
            .collect();
        objects.push(Object {
            name: entry,
            patched,
            functions,
        });
    }
    let module_version = root.read_optional(&format!("/sys/module/{name}/version"))?;
    if !root.is_dir(&dir) {
        // Freed while we read it: what was read may be partial.
        return Ok(None);
    }
    Ok(Some(Patch {
        name: name.to_owned(),
        enabled,
        transition,
        replace,
        objects,
        module_version,
    }))
}

/// `/proc/<pid>/patch_state` of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPatchState {
    /// -1: no transition in progress.
    None,
    Unpatched,
    Patched,
}

/// A task that has not yet switched to the transition's target state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StalledTask {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// Kernel stack from `/proc/<pid>/task/<tid>/stack`, when readable (root only).
    pub stack: Option<String>,
}

fn parse_patch_state(s: &str) -> Option<TaskPatchState> {
    match s.trim() {
        "-1" => Some(TaskPatchState::None),
        "0" => Some(TaskPatchState::Unpatched),
        "1" => Some(TaskPatchState::Patched),
        _ => None,
    }
}

/// Tasks whose `patch_state` is not `target`: during a patching transition the target is
/// `Patched`, during an unpatching one `Unpatched`. Tasks that exit while being read are skipped.
pub fn stalled_tasks(
    root: &SysRoot,
    target: TaskPatchState,
) -> Result<Vec<StalledTask>, SysfsError> {
    let mut out = Vec::new();
    for pid in root.list_dir("/proc")? {
        let Ok(pid_n) = pid.parse::<u32>() else {
            continue;
        };
        let Ok(tids) = root.list_dir(&format!("/proc/{pid}/task")) else {
            continue;
        };
        let tids = if tids.is_empty() {
            vec![pid.clone()]
        } else {
            tids
        };
        for tid in tids {
            let Ok(tid_n) = tid.parse::<u32>() else {
                continue;
            };
            let base = if tid == pid && !root.is_dir(&format!("/proc/{pid}/task/{tid}")) {
                format!("/proc/{pid}")
            } else {
                format!("/proc/{pid}/task/{tid}")
            };
            let Ok(Some(state)) = root.read_optional(&format!("{base}/patch_state")) else {
                continue;
            };
            match parse_patch_state(&state) {
                Some(s) if s != target && s != TaskPatchState::None => {}
                _ => continue,
            }
            let comm = root
                .read_optional(&format!("{base}/comm"))
                .ok()
                .flatten()
                .unwrap_or_else(|| "?".to_owned());
            let stack = root
                .read_optional(&format!("{base}/stack"))
                .ok()
                .flatten()
                .filter(|s| !s.is_empty());
            out.push(StalledTask {
                pid: pid_n,
                tid: tid_n,
                comm,
                stack,
            });
        }
    }
    Ok(out)
}
