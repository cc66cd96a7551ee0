//! What `klive status`, `klive list` and `klive uname` show, as data and as text.

use std::fmt::Write as _;

use klive_format::PatchLevel;
use klive_format::status::{AgentStatus, AppliedLevel, LoadedPatch, PatchState, UnameReport};
use klive_kernel::{Kernel, identity, livepatch};

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
pub fn render_list(patches: &[LoadedPatch]) -> String {
    if patches.is_empty() {
        return "no livepatch modules are loaded\n".to_owned();
    }
    let mut o = format!(
        "{:<28} {:<11} {:<6} {:<8} {:<8} FUNCTIONS\n",
        "NAME", "STATE", "LEVEL", "OWNER", "REPLACE"
    );
    for p in patches {
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
            p.level.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            if p.klive { "klive" } else { "foreign" },
            if p.replace { "yes" } else { "no" },
            funcs.join(" ")
        );
    }
    o
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
