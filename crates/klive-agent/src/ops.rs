//! apply, revert, boot and crash reconciliation.
//!
//! Every operation takes the state-directory lock, first reconciles an operation a previous
//! process left unfinished, writes its intent before touching the kernel and clears it only
//! when the kernel and `state.json` agree again. Invariant: a failed or interrupted operation
//! leaves the kernel at the previous good level.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use klive_format::agent_state::{
    AgentState, BOOT_PROBATION_SECS, BootProbation, GoodLevel, HeldBack, Intent, Interrupted,
    JournalEntry, MAX_UNCONFIRMED_BOOTS, Operation,
};
use klive_format::digest::sha256_hex;
use klive_format::status::KernelInfo;
use klive_format::{BuildId, PatchLevel};
use klive_kernel::livepatch::{self, Patch, StalledTask, TaskPatchState};
use klive_kernel::module::{self, ModuleInfo};
use klive_kernel::{Kernel, KernelError, identity};

use crate::AgentError;
use crate::store::{Lock, Store};

/// Timing knobs of the agent.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a patching transition may take before it is reversed.
    pub transition_timeout: Duration,
    /// How long to wait for the kernel to release a module after its patch was disabled.
    pub unload_timeout: Duration,
    /// How long to wait for another klive command to finish.
    pub lock_wait: Duration,
    /// Sysfs polling period while waiting.
    pub poll: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            transition_timeout: Duration::from_secs(60),
            unload_timeout: Duration::from_secs(30),
            lock_wait: Duration::from_secs(30),
            poll: Duration::from_millis(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied {
        module: String,
        level: PatchLevel,
        replaced: Vec<String>,
        took: Duration,
    },
    AlreadyApplied {
        module: String,
        level: PatchLevel,
    },
}

/// What `klive apply` and `klive update` say about a level they applied.
pub fn applied_message(
    module: &str,
    level: PatchLevel,
    replaced: &[String],
    took: Duration,
) -> String {
    format!(
        "level {level} applied ({module}) in {} ms{}",
        took.as_millis(),
        if replaced.is_empty() {
            String::new()
        } else {
            format!("; replaced and unloaded {}", replaced.join(", "))
        }
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevertOutcome {
    Reverted { modules: Vec<String> },
    NothingApplied,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    Restored(ApplyOutcome),
    NothingToRestore,
    /// `klive.boot=0` on the kernel command line: the escape hatch after a bad patch.
    DisabledOnCommandLine,
    KernelChanged {
        level: PatchLevel,
        was: BuildId,
        now: Option<BuildId>,
    },
}

pub struct Agent<'k, K: Kernel> {
    kernel: &'k K,
    store: Store,
    opts: Options,
    /// The running kernel's identity, read once (it cannot change while the agent runs).
    kernel_info: std::cell::OnceCell<KernelInfo>,
}

impl<K: Kernel> std::fmt::Debug for Agent<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("store", &self.store).finish()
    }
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// What a release's signed metadata says its module is; [`Agent::apply_verified`] refuses
/// any other bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedModule {
    pub sha256: String,
    pub size: u64,
    pub module_name: String,
    pub level: PatchLevel,
    pub build_id: BuildId,
}

impl ExpectedModule {
    fn check(&self, bytes: &[u8], sha: &str, info: &ModuleInfo) -> Result<(), AgentError> {
        if bytes.len() as u64 != self.size || sha != self.sha256 {
            return Err(AgentError::refused(
                format!(
                    "{} is not the verified release: {} bytes with sha256 {sha}, expected {} bytes with sha256 {}",
                    info.path.display(),
                    bytes.len(),
                    self.size,
                    self.sha256
                ),
                "nothing was loaded; the staged download changed on disk: run `klive update` again",
            ));
        }
        if info.name != self.module_name {
            return Err(AgentError::refused(
                format!(
                    "the module is named {} but its signed manifest names {}",
                    info.name, self.module_name
                ),
                "nothing was loaded; the release is inconsistent: report it to its publisher",
            ));
        }
        Ok(())
    }
}

enum Wait {
    Done,
    Gone,
    TimedOut,
}

impl<'k, K: Kernel> Agent<'k, K> {
    pub fn new(kernel: &'k K, state_dir: impl Into<PathBuf>, opts: Options) -> Self {
        Self {
            kernel,
            store: Store::new(state_dir),
            opts,
            kernel_info: std::cell::OnceCell::new(),
        }
    }

    fn kernel_info(&self) -> Result<&KernelInfo, AgentError> {
        if let Some(info) = self.kernel_info.get() {
            return Ok(info);
        }
        let info = identity::kernel_info(self.kernel.root())?;
        Ok(self.kernel_info.get_or_init(|| info))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn kernel(&self) -> &K {
        self.kernel
    }

    /// Takes the lock and reconciles any interrupted operation.
    pub fn begin(&self) -> Result<Lock, AgentError> {
        let lock = self.store.lock(self.opts.lock_wait)?;
        self.reconcile()?;
        Ok(lock)
    }

    fn journal(
        &self,
        operation: &str,
        step: &str,
        detail: impl Into<String>,
    ) -> Result<(), AgentError> {
        Ok(self.store.journal(&JournalEntry {
            at: now(),
            operation: operation.to_owned(),
            step: step.to_owned(),
            detail: detail.into(),
        })?)
    }

    fn boot_id(&self) -> String {
        self.kernel
            .root()
            .read_optional("/proc/sys/kernel/random/boot_id")
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn klive_patches(&self) -> Result<Vec<Patch>, AgentError> {
        Ok(livepatch::patches(self.kernel.root())?
            .into_iter()
            .filter(Patch::is_klive)
            .collect())
    }

    /// klive modules loaded without a live patch (replaced or disabled, not yet unloaded).
    fn idle_klive_modules(&self) -> Result<Vec<String>, AgentError> {
        let root = self.kernel.root();
        Ok(root
            .list_dir("/sys/module")?
            .into_iter()
            .filter(|m| m.starts_with(klive_format::modinfo::MODULE_PREFIX))
            .filter(|m| !root.is_dir(&format!("{}/{m}", livepatch::LIVEPATCH_DIR)))
            .collect())
    }

    fn wait_transition(&self, name: &str, timeout: Duration) -> Result<Wait, AgentError> {
        let start = Instant::now();
        let mut polls: u32 = 0;
        loop {
            match livepatch::in_transition(self.kernel.root(), name) {
                Ok(None) => return Ok(Wait::Gone),
                Ok(Some(false)) => return Ok(Wait::Done),
                Ok(Some(true)) => {}
                // The kernel frees a disabled patch while we read it.
                Err(_)
                    if !self
                        .kernel
                        .root()
                        .is_dir(&format!("{}/{name}", livepatch::LIVEPATCH_DIR)) =>
                {
                    return Ok(Wait::Gone);
                }
                Err(e) => return Err(e.into()),
            }
            if start.elapsed() >= timeout {
                return Ok(Wait::TimedOut);
            }
            // Most transitions end within a few milliseconds of the load: poll finely at
            // first, then at the configured period.
            polls += 1;
            sleep(if polls <= 20 {
                self.opts.poll.min(Duration::from_millis(1))
            } else {
                self.opts.poll
            });
        }
    }

    /// Waits until the kernel has freed a disabled patch's sysfs directory.
    fn wait_gone(&self, name: &str, timeout: Duration) -> Result<bool, AgentError> {
        let start = Instant::now();
        loop {
            match self.wait_transition(name, timeout.saturating_sub(start.elapsed()))? {
                Wait::Gone => return Ok(true),
                Wait::TimedOut => return Ok(false),
                Wait::Done => {
                    if start.elapsed() >= timeout {
                        return Ok(false);
                    }
                    sleep(self.opts.poll);
                }
            }
        }
    }

    /// `delete_module`, retried while the kernel still holds the module (it releases a
    /// replaced or disabled livepatch asynchronously).
    fn unload(&self, name: &str) -> Result<(), AgentError> {
        let start = Instant::now();
        loop {
            match self.kernel.delete_module(name) {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
                Err(e)
                    if matches!(e.errno(), Some(libc::EBUSY | libc::EAGAIN))
                        && start.elapsed() < self.opts.unload_timeout =>
                {
                    sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(AgentError::Kernel {
                        context: format!("unloading module {name}"),
                        hint: "the patch is disabled, so the kernel runs the previous code; \
                               retry `klive revert` later to free the module"
                            .into(),
                        source,
                    });
                }
            }
        }
    }

    fn stalled(&self, target: TaskPatchState) -> Vec<StalledTask> {
        livepatch::stalled_tasks(self.kernel.root(), target).unwrap_or_default()
    }

    fn read_module(
        &self,
        path: &Path,
        source: &Source<'_>,
    ) -> Result<(Vec<u8>, ModuleInfo), AgentError> {
        let bytes = fs::read(path).map_err(|e| match source {
            Source::Boot(good) => AgentError::refused(
                format!(
                    "the cached module for level {} ({}) cannot be read: {e}",
                    good.level,
                    path.display()
                ),
                "nothing was loaded; fetch the release again (klive apply FILE)",
            ),
            _ => AgentError::refused(
                format!("cannot read {}: {e}", path.display()),
                "nothing was loaded; check the path and that you are root",
            ),
        })?;
        let info = module::inspect_bytes(path, &bytes).map_err(|e| {
            AgentError::refused(
                e.to_string(),
                "nothing was loaded; download or rebuild the module",
            )
        })?;
        Ok((bytes, info))
    }

    /// Pre-flight checks that need no change to the kernel.
    fn check_module(&self, info: &ModuleInfo) -> Result<(PatchLevel, BuildId), AgentError> {
        let root = self.kernel.root();
        let shown = info.path.display();
        if !info.livepatch {
            return Err(AgentError::refused(
                format!(
                    "{shown} ({}) is not a livepatch module (no livepatch=Y in its modinfo)",
                    info.name
                ),
                "nothing was loaded; klive only loads livepatch modules, use modprobe for others",
            ));
        }
        let (Some(level), Some(target)) = (info.klive_level, info.klive_build_id.clone()) else {
            return Err(AgentError::refused(
                format!(
                    "{shown} ({}) is not a klive module: it lacks the klive_level and klive_build_id tags",
                    info.name
                ),
                "nothing was loaded; build it with klive-build or add the tags",
            ));
        };
        if !info.name.starts_with(klive_format::modinfo::MODULE_PREFIX) {
            return Err(AgentError::refused(
                format!("module name {} does not start with `klive_`", info.name),
                "nothing was loaded; rebuild the module with a klive_ name",
            ));
        }
        let kernel = self.kernel_info()?;
        if info.vermagic_release() != kernel.release {
            return Err(AgentError::refused(
                format!(
                    "{shown} was built for kernel {} but this host runs {}",
                    info.vermagic_release(),
                    kernel.release
                ),
                "nothing was loaded; use the release made for this kernel",
            ));
        }
        let Some(running) = kernel.build_id.clone() else {
            return Err(AgentError::refused(
                "this kernel exposes no GNU build-id in /sys/kernel/notes, so the module's target cannot be verified",
                "nothing was loaded; klive needs a kernel built with a build-id",
            ));
        };
        if target != running {
            return Err(AgentError::refused(
                format!(
                    "{shown} targets kernel build {} but this host runs build {} (same release {}, different build)",
                    target.short(),
                    running.short(),
                    kernel.release
                ),
                "nothing was loaded; use the release made for this exact kernel build",
            ));
        }
        let support = identity::support(root)?;
        if !support.livepatch {
            return Err(AgentError::Unsupported {
                reasons: support.reasons,
            });
        }
        if support.module_sig_enforce && !info.signed {
            return Err(AgentError::refused(
                format!("{shown} is unsigned and this kernel only loads signed modules"),
                "nothing was loaded; sign the module with a key the kernel trusts",
            ));
        }
        Ok((level, target))
    }

    /// `klive apply FILE.ko`.
    pub fn apply(&self, path: &Path) -> Result<ApplyOutcome, AgentError> {
        let _lock = self.begin()?;
        self.apply_locked(path, Source::ByHand)
    }

    /// Applies a downloaded release whose signed metadata says what the module must be. The
    /// file is read once; those bytes are checked against `expected`, inspected, cached and
    /// loaded from the cache, so the bytes verified are the bytes the kernel gets.
    pub fn apply_verified(
        &self,
        path: &Path,
        expected: &ExpectedModule,
    ) -> Result<ApplyOutcome, AgentError> {
        let _lock = self.begin()?;
        if let Some(held) = self.store.load_state()?.held_back
            && held.sha256 == expected.sha256
        {
            return Err(held_back_error(&held));
        }
        self.apply_locked(path, Source::Verified(expected))
    }

    fn apply_locked(&self, path: &Path, source: Source<'_>) -> Result<ApplyOutcome, AgentError> {
        // The bytes read here are hashed, checked and handed to the kernel: nothing re-reads
        // the file in between.
        let (bytes, info) = self.read_module(path, &source)?;
        let sha = sha256_hex(&bytes);
        match source {
            Source::Verified(e) => e.check(&bytes, &sha, &info)?,
            Source::Boot(good) if sha != good.sha256 => {
                return Err(AgentError::refused(
                    format!(
                        "the cached module {} does not match the digest recorded when it was applied",
                        path.display()
                    ),
                    "nothing was loaded; the cache was changed on disk: fetch the release again",
                ));
            }
            Source::ByHand | Source::Boot(_) => {}
        }
        let expected = match source {
            Source::Verified(e) => Some(e),
            _ => None,
        };
        let (level, build_id) = self.check_module(&info)?;
        if let Some(e) = expected
            && (level != e.level || build_id != e.build_id)
        {
            return Err(AgentError::refused(
                format!(
                    "{} says level {level} for build {} but its signed manifest says level {} for build {}",
                    info.name,
                    build_id.short(),
                    e.level,
                    e.build_id.short()
                ),
                "nothing was loaded; the release is inconsistent: report it to its publisher",
            ));
        }
        let patches = livepatch::patches(self.kernel.root())?;
        if let Some(busy) = patches.iter().find(|p| p.transition) {
            return Err(AgentError::refused(
                format!(
                    "the livepatch {} is in transition; the kernel allows one transition at a time",
                    busy.name
                ),
                "nothing was loaded; wait for it to finish (klive status) and retry",
            ));
        }
        if let Some(foreign) = patches.iter().find(|p| !p.is_klive() && p.enabled) {
            return Err(AgentError::refused(
                format!(
                    "a livepatch that klive did not install ({}) is enabled; klive's atomic replace would remove it",
                    foreign.name
                ),
                "nothing was loaded; disable it first (echo 0 > /sys/kernel/livepatch/NAME/enabled) if that is intended",
            ));
        }
        if patches.iter().any(|p| p.name == info.name && p.enabled) {
            return Ok(ApplyOutcome::AlreadyApplied {
                module: info.name,
                level,
            });
        }
        // A module of the same name loaded without a live patch: an earlier level that was
        // replaced or disabled but never unloaded. The kernel would refuse the load (EEXIST).
        let root = self.kernel.root();
        if root.is_dir(&format!("/sys/module/{}", info.name))
            && !root.is_dir(&format!("{}/{}", livepatch::LIVEPATCH_DIR, info.name))
        {
            self.unload(&info.name)?;
        }
        let cached_file = format!("{}-{}.ko", info.name, &sha[..16]);
        let cached = self
            .store
            .cache_module(build_id.as_str(), &cached_file, &bytes)?;
        let previous = patches
            .iter()
            .find(|p| p.is_klive())
            .map(|p| p.name.clone());
        let operation = Operation::Apply {
            module: info.name.clone(),
            level,
            cached_file: cached_file.clone(),
            sha256: sha.clone(),
            fixes: info.klive_fixes.clone(),
        };
        let op = operation.describe();
        self.store.save_intent(&Intent {
            operation,
            started_at: now(),
            pid: std::process::id(),
            boot_id: self.boot_id(),
            previous: previous.clone(),
        })?;
        self.journal(&op, "begin", format!("sha256 {sha}"))?;
        let start = Instant::now();
        if let Err(source) = self.kernel.load_module(&bytes, &cached) {
            self.store.clear_intent()?;
            self.journal(&op, "failed", source.to_string())?;
            return Err(load_error(&info, source));
        }
        self.journal(&op, "loaded", "")?;
        match self.wait_transition(&info.name, self.opts.transition_timeout)? {
            Wait::Done => {}
            Wait::Gone => {
                self.unload(&info.name)?;
                self.store.clear_intent()?;
                self.journal(&op, "failed", "the patch disappeared during its transition")?;
                return Err(AgentError::Other(format!(
                    "the kernel dropped livepatch {} during its transition; it is unloaded and the previous level is active; see dmesg",
                    info.name
                )));
            }
            Wait::TimedOut => {
                let tasks = self.stalled(TaskPatchState::Patched);
                return Err(self.reverse_apply(&op, &info.name, tasks, previous.as_deref()));
            }
        }
        let took = start.elapsed();
        self.finish_apply(
            &op,
            &info.name,
            level,
            &build_id,
            &cached_file,
            &sha,
            &info.klive_fixes,
            matches!(source, Source::ByHand),
        )
        .map(|replaced| ApplyOutcome::Applied {
            module: info.name.clone(),
            level,
            replaced,
            took,
        })
    }

    /// After a completed patching transition: unload what it replaced, record the new level.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, all parts of the applied release"
    )]
    fn finish_apply(
        &self,
        op: &str,
        name: &str,
        level: PatchLevel,
        build_id: &BuildId,
        cached_file: &str,
        sha: &str,
        fixes: &[String],
        by_hand: bool,
    ) -> Result<Vec<String>, AgentError> {
        // A module built without `replace = true` stacks on the previous level instead of
        // replacing it: klive runs one patch at a time, so take it out again.
        let stacked: Vec<String> = self
            .klive_patches()?
            .into_iter()
            .filter(|p| p.name != name)
            .map(|p| p.name)
            .collect();
        if !stacked.is_empty() {
            self.kernel
                .set_enabled(name, false)
                .map_err(|source| AgentError::Kernel {
                    context: format!(
                        "disabling {name}, which did not replace {}",
                        stacked.join(", ")
                    ),
                    hint: "run `klive revert` and report the module to its builder".into(),
                    source,
                })?;
            self.wait_gone(name, self.opts.transition_timeout)?;
            self.unload(name)?;
            self.store.clear_intent()?;
            self.journal(op, "failed", "module is not built with replace=true")?;
            return Err(AgentError::refused(
                format!(
                    "{name} is not built with `replace = true` and would stack on {}",
                    stacked.join(", ")
                ),
                "it was taken out again; the previous level is active; rebuild it as a cumulative replace patch",
            ));
        }
        let replaced = self.idle_klive_modules()?;
        for m in &replaced {
            self.unload(m)?;
        }
        let release = self.kernel_info()?.release.clone();
        let mut state = self.store.load_state()?;
        state.last_good = Some(GoodLevel {
            build_id: build_id.clone(),
            kernel_release: release,
            level,
            module: name.to_owned(),
            cached_file: cached_file.to_owned(),
            sha256: sha.to_owned(),
            fixes: fixes.to_vec(),
            applied_at: now(),
        });
        // Applying by hand is the administrator's decision that overrides the crash-loop guard.
        if by_hand {
            state.held_back = None;
        }
        self.store.save_state(&state)?;
        self.store.clear_intent()?;
        self.journal(op, "done", format!("replaced [{}]", replaced.join(", ")))?;
        Ok(replaced)
    }

    /// The patching transition stalled: reverse it and unload the module.
    fn reverse_apply(
        &self,
        op: &str,
        name: &str,
        tasks: Vec<StalledTask>,
        previous: Option<&str>,
    ) -> AgentError {
        let waited = self.opts.transition_timeout;
        let result = (|| -> Result<bool, AgentError> {
            self.journal(
                op,
                "stalled",
                format!("{} task(s) stalled; reversing", tasks.len()),
            )?;
            self.kernel.set_enabled(name, false).map_err(|source| AgentError::Kernel {
                context: format!("reversing the transition of {name}"),
                hint: "the transition is still running; run `klive status` and retry `klive revert`".into(),
                source,
            })?;
            if !self.wait_gone(
                name,
                self.opts.transition_timeout + self.opts.unload_timeout,
            )? {
                return Ok(false);
            }
            self.unload(name)?;
            self.store.clear_intent()?;
            self.journal(op, "reversed", "")?;
            Ok(true)
        })();
        let back_to = match previous {
            Some(p) => format!("the previous patch {p} is still active"),
            None => "the kernel runs its original code".into(),
        };
        let outcome = match result {
            Ok(true) => format!(
                "the transition was reversed and the module unloaded: {back_to}, nothing changed. \
                 Retry when the listed tasks are idle, or raise --timeout"
            ),
            Ok(false) => "the reversal is still running in the kernel; the next klive command finishes the cleanup \
                 (run `klive status`)"
                .into(),
            Err(e) => format!("reversing failed: {e}"),
        };
        AgentError::Stalled {
            module: name.to_owned(),
            waited,
            tasks,
            outcome,
        }
    }

    /// `klive revert`: back to the unpatched kernel code.
    pub fn revert(&self) -> Result<RevertOutcome, AgentError> {
        let _lock = self.begin()?;
        self.revert_locked()
    }

    fn revert_locked(&self) -> Result<RevertOutcome, AgentError> {
        let patches = self.klive_patches()?;
        if let Some(busy) = livepatch::patches(self.kernel.root())?
            .iter()
            .find(|p| p.transition)
        {
            return Err(AgentError::refused(
                format!("the livepatch {} is in transition", busy.name),
                "nothing was changed; wait for it to finish (klive status) and retry",
            ));
        }
        let idle = self.idle_klive_modules()?;
        if patches.is_empty() && idle.is_empty() {
            let mut state = self.store.load_state()?;
            if state.last_good.take().is_some() {
                self.store.save_state(&state)?;
            }
            return Ok(RevertOutcome::NothingApplied);
        }
        let op = Operation::Revert.describe();
        self.store.save_intent(&Intent {
            operation: Operation::Revert,
            started_at: now(),
            pid: std::process::id(),
            boot_id: self.boot_id(),
            previous: patches.first().map(|p| p.name.clone()),
        })?;
        self.journal(
            &op,
            "begin",
            patches
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )?;
        let mut modules = Vec::new();
        for p in patches.iter().filter(|p| p.enabled) {
            self.kernel
                .set_enabled(&p.name, false)
                .map_err(|source| AgentError::Kernel {
                    context: format!("disabling {}", p.name),
                    hint: "nothing was changed; check dmesg".into(),
                    source,
                })?;
            if !self.wait_gone(&p.name, self.opts.transition_timeout)? {
                let tasks = self.stalled(TaskPatchState::Unpatched);
                // Undo the revert: the kernel stays on the patched code it was running.
                let undone = self.kernel.set_enabled(&p.name, true).is_ok()
                    && matches!(
                        self.wait_transition(&p.name, self.opts.transition_timeout)?,
                        Wait::Done
                    );
                let outcome = if undone {
                    self.store.clear_intent()?;
                    self.journal(&op, "reversed", "")?;
                    format!(
                        "the revert was undone: {} stays applied. Retry when the listed tasks are idle",
                        p.name
                    )
                } else {
                    "undoing the revert is still running in the kernel; run `klive status`".into()
                };
                return Err(AgentError::Stalled {
                    module: p.name.clone(),
                    waited: self.opts.transition_timeout,
                    tasks,
                    outcome,
                });
            }
            modules.push(p.name.clone());
        }
        for m in self.idle_klive_modules()? {
            self.unload(&m)?;
            if !modules.contains(&m) {
                modules.push(m);
            }
        }
        let mut state = self.store.load_state()?;
        state.last_good = None;
        self.store.save_state(&state)?;
        self.store.clear_intent()?;
        self.journal(&op, "done", modules.join(", "))?;
        Ok(RevertOutcome::Reverted { modules })
    }

    /// `klive boot`: re-apply the last good level from the cache when the kernel build matches.
    pub fn boot(&self) -> Result<BootOutcome, AgentError> {
        let _lock = self.begin()?;
        let cmdline = self
            .kernel
            .root()
            .read_optional("/proc/cmdline")?
            .unwrap_or_default();
        if cmdline.split_whitespace().any(|w| w == "klive.boot=0") {
            return Ok(BootOutcome::DisabledOnCommandLine);
        }
        let state = self.store.load_state()?;
        let Some(good) = state.last_good else {
            return Ok(BootOutcome::NothingToRestore);
        };
        let kernel = self.kernel_info()?;
        if kernel.build_id.as_ref() != Some(&good.build_id) {
            return Ok(BootOutcome::KernelChanged {
                level: good.level,
                was: good.build_id,
                now: kernel.build_id.clone(),
            });
        }
        let cached = self
            .store
            .cache_dir(good.build_id.as_str())
            .join(&good.cached_file);
        self.guarded_boot_apply(&good, &cached)
            .map(BootOutcome::Restored)
    }

    /// The crash-loop guard around the boot-time load: the load is recorded durably first;
    /// a boot that ends without confirmation (clean shutdown, or [`BOOT_PROBATION_SECS`] of
    /// uptime) counts against the level, and after [`MAX_UNCONFIRMED_BOOTS`] such boots in
    /// a row it is held back instead of loaded.
    fn guarded_boot_apply(
        &self,
        good: &GoodLevel,
        cached: &Path,
    ) -> Result<ApplyOutcome, AgentError> {
        let mut state = self.store.load_state()?;
        if let Some(held) = &state.held_back
            && held.sha256 == good.sha256
        {
            return Err(held_back_error(held));
        }
        let boot_id = self.boot_id();
        let unconfirmed = match &state.boot_probation {
            // Loaded by an earlier boot that never confirmed it: that boot crashed.
            Some(p) if p.sha256 == good.sha256 && p.boot_id != boot_id => p.unconfirmed_boots,
            // `klive boot` ran again in this boot: not another boot.
            Some(p) if p.sha256 == good.sha256 => p.unconfirmed_boots.saturating_sub(1),
            _ => 0,
        };
        if unconfirmed >= MAX_UNCONFIRMED_BOOTS {
            let reason = format!(
                "the last {unconfirmed} boots loaded level {} at boot and ended without a clean shutdown or {} s of uptime after the load",
                good.level, BOOT_PROBATION_SECS
            );
            let held = HeldBack {
                build_id: good.build_id.clone(),
                level: good.level,
                sha256: good.sha256.clone(),
                since: now(),
                reason: reason.clone(),
            };
            state.held_back = Some(held.clone());
            state.boot_probation = None;
            self.store.save_state(&state)?;
            self.journal("boot", "held-back", reason)?;
            return Err(held_back_error(&held));
        }
        state.boot_probation = Some(BootProbation {
            level: good.level,
            sha256: good.sha256.clone(),
            boot_id,
            loaded_at_uptime: self.uptime_secs(),
            unconfirmed_boots: unconfirmed + 1,
        });
        self.store.save_state(&state)?;
        match self.apply_locked(cached, Source::Boot(good)) {
            Ok(o) => Ok(o),
            Err(e) => {
                // Nothing stayed loaded (refused, or reversed): not a crash.
                let mut state = self.store.load_state()?;
                state.boot_probation = None;
                self.store.save_state(&state)?;
                Err(e)
            }
        }
    }

    /// Ends this boot's probation of the level `klive boot` loaded, when it is due
    /// ([`BOOT_PROBATION_SECS`] of uptime since the load) or at a clean shutdown. Returns
    /// whether a probation ended. Does nothing while another klive command holds the lock.
    pub fn confirm_boot(&self, clean_shutdown: bool) -> Result<bool, AgentError> {
        let _lock = match self.store.lock(Duration::ZERO) {
            Ok(l) => l,
            Err(crate::store::StoreError::Busy { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut state = self.store.load_state()?;
        let Some(p) = &state.boot_probation else {
            return Ok(false);
        };
        // An earlier boot's probation is judged by the next `klive boot`.
        if p.boot_id != self.boot_id() {
            return Ok(false);
        }
        if !clean_shutdown && self.uptime_secs() < p.loaded_at_uptime + BOOT_PROBATION_SECS {
            return Ok(false);
        }
        let detail = format!(
            "level {} loaded at boot is confirmed ({})",
            p.level,
            if clean_shutdown {
                "clean shutdown"
            } else {
                "uptime"
            }
        );
        state.boot_probation = None;
        self.store.save_state(&state)?;
        self.journal("boot", "confirmed", detail)?;
        Ok(true)
    }

    fn uptime_secs(&self) -> u64 {
        uptime_secs_of(
            self.kernel
                .root()
                .read_optional("/proc/uptime")
                .ok()
                .flatten(),
        )
    }

    /// Finishes or rolls back an operation a previous process left unfinished. Call with the
    /// lock held. Rule: if the kernel completed the transition, the operation is finished
    /// (roll forward); if the transition is still running, it gets the normal timeout and is
    /// then reversed; if the host rebooted since, there is nothing left in the kernel.
    pub fn reconcile(&self) -> Result<Option<Interrupted>, AgentError> {
        let Some(intent) = self.store.load_intent()? else {
            return Ok(None);
        };
        let op = intent.operation.describe();
        self.journal(
            &op,
            "reconcile",
            format!(
                "interrupted operation started {} by pid {}",
                intent.started_at, intent.pid
            ),
        )?;
        let resolution = if intent.boot_id != self.boot_id() {
            "the host rebooted during the operation; the kernel started without it".to_owned()
        } else {
            match &intent.operation {
                Operation::Apply {
                    module,
                    level,
                    cached_file,
                    sha256,
                    fixes,
                } => self.reconcile_apply(
                    &op,
                    module,
                    *level,
                    cached_file,
                    sha256,
                    fixes,
                    intent.previous.as_deref(),
                )?,
                Operation::Revert => match self.revert_locked() {
                    Ok(_) => "the revert was finished".to_owned(),
                    Err(e) => format!("finishing the revert failed: {e}"),
                },
            }
        };
        self.store.clear_intent()?;
        let interrupted = Interrupted {
            operation: op.clone(),
            started_at: intent.started_at,
            resolution: resolution.clone(),
        };
        let mut state: AgentState = self.store.load_state()?;
        state.last_interrupted = Some(interrupted.clone());
        self.store.save_state(&state)?;
        self.journal(&op, "reconciled", resolution)?;
        Ok(Some(interrupted))
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "mirrors the fields of Operation::Apply"
    )]
    fn reconcile_apply(
        &self,
        op: &str,
        module: &str,
        level: PatchLevel,
        cached_file: &str,
        sha: &str,
        fixes: &[String],
        previous: Option<&str>,
    ) -> Result<String, AgentError> {
        let root = self.kernel.root();
        let build_id = self.kernel_info()?.build_id.clone();
        match livepatch::patch(root, module)? {
            Some(p) if p.enabled => {
                let how = if !p.transition {
                    "the kernel had completed the transition"
                } else if matches!(
                    self.wait_transition(module, self.opts.transition_timeout)?,
                    Wait::Done
                ) {
                    "the transition completed"
                } else {
                    let tasks = self.stalled(TaskPatchState::Patched);
                    let e = self.reverse_apply(op, module, tasks, previous);
                    return Ok(format!("the transition had stalled and was reversed: {e}"));
                };
                let Some(build_id) = build_id else {
                    return Ok(format!(
                        "{how}, but the kernel has no build-id to record level {level} under"
                    ));
                };
                self.finish_apply(op, module, level, &build_id, cached_file, sha, fixes, false)?;
                Ok(format!("{how}: level {level} is applied"))
            }
            Some(_) => {
                self.wait_gone(
                    module,
                    self.opts.transition_timeout + self.opts.unload_timeout,
                )?;
                self.unload(module)?;
                Ok("the patch was being disabled; it is now unloaded and the previous level is active".into())
            }
            None => {
                if root.is_dir(&format!("/sys/module/{module}")) {
                    self.unload(module)?;
                    Ok("the module was loaded without an active patch; it was unloaded".into())
                } else {
                    Ok("the module never reached the kernel; nothing changed".into())
                }
            }
        }
    }
}

/// Turns a failed module load into a message that says what to do.
/// Where a module to apply comes from, and what its bytes must be: an administrator's
/// `klive apply FILE`, a verified release (`klive update`, bundles) that must match its
/// signed metadata, or the cache at boot, which must match the digest recorded when that
/// level was applied.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    ByHand,
    Verified(&'a ExpectedModule),
    Boot(&'a GoodLevel),
}

/// Whole seconds of uptime from the text of `/proc/uptime`; 0 when absent or unreadable.
pub(crate) fn uptime_secs_of(uptime: Option<String>) -> u64 {
    uptime
        .and_then(|u| {
            u.split_whitespace()
                .next()
                .and_then(|s| s.parse::<f64>().ok())
        })
        .map_or(0, |s| s as u64)
}

fn held_back_error(held: &HeldBack) -> AgentError {
    AgentError::refused(
        format!(
            "level {} is held back by the crash-loop guard since {}: {}",
            held.level, held.since, held.reason
        ),
        "klive loads it automatically no more; apply a fixed level, or this one by hand if the crashes had another cause (klive apply FILE.ko, which lifts the hold)",
    )
}

fn load_error(info: &ModuleInfo, source: KernelError) -> AgentError {
    let hint = match source.errno() {
        Some(libc::EEXIST) => "a module with this name is already loaded; run `klive list`",
        Some(libc::ENOEXEC) => {
            "the kernel rejected the module format (vermagic or symbol versions); see dmesg"
        }
        Some(libc::ENOENT) => "the module needs symbols this kernel lacks; see dmesg",
        Some(libc::EKEYREJECTED | libc::EBADMSG) => {
            "the module signature was rejected; sign it with a trusted key"
        }
        Some(libc::EPERM) => {
            "module loading is not permitted (not root, lockdown or modules_disabled)"
        }
        Some(libc::EBUSY) => "another livepatch transition is running; retry when it is over",
        Some(libc::EINVAL) => {
            "the kernel refused the patch (does it patch functions that exist?); see dmesg"
        }
        _ => "see dmesg for the kernel's reason",
    };
    AgentError::Kernel {
        context: format!("loading {} ({})", info.path.display(), info.name),
        hint: format!("nothing was applied; {hint}"),
        source,
    }
}
