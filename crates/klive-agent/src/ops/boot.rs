//! `klive boot`: re-apply the last good level from the cache at boot, behind the crash-loop
//! guard (the load is recorded durably first; a level whose boots keep ending unconfirmed
//! is held back), and `klive boot --confirm`, which ends a boot's probation.

use std::path::Path;
use std::time::Duration;

use klive_format::agent_state::{
    AgentState, BOOT_PROBATION_SECS, BootProbation, GoodLevel, HeldBack, MAX_UNCONFIRMED_BOOTS,
};
use klive_kernel::Kernel;

use super::{Agent, ApplyOutcome, BootOutcome, Source, now};
use crate::AgentError;

pub(super) fn held_back_error(held: &HeldBack) -> AgentError {
    AgentError::refused(
        format!(
            "level {} is held back by the crash-loop guard since {}: {}",
            held.level, held.since, held.reason
        ),
        "klive loads it automatically no more; apply a fixed level, or this one by hand if the crashes had another cause (klive apply FILE.ko, which lifts the hold)",
    )
}

impl<K: Kernel> Agent<'_, K> {
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
            let held = self.hold_back(state, good, unconfirmed)?;
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

    /// Holds `good` back after `unconfirmed` boots in a row that loaded it and ended
    /// unconfirmed, durably and in the journal.
    fn hold_back(
        &self,
        mut state: AgentState,
        good: &GoodLevel,
        unconfirmed: u32,
    ) -> Result<HeldBack, AgentError> {
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
        Ok(held)
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
}
