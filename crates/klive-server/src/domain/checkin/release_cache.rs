//! The releases a check-in chooses from, per (kernel build, channel), kept in memory so a
//! check-in's decision needs no query. Every change to releases or their channels made
//! through this server (publish, promote, approve, withdraw) bumps the generation after its
//! commit, which drops every entry at once. Another server on the same PostgreSQL cannot
//! bump it, so an entry is also reloaded when it is older than [`MAX_AGE`]: a replica serves a
//! decision at most that stale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::store::checkins::Candidate;

/// The longest a decision may lag a change made through another server. Ages are measured on
/// the service's clock, so simulations and tests move them with it.
pub const MAX_AGE: Duration = Duration::from_secs(1);
const MAX_AGE_MS: i64 = MAX_AGE.as_millis() as i64;

#[derive(Debug)]
struct Entry {
    generation: u64,
    /// When it was read (service clock, unix ms).
    loaded_at: i64,
    candidates: Arc<Vec<Candidate>>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct ReleaseCache {
    generation: Arc<AtomicU64>,
    /// build id → channel → entry.
    entries: Arc<RwLock<HashMap<String, HashMap<String, Entry>>>>,
}

impl ReleaseCache {
    /// The generation to tag a load with: read it BEFORE reading the database, so a change
    /// committed meanwhile leaves the entry already outdated.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Drops every entry; call after committing a change to releases or their channels.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The entry for (`build_id`, `channel`) if nothing changed here since it was read and it
    /// is younger than [`MAX_AGE`] at `now` (unix ms).
    pub fn get(&self, build_id: &str, channel: &str, now: i64) -> Option<Arc<Vec<Candidate>>> {
        let generation = self.generation();
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(build_id)
            .and_then(|by_channel| by_channel.get(channel))
            .filter(|e| {
                e.generation == generation && (e.loaded_at..e.loaded_at + MAX_AGE_MS).contains(&now)
            })
            .map(|e| Arc::clone(&e.candidates))
    }

    pub fn put(
        &self,
        build_id: &str,
        channel: &str,
        generation: u64,
        now: i64,
        candidates: Arc<Vec<Candidate>>,
    ) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 4096 {
            // Many kernel builds: start over rather than grow without bound.
            entries.clear();
        }
        entries.entry(build_id.to_owned()).or_default().insert(
            channel.to_owned(),
            Entry {
                generation,
                loaded_at: now,
                candidates,
            },
        );
    }
}
