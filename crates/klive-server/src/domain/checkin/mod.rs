//! The check-in path: check-ins written in group-committed transactions, and the cached
//! release choices they are answered from.

pub(crate) mod group_commit;
pub(crate) mod release_cache;

use super::*;

/// How far ahead of the server's clock a check-in's sequence may be: a day.
const MAX_SEQUENCE_AHEAD_MS: i64 = 86_400_000;

domain_service! {
    /// Check-ins: what changed on a host, what it should run next, written by the group-committed writer.
    CheckIns
}

impl CheckIns<'_> {
    /// Records what the host reports and answers the level it should run.
    pub async fn checkin(self, host: &AuthHost, c: &CheckIn) -> Result<CheckInResponse, Error> {
        let seq = i64::try_from(c.sequence)
            .map_err(|_| Error::BadRequest("sequence is larger than 2^63-1".into()))?;
        if c.boot_id.len() > 128 || c.agent_version.len() > 128 {
            return Err(Error::BadRequest(
                "boot_id and agent_version are at most 128 bytes".into(),
            ));
        }
        check_host_text(&c.kernel, &c.agent_version)?;
        klive_format::text::check("boot_id", &c.boot_id, 128)
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        // Sequences are the agent's clock in milliseconds. One far ahead of this clock would
        // turn every later honest check-in into a replay until the host registers again.
        let ahead = seq.saturating_sub(self.0.now());
        if ahead > MAX_SEQUENCE_AHEAD_MS {
            return Err(Error::BadRequest(format!(
                "sequence {seq} is {} hours ahead of the server's clock (at most {} allowed); the sequence is the host's clock in milliseconds: set the host's clock right",
                ahead / 3_600_000,
                MAX_SEQUENCE_AHEAD_MS / 3_600_000
            )));
        }
        if seq <= host.last_sequence {
            return Err(Error::Replay {
                got: c.sequence,
                last: host.last_sequence.max(0) as u64,
            });
        }
        let build_id = c.kernel.build_id.as_ref().map(|b| b.to_string());
        let level = c.applied.as_ref().map(|a| i64::from(a.level.get()));
        let state = c.applied.as_ref().map(|a| state_name(a.state));
        let last_error = c.last_error.as_deref().map(|e| truncate(e, 2000));
        let taint = c.taint.and_then(|t| i64::try_from(t).ok());
        let events = host_events(
            host,
            c,
            build_id.as_deref(),
            level,
            state,
            last_error.as_deref(),
        );

        let uptime_secs = i64::try_from(c.uptime_secs).unwrap_or(i64::MAX);
        let steady = events.is_empty()
            && host.kernel_release.as_deref() == Some(c.kernel.release.as_str())
            && host.build_id == build_id
            && host.applied_level == level
            && host.applied_state.as_deref() == state
            && host.boot_id.as_deref() == Some(c.boot_id.as_str())
            && host.agent_version.as_deref() == Some(c.agent_version.as_str())
            && host.last_error == last_error
            && host.taint == taint;
        let history = (!events.is_empty()).then(|| {
            let kinds: Vec<&str> = events
                .iter()
                .map(|(action, _)| action.trim_start_matches("host."))
                .collect();
            crate::store::history::HostState::reported(
                &host.id,
                seq,
                0,
                &kinds,
                &c.kernel,
                level.zip(state),
                Some(&c.boot_id),
                i64::try_from(c.uptime_secs).ok(),
                taint,
                last_error.as_deref(),
            )
        });
        // A host whose taint or error flips at every check-in must not flood the audit log:
        // one record per host and kind a minute, with the number of changes it stands for.
        let now = self.clock.now_ms();
        let events = events
            .into_iter()
            .filter_map(|(action, mut detail)| {
                if !matches!(action, "host.taint" | "host.update_failed") {
                    return Some((action, detail));
                }
                let changes = self
                    .host_noise
                    .note(&format!("{}/{action}", host.id), now)?;
                detail["changes"] = serde_json::json!(changes);
                Some((action, detail))
            })
            .collect();
        let write = crate::domain::checkin::group_commit::Write {
            host_id: host.id.clone(),
            sequence: seq,
            seen_sequence: host.last_sequence,
            previous_checkin: host.last_checkin_at,
            steady,
            kernel_release: c.kernel.release.clone(),
            build_id,
            applied_level: level,
            applied_state: state,
            boot_id: c.boot_id.clone(),
            uptime_secs,
            agent_version: c.agent_version.clone(),
            last_error,
            taint,
            history,
            events,
        };
        // Answered once the batch holding this check-in committed.
        let now = self.checkins.write(&self.db, &self.clock, write).await?;
        self.decide(host, c.kernel.build_id.as_ref(), c.applied.as_ref(), now)
            .await
    }

    async fn decide(
        self,
        host: &AuthHost,
        build_id: Option<&BuildId>,
        applied: Option<&AppliedReport>,
        now: i64,
    ) -> Result<CheckInResponse, Error> {
        let mut response = CheckInResponse {
            host_id: host.id.clone(),
            channel: host.channel.clone(),
            action: Action::None,
            target: None,
            reason: String::new(),
            next_checkin_secs: self.checkin_interval_secs,
        };
        let Some(build_id) = build_id else {
            response.reason = "the kernel reports no build-id, so no release can match it".into();
            if applied.is_some() {
                response.action = Action::Revert;
            }
            return Ok(response);
        };
        let eligible_since = now - host.update_delay_secs * 1000;
        let pin = host.pinned_level.unwrap_or(i64::MAX);
        let candidates = self.candidates(build_id, &host.channel).await?;
        // Newest first: the newest level that has soaked long enough and is not above the pin.
        let row = candidates
            .iter()
            .find(|r| r.since <= eligible_since && r.level <= pin);
        match row {
            None => {
                response.reason = format!(
                    "no release for kernel build {} is allowed in channel {}",
                    build_id.short(),
                    host.channel
                );
                if applied.is_some() {
                    response.action = Action::Revert;
                    response.reason.push_str("; unload the klive patch");
                }
            }
            Some(row) => {
                let level = level_from_db(row.level)?;
                let target = TargetRelease {
                    build_id: build_id.clone(),
                    level,
                    module_name: row.module_name.clone(),
                    sha256: row.sha256.clone(),
                    size: row.size.max(0) as u64,
                    manifest_path: format!("/api/v1/host/releases/{build_id}/{level}/manifest"),
                    module_path: format!("/api/v1/host/releases/{build_id}/{level}/module"),
                };
                let running = applied.is_some_and(|a| {
                    a.level == level
                        && matches!(a.state, PatchState::Applied | PatchState::Patching)
                });
                response.action = if running { Action::None } else { Action::Apply };
                response.reason = if running {
                    format!("level {level} is the newest allowed level and is applied")
                } else {
                    format!(
                        "level {level} is the newest level allowed in channel {}",
                        host.channel
                    )
                };
                if let Some(pin) = host.pinned_level {
                    response.reason.push_str(&format!(" (pinned at {pin})"));
                }
                response.target = Some(target);
            }
        }
        Ok(response)
    }

    /// How check-ins were grouped: (write transactions, check-ins they carried) since start.
    pub fn checkin_batches(self) -> (u64, u64) {
        self.checkins.stats()
    }

    /// The releases of `build_id` in `channel` that are not withdrawn, newest first.
    async fn candidates(
        self,
        build_id: &BuildId,
        channel: &str,
    ) -> Result<Arc<Vec<Candidate>>, Error> {
        let now = self.now();
        if let Some(hit) = self.release_cache.get(build_id.as_str(), channel, now) {
            return Ok(hit);
        }
        let generation = self.release_cache.generation();
        let candidates =
            Arc::new(store::checkins::candidates(&self.db, build_id.as_str(), channel).await?);
        self.release_cache.put(
            build_id.as_str(),
            channel,
            generation,
            now,
            Arc::clone(&candidates),
        );
        Ok(candidates)
    }

    pub(in crate::domain) async fn host_release(
        self,
        host: &AuthHost,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<store::releases::HostRelease, Error> {
        store::releases::in_channel(&self.db, &release_id(build_id, level), &host.channel)
            .await?
            // The same answer whether the release does not exist or is not the host's to read.
            .ok_or_else(|| not_found(build_id, level))
    }
}
