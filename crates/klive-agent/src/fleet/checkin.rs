//! Check-ins: `klive check` (one check-in), `klive update` (check in, act on the answer —
//! apply the target release, revert, or nothing — and report the outcome in a second
//! check-in).

use std::sync::Arc;

use klive_format::api::{
    Action, AppliedReport, CheckIn, CheckInResponse, FleetRegistration, FleetReport, TargetRelease,
};
use klive_kernel::{Kernel, identity};

use super::api::{check_channel, post_json};
use super::{Fleet, FleetError, now};
use crate::ops::{ApplyOutcome, RevertOutcome, applied_message, uptime_secs_of};
use crate::transport::Http;

/// The server's answer asks for a change this host has not made.
pub fn update_due(answer: &CheckInResponse, applied: Option<&AppliedReport>) -> bool {
    match answer.action {
        Action::None => false,
        Action::Revert => applied.is_some(),
        Action::Apply => match (&answer.target, applied) {
            (Some(t), Some(a)) => t.level != a.level,
            (Some(_), None) => true,
            (None, _) => false,
        },
    }
}

fn now_ms() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0)
}

/// What an update did: the report's `result` and `message`.
type Done = (String, String);

impl<K: Kernel> Fleet<'_, K> {
    /// One check-in; the answer is recorded as the last one.
    fn checkin(
        &self,
        reg: &FleetRegistration,
        http: &dyn Http,
        last_error: Option<String>,
    ) -> Result<CheckInResponse, FleetError> {
        // A boot that has run this long since `klive boot` loaded its level is no longer
        // suspect (crash-loop guard); best effort, never a reason to skip the check-in.
        let _ = self.agent.confirm_boot(false);
        let root = self.kernel.root();
        let uptime_secs = uptime_secs_of(root.read_optional("/proc/uptime")?);
        let boot_id = root
            .read_optional("/proc/sys/kernel/random/boot_id")?
            .map(|b| b.trim().to_owned())
            .unwrap_or_default();
        let applied = self.applied()?;
        let kernel = identity::kernel_info(root)?;
        let sequence = self.files.next_sequence(now_ms())?;
        let body = serde_json::to_vec(&CheckIn {
            sequence,
            kernel,
            applied,
            uptime_secs,
            boot_id,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            last_error,
            taint: identity::taint(root).ok().map(|t| t.value),
        })
        .map_err(|e| FleetError::Usage(format!("encoding the check-in: {e}")))?;
        let url = format!("{}/api/v1/checkin", reg.server);
        let answer: CheckInResponse =
            post_json(http, &url, Some(&reg.credential), &body, "the check-in")?;
        check_channel(&answer.channel)?;
        let mut state = self.files.checkin_state()?;
        state.last_checkin_at = Some(now());
        state.last_answer = Some(answer.clone());
        self.files.save_checkin_state(&state)?;
        Ok(answer)
    }

    /// `klive check`: one check-in; reports whether the server asks for a change.
    pub fn check(&self) -> Result<(FleetReport, bool), FleetError> {
        let _lock = self.files.lock(self.lock_wait)?;
        let reg = self.registration()?;
        let http = self.connect(&reg)?;
        let last_error = self.files.checkin_state()?.last_error;
        let answer = self.checkin(&reg, &*http, last_error)?;
        let due = answer.action != Action::None;
        let mut r = self.report(
            &reg,
            "check",
            if due {
                "update-available"
            } else {
                "up-to-date"
            },
        );
        r.message = match (&answer.action, &answer.target) {
            (Action::Apply, Some(t)) => format!(
                "update available: level {} ({}); run `klive update`",
                t.level, answer.reason
            ),
            (Action::Revert, _) => format!(
                "the server asks to revert ({}); run `klive update`",
                answer.reason
            ),
            _ => format!("up to date ({})", answer.reason),
        };
        Ok((r, due))
    }

    /// `klive update`: check in, act on the answer, report the outcome in a check-in.
    pub fn update(&self) -> Result<FleetReport, FleetError> {
        let _lock = self.files.lock(self.lock_wait)?;
        let reg = self.registration()?;
        let http = self.connect(&reg)?;
        let last_error = self.files.checkin_state()?.last_error;
        let answer = self.checkin(&reg, &*http, last_error)?;
        let outcome = self.act(&reg, &http, &answer);
        let mut state = self.files.checkin_state()?;
        state.last_error = match &outcome {
            Ok(_) => None,
            // The server is down: it knows that without being told.
            Err(e) if e.is_transient() => state.last_error,
            Err(e) => Some(e.to_string()),
        };
        self.files.save_checkin_state(&state)?;
        if answer.action != Action::None && !outcome.as_ref().is_err_and(FleetError::is_transient) {
            // Tell the server at once what this host runs now. If that fails, the next
            // check-in carries the same facts.
            let _ = self.checkin(&reg, &*http, state.last_error.clone());
        }
        let (result, message) = outcome?;
        let mut r = self.report(&reg, "update", &result);
        r.message = message;
        Ok(r)
    }

    fn act(
        &self,
        reg: &FleetRegistration,
        http: &Arc<dyn Http>,
        answer: &CheckInResponse,
    ) -> Result<Done, FleetError> {
        match answer.action {
            Action::None => Ok((
                "up-to-date".into(),
                format!("up to date ({})", answer.reason),
            )),
            Action::Revert => self.revert_as_asked(&answer.reason),
            Action::Apply => {
                let Some(target) = &answer.target else {
                    return Err(FleetError::refused(
                        "the server asked to apply a release but named none",
                        "report it to the server's operator",
                    ));
                };
                self.apply_target(reg, http, &answer.channel, target)
            }
        }
    }

    fn revert_as_asked(&self, reason: &str) -> Result<Done, FleetError> {
        match self.agent.revert()? {
            RevertOutcome::Reverted { modules } => Ok((
                "reverted".into(),
                format!(
                    "reverted as the server asked ({reason}); unloaded {}",
                    modules.join(", ")
                ),
            )),
            RevertOutcome::NothingApplied => Ok((
                "nothing-applied".into(),
                "no klive patch was loaded; nothing to revert".into(),
            )),
        }
    }

    /// Fetches and applies the release the server named, if it is for the running build.
    fn apply_target(
        &self,
        reg: &FleetRegistration,
        http: &Arc<dyn Http>,
        channel: &str,
        target: &TargetRelease,
    ) -> Result<Done, FleetError> {
        let running = identity::kernel_info(self.kernel.root())?.build_id;
        if running.as_ref() != Some(&target.build_id) {
            return Err(FleetError::refused(
                format!(
                    "the server offered level {} for kernel build {}, but this host runs build {}",
                    target.level,
                    target.build_id.short(),
                    running.as_ref().map_or("unknown", |b| b.short())
                ),
                "a release for another kernel build is never loaded (mix-and-match); report it to the server's operator",
            ));
        }
        let staged = self.fetch(reg, http, channel, target)?;
        match self.apply_staged(&staged)? {
            ApplyOutcome::Applied {
                module,
                level,
                replaced,
                took,
            } => Ok((
                "applied".into(),
                applied_message(&module, level, &replaced, took),
            )),
            ApplyOutcome::AlreadyApplied { module, level } => Ok((
                "already-applied".into(),
                format!("level {level} ({module}) is already applied"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use klive_format::PatchLevel;

    use super::*;

    fn answer(action: Action, level: Option<u32>) -> CheckInResponse {
        CheckInResponse {
            host_id: "h".into(),
            channel: "canary".into(),
            action,
            target: level.map(|l| TargetRelease {
                build_id: "3e0c8f6a1b2c4d5e".parse().unwrap(),
                level: PatchLevel::new(l).unwrap(),
                module_name: format!("klive_l{l}"),
                sha256: "0".repeat(64),
                size: 1,
                manifest_path: String::new(),
                module_path: String::new(),
            }),
            reason: String::new(),
            next_checkin_secs: 3600,
        }
    }

    fn applied(level: u32) -> AppliedReport {
        AppliedReport {
            level: PatchLevel::new(level).unwrap(),
            state: klive_format::status::PatchState::Applied,
        }
    }

    #[test]
    fn update_is_due_only_for_a_change_not_yet_made() {
        assert!(!update_due(
            &answer(Action::None, Some(1)),
            Some(&applied(1))
        ));
        assert!(update_due(
            &answer(Action::Apply, Some(2)),
            Some(&applied(1))
        ));
        assert!(update_due(
            &answer(Action::Apply, Some(1)),
            Some(&applied(2))
        ));
        assert!(update_due(&answer(Action::Apply, Some(1)), None));
        assert!(!update_due(
            &answer(Action::Apply, Some(1)),
            Some(&applied(1))
        ));
        assert!(update_due(&answer(Action::Revert, None), Some(&applied(1))));
        assert!(!update_due(&answer(Action::Revert, None), None));
    }
}
