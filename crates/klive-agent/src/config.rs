//! The agent's fleet files under `STATE/fleet/`: the registration (server, credential,
//! pinned CA and TUF root, in one 0600 file replaced atomically, so a crash leaves the old
//! registration or the new one, never a mix) and the check-in state (sequence, last answer,
//! last failure). Also where the TUF datastores (`STATE/tuf/<channel>/`) and the download
//! staging area (`STATE/staging/`) live.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use klive_format::api::{FLEET_FORMAT, FleetCheckinState, FleetRegistration};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{Durability, Lock, Store, StoreError, write_atomic, write_atomic_private};

/// Paths and files of the agent's fleet relationship.
#[derive(Debug)]
pub struct FleetFiles {
    store: Store,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A channel name the agent accepts as a directory name (the server's names are like this).
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl FleetFiles {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            store: Store::new(state_dir),
        }
    }

    fn fleet_dir(&self) -> PathBuf {
        self.store.dir().join("fleet")
    }

    fn ensure(&self, dir: &Path) -> Result<(), StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        self.store.ensure_dir()?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("creating", dir))
    }

    /// Serialises fleet commands (check-in sequence, downloads) between processes.
    pub fn lock(&self, wait: Duration) -> Result<Lock, StoreError> {
        self.store.lock_named("fleet.lock", wait)
    }

    pub fn registration(&self) -> Result<Option<FleetRegistration>, StoreError> {
        read_json(&self.fleet_dir().join("registration.json"))
    }

    /// Replaces the registration as a whole and forgets what the old one had verified: a new
    /// root starts new TUF datastores, and the check-in state starts over (the sequence
    /// only ever grows).
    pub fn save_registration(&self, r: &FleetRegistration) -> Result<(), StoreError> {
        let dir = self.fleet_dir();
        self.ensure(&dir)?;
        let path = dir.join("registration.json");
        write_atomic_private(&path, &to_json(&path, r)?, Durability::Durable)?;
        let tuf = self.store.dir().join("tuf");
        match fs::remove_dir_all(&tuf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &tuf)(e)),
        }
        let mut state = self.checkin_state()?;
        state.last_answer = None;
        state.last_checkin_at = None;
        state.last_error = None;
        self.save_checkin_state(&state)
    }

    pub fn checkin_state(&self) -> Result<FleetCheckinState, StoreError> {
        Ok(
            read_json(&self.fleet_dir().join("checkin.json"))?.unwrap_or(FleetCheckinState {
                format: FLEET_FORMAT,
                ..FleetCheckinState::default()
            }),
        )
    }

    pub fn save_checkin_state(&self, s: &FleetCheckinState) -> Result<(), StoreError> {
        let dir = self.fleet_dir();
        self.ensure(&dir)?;
        let path = dir.join("checkin.json");
        write_atomic(&path, &to_json(&path, s)?, Durability::Durable)
    }

    /// The next check-in sequence, `max(now_ms, last + 1)`, persisted before it is used so
    /// that no two check-ins ever carry the same number, even across a clock step back.
    pub fn next_sequence(&self, now_ms: u64) -> Result<u64, StoreError> {
        let mut s = self.checkin_state()?;
        let next = now_ms.max(s.last_sequence.saturating_add(1));
        s.last_sequence = next;
        self.save_checkin_state(&s)?;
        Ok(next)
    }

    /// `STATE/tuf/<name>/`, created: one TUF datastore per channel (each channel's
    /// repository has its own version numbers) and one per bundle source.
    pub fn tuf_datastore(&self, name: &str) -> Result<PathBuf, StoreError> {
        let dir = self.store.dir().join("tuf").join(name);
        self.ensure(&dir)?;
        Ok(dir)
    }

    /// The newest TUF root this host has verified (`STATE/tuf/.root.json`; the leading dot
    /// keeps it apart from the channel datastores), where the next load starts, so that
    /// metadata signed by keys a later root retired is refused. `None` until a newer root
    /// than the pinned one was seen; a new registration removes it with the datastores.
    pub fn trusted_root(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.store.dir().join("tuf").join(".root.json");
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    pub fn save_trusted_root(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = self.store.dir().join("tuf");
        self.ensure(&dir)?;
        write_atomic(&dir.join(".root.json"), bytes, Durability::Durable)
    }

    /// `STATE/staging/`, created: verified downloads wait here until they are applied.
    pub fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self.store.dir().join("staging");
        self.ensure(&dir)?;
        Ok(dir)
    }
}

fn to_json<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_grows_even_when_the_clock_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = FleetFiles::new(dir.path());
        assert_eq!(f.next_sequence(1000).unwrap(), 1000);
        assert_eq!(f.next_sequence(500).unwrap(), 1001);
        assert_eq!(f.next_sequence(5000).unwrap(), 5000);
        assert_eq!(
            FleetFiles::new(dir.path())
                .checkin_state()
                .unwrap()
                .last_sequence,
            5000
        );
    }

    #[test]
    fn registration_is_private_and_resets_tuf_state() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = FleetFiles::new(dir.path());
        let ds = f.tuf_datastore("canary").unwrap();
        fs::write(ds.join("timestamp.json"), "{}").unwrap();
        f.next_sequence(7).unwrap();
        let r = FleetRegistration {
            format: FLEET_FORMAT,
            server: "https://s".into(),
            host_id: "h".into(),
            credential: "klh_secret".into(),
            channel: "canary".into(),
            ca_pem: None,
            tuf_root: "{}".into(),
            tuf_root_sha256: "00".into(),
            registered_at: "now".into(),
        };
        f.save_registration(&r).unwrap();
        assert_eq!(f.registration().unwrap(), Some(r));
        let mode = fs::metadata(dir.path().join("fleet/registration.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            !ds.exists(),
            "an old datastore must not judge a new root's metadata"
        );
        assert_eq!(f.checkin_state().unwrap().last_sequence, 7);
    }

    #[test]
    fn unsafe_channel_names_are_refused() {
        for bad in ["", "..", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        assert!(is_safe_name("canary") && is_safe_name("stable-2"));
    }
}
