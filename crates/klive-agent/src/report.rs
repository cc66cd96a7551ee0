//! What `klive status`, `klive list` and `klive uname` show, as data and as text.

use std::fmt::Write as _;

use klive_format::PatchLevel;
use klive_format::status::{
    AgentStatus, AppliedLevel, CachedModule, LoadedPatch, ModuleList, PatchState, UnameReport,
};
use klive_kernel::{Kernel, identity, livepatch, module};

use crate::AgentError;
use crate::store::Store;

/// The documented effective release: `uname -r` plus `+klive.<level>`, e.g.
/// `6.1.0-56-amd64+klive.2`. Without a klive patch it is the plain release.
pub fn effective_release(release: &str, level: Option<PatchLevel>) -> String {
    match level {
        Some(l) => format!("{release}+klive.{l}"),
        None => release.to_owned(),
    }
}

/// Reads the kernel and the local state. Never changes either.
pub fn status<K: Kernel>(kernel: &K, store: &Store) -> Result<AgentStatus, AgentError> {
    let root = kernel.root();
    let info = identity::kernel_info(root)?;
    let support = identity::support(root)?;
    let patches = livepatch::patches(root)?;
    let taint = identity::taint(root)?;
    let state = store.load_state()?;
    let klive = patches.iter().find(|p| p.is_klive()).map(|p| {
        let recorded = state.last_good.as_ref().filter(|g| g.module == p.name);
        AppliedLevel {
            level: p
                .level()
                .or(recorded.map(|g| g.level))
                .unwrap_or(PatchLevel::new(1).expect("1 is a valid level")),
            module: p.name.clone(),
            state: p.state(),
            fixes: recorded.map(|g| g.fixes.clone()).unwrap_or_default(),
        }
    });
    let pending = store.load_intent()?;
    let summary = if !support.livepatch {
        format!(
            "this kernel cannot be live patched: {}",
            support.reasons.join("; ")
        )
    } else if let Some(held) = state.held_back.as_ref().filter(|_| klive.is_none()) {
        format!(
            "no klive patch is loaded: level {} is held back by the crash-loop guard ({}); apply a fixed level, or this one by hand (klive apply FILE.ko)",
            held.level, held.reason
        )
    } else if let Some(intent) = &pending {
        format!(
            "an operation was interrupted ({}); the next klive command as root reconciles it",
            intent.operation.describe()
        )
    } else {
        match &klive {
            Some(k) if k.state == PatchState::Applied => {
                format!("klive level {} is applied and healthy", k.level)
            }
            Some(k) => format!(
                "klive patch {} is in state {:?}: a transition is running",
                k.module, k.state
            ),
            None => match &state.last_good {
                Some(g) if Some(&g.build_id) == info.build_id.as_ref() => format!(
                    "no klive patch is loaded; level {} is cached for this kernel: run `klive boot` to restore it",
                    g.level
                ),
                _ => "no klive patch is applied".to_owned(),
            },
        }
    };
    Ok(AgentStatus {
        effective_release: effective_release(
            &info.release,
            klive
                .as_ref()
                .filter(|k| k.state == PatchState::Applied)
                .map(|k| k.level),
        ),
        kernel: info,
        support,
        klive,
        patches: patches.iter().map(livepatch::Patch::to_report).collect(),
        taint,
        last_interrupted: state.last_interrupted,
        boot_probation: state.boot_probation,
        held_back: state.held_back,
        summary,
    })
}

pub fn render_status(s: &AgentStatus) -> String {
    let mut o = String::new();
    let k = &s.kernel;
    let _ = writeln!(
        o,
        "kernel:        {}{} {}",
        k.release,
        k.package_version
            .as_ref()
            .map(|v| format!(" ({v})"))
            .unwrap_or_default(),
        k.arch
    );
    let _ = writeln!(
        o,
        "build-id:      {}",
        k.build_id.as_ref().map_or("unknown", |b| b.as_str())
    );
    if let Some(d) = &k.distro {
        let _ = writeln!(o, "distro:        {d}");
    }
    let _ = writeln!(
        o,
        "livepatch:     {}",
        if s.support.livepatch {
            "supported"
        } else {
            "NOT supported"
        }
    );
    let _ = writeln!(
        o,
        "lockdown:      {}; {}",
        s.support.lockdown.as_deref().unwrap_or("not available"),
        if s.support.module_sig_enforce {
            "only signed modules load"
        } else {
            "unsigned modules load"
        }
    );
    match &s.klive {
        Some(a) => {
            let _ = writeln!(
                o,
                "klive level:   {} ({}, {})",
                a.level,
                a.module,
                state_word(a.state)
            );
            if !a.fixes.is_empty() {
                let _ = writeln!(o, "fixes:         {}", a.fixes.join(", "));
            }
        }
        None => {
            let _ = writeln!(o, "klive level:   none");
        }
    }
    let _ = writeln!(o, "effective:     {}", s.effective_release);
    let letters: String = s.taint.flags.iter().map(|f| f.letter).collect();
    let _ = writeln!(
        o,
        "taint:         {} ({})",
        if letters.is_empty() {
            "none".to_owned()
        } else {
            letters
        },
        s.taint.value
    );
    let others: Vec<&LoadedPatch> = s.patches.iter().filter(|p| !p.klive).collect();
    if !others.is_empty() {
        let names: Vec<String> = others
            .iter()
            .map(|p| format!("{} ({})", p.name, state_word(p.state)))
            .collect();
        let _ = writeln!(o, "other patches: {}", names.join(", "));
    }
    if let Some(p) = &s.boot_probation {
        let _ = writeln!(
            o,
            "boot guard:    level {} loaded at boot is on probation ({} unconfirmed boot(s) in a row)",
            p.level, p.unconfirmed_boots
        );
    }
    if let Some(h) = &s.held_back {
        let _ = writeln!(
            o,
            "boot guard:    level {} HELD BACK since {}: {}",
            h.level, h.since, h.reason
        );
    }
    if let Some(i) = &s.last_interrupted {
        let _ = writeln!(
            o,
            "interrupted:   {} started {}: {}",
            i.operation, i.started_at, i.resolution
        );
    }
    for r in s.support.reasons.iter().filter(|_| !s.support.livepatch) {
        let _ = writeln!(o, "reason:        {r}");
    }
    let _ = writeln!(o, "status:        {}", s.summary);
    o
}

pub fn state_word(s: PatchState) -> &'static str {
    match s {
        PatchState::Applied => "applied",
        PatchState::Patching => "patching",
        PatchState::Unpatching => "unpatching",
        PatchState::Disabled => "disabled",
    }
}

/// `klive list`: every livepatch, klive's and foreign.
/// `klive list`: the kernel's livepatches and the agent's module cache.
pub fn list<K: Kernel>(kernel: &K, store: &Store) -> Result<ModuleList, AgentError> {
    let root = kernel.root();
    let loaded = livepatch::patches(root)?
        .iter()
        .map(livepatch::Patch::to_report)
        .collect();
    let running = identity::kernel_info(root)?.build_id;
    let last_good = store.load_state()?.last_good;
    let cached = store
        .cached_files()?
        .into_iter()
        .map(|(build_id, file, size)| {
            let path = store.cache_dir(&build_id).join(&file);
            let (module, level, problem) = match module::inspect(&path) {
                Ok(info) if info.klive_level.is_some() => (Some(info.name), info.klive_level, None),
                Ok(info) => (
                    Some(info.name),
                    None,
                    Some("not a klive module (no klive_level tag)".to_owned()),
                ),
                Err(e) => (None, None, Some(e.to_string())),
            };
            CachedModule {
                running_kernel: running.as_ref().is_some_and(|b| b.as_str() == build_id),
                last_good: last_good
                    .as_ref()
                    .is_some_and(|g| g.build_id.as_str() == build_id && g.cached_file == file),
                build_id,
                file,
                size,
                module,
                level,
                problem,
            }
        })
        .collect();
    Ok(ModuleList { loaded, cached })
}

pub fn render_list(list: &ModuleList) -> String {
    let mut o = String::new();
    if list.loaded.is_empty() {
        o.push_str("no livepatch modules are loaded\n");
    } else {
        let _ = writeln!(
            o,
            "{:<28} {:<11} {:<6} {:<8} {:<8} FUNCTIONS",
            "NAME", "STATE", "LEVEL", "OWNER", "REPLACE"
        );
    }
    for p in &list.loaded {
        let funcs: Vec<String> = p
            .objects
            .iter()
            .flat_map(|obj| {
                obj.functions
                    .iter()
                    .map(move |f| format!("{}:{f}", obj.name))
            })
            .collect();
        let _ = writeln!(
            o,
            "{:<28} {:<11} {:<6} {:<8} {:<8} {}",
            p.name,
            state_word(p.state),
            level_word(p.level),
            if p.klive { "klive" } else { "foreign" },
            match p.replace {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            funcs.join(" ")
        );
    }
    if list.cached.is_empty() {
        o.push_str("\nthe module cache is empty\n");
        return o;
    }
    let _ = writeln!(
        o,
        "\ncached modules (klive boot restores the one marked last-good):\n{:<14} {:<6} {:<28} {:>9}  NOTE",
        "KERNEL BUILD", "LEVEL", "MODULE", "BYTES"
    );
    for c in &list.cached {
        let mut notes = Vec::new();
        if c.running_kernel {
            notes.push("running kernel".to_owned());
        }
        if c.last_good {
            notes.push("last-good".to_owned());
        }
        if let Some(p) = &c.problem {
            notes.push(format!("{}: {p}", c.file));
        }
        let _ = writeln!(
            o,
            "{:<14} {:<6} {:<28} {:>9}  {}",
            c.build_id.get(..12).unwrap_or(&c.build_id),
            level_word(c.level),
            c.module.as_deref().unwrap_or("?"),
            c.size,
            notes.join(", ")
        );
    }
    o
}

fn level_word(level: Option<PatchLevel>) -> String {
    level.map(|l| l.to_string()).unwrap_or_else(|| "-".into())
}

/// `klive uname`: the effective version in `uname` form.
pub fn uname<K: Kernel>(kernel: &K) -> Result<UnameReport, AgentError> {
    let root = kernel.root();
    let info = identity::kernel_info(root)?;
    let level = livepatch::patches(root)?
        .iter()
        .find(|p| p.is_klive() && p.state() == PatchState::Applied)
        .and_then(livepatch::Patch::level);
    let effective = effective_release(&info.release, level);
    let hostname = root
        .read_optional("/proc/sys/kernel/hostname")?
        .unwrap_or_else(|| "localhost".into());
    let all = format!(
        "Linux {hostname} {effective} {} {} GNU/Linux",
        info.version, info.arch
    );
    Ok(UnameReport {
        release: info.release,
        effective_release: effective,
        level,
        all,
    })
}
