//! The agent's state directory: a lock, `state.json`, `intent.json`, `journal.jsonl` and the
//! module cache. Every file is replaced atomically (write a temp file, rename it over), so a
//! crash leaves either the old or the new content, never a mix.
//!
//! Durability is spent only where a power loss could otherwise lose something that matters:
//! - `state.json` and cached modules are fsynced before they are renamed into place (and
//!   their directory after), because `klive boot` relies on them after a reboot;
//! - `intent.json` and the journal are not fsynced: they guard against the agent process
//!   dying, which leaves the page cache intact. After a power loss or kernel crash the kernel
//!   restarts without any patch, so an intent that did not reach the disk loses nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use klive_format::agent_state::{AgentState, Intent, JournalEntry, STATE_FORMAT};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is corrupt ({reason}); move it aside and run `klive status` to rebuild it from the kernel"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("another klive command holds {path} (waited {waited_s} s); wait for it to finish")]
    Busy { path: PathBuf, waited_s: u64 },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Journal files rotate past this size (one previous generation is kept).
const JOURNAL_ROTATE_BYTES: u64 = 1 << 20;

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

/// Held while a command may change the kernel or the state; released on drop (or process death).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the directory (mode 0700) when missing.
    pub fn ensure_dir(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err("creating", &self.dir))
    }

    /// Takes the exclusive lock, waiting up to `wait`.
    pub fn lock(&self, wait: Duration) -> Result<Lock, StoreError> {
        self.lock_named("lock", wait)
    }

    /// Takes the exclusive lock file `name` in the state directory, waiting up to `wait`.
    pub fn lock_named(&self, name: &str, wait: Duration) -> Result<Lock, StoreError> {
        self.ensure_dir()?;
        let path = self.path(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(fs::TryLockError::WouldBlock) if start.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Busy {
                        path,
                        waited_s: wait.as_secs(),
                    });
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err("locking", &path)(e)),
            }
        }
    }

    pub fn load_state(&self) -> Result<AgentState, StoreError> {
        Ok(self.read_json("state.json")?.unwrap_or(AgentState {
            format: STATE_FORMAT,
            ..AgentState::default()
        }))
    }

    pub fn save_state(&self, state: &AgentState) -> Result<(), StoreError> {
        self.write_json("state.json", state, Durability::Durable)
    }

    pub fn load_intent(&self) -> Result<Option<Intent>, StoreError> {
        self.read_json("intent.json")
    }

    pub fn save_intent(&self, intent: &Intent) -> Result<(), StoreError> {
        self.write_json("intent.json", intent, Durability::ProcessCrash)
    }

    pub fn clear_intent(&self) -> Result<(), StoreError> {
        let path = self.path("intent.json");
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Appends one entry to the journal (one `write`, so lines never interleave).
    pub fn journal(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        self.ensure_dir()?;
        let path = self.path("journal.jsonl");
        if fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > JOURNAL_ROTATE_BYTES {
            let old = self.path("journal.jsonl.1");
            fs::rename(&path, &old).map_err(io_err("rotating", &path))?;
        }
        let mut line = serde_json::to_vec(entry).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        f.write_all(&line).map_err(io_err("appending to", &path))
    }

    /// Reads the journal, oldest first. A torn last line (crash while appending) is skipped.
    pub fn read_journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        let mut out = Vec::new();
        for name in ["journal.jsonl.1", "journal.jsonl"] {
            let path = self.path(name);
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("reading", &path)(e)),
            };
            out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
        Ok(out)
    }

    pub fn cache_dir(&self, build_id: &str) -> PathBuf {
        self.dir.join("cache").join(build_id)
    }

    /// Every file in the module cache as (build-id directory, file name, size), sorted.
    pub fn cached_files(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let cache = self.dir.join("cache");
        let builds = match fs::read_dir(&cache) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &cache)(e)),
        };
        let mut out = Vec::new();
        for build in builds {
            let build = build.map_err(io_err("listing", &cache))?;
            if !build.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = build.path();
            for file in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
                let file = file.map_err(io_err("listing", &dir))?;
                let name = file.file_name().to_string_lossy().into_owned();
                // Temp files of an interrupted write are not cached modules.
                if name.starts_with('.') {
                    continue;
                }
                let Ok(meta) = file.metadata() else { continue };
                if meta.is_file() {
                    out.push((
                        build.file_name().to_string_lossy().into_owned(),
                        name,
                        meta.len(),
                    ));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Stores module bytes in the cache under `name` (atomically, durably) and returns the
    /// path. A cached file holding exactly these bytes is left as it is.
    pub fn cache_module(
        &self,
        build_id: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let dir = self.cache_dir(build_id);
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let path = dir.join(name);
        if same_contents(&path, bytes) {
            return Ok(path);
        }
        write_atomic(&path, bytes, Durability::Durable)?;
        Ok(path)
    }

    fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let path = self.path(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    fn write_json<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.ensure_dir()?;
        let path = self.path(name);
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        write_atomic(&path, &bytes, durability)
    }
}

/// Whether the file at `path` holds exactly `bytes` (compared in small chunks: no copy of a
/// whole module in memory).
fn same_contents(path: &Path, bytes: &[u8]) -> bool {
    use std::io::Read;
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    if file.metadata().map(|m| m.len()).ok() != Some(bytes.len() as u64) {
        return false;
    }
    let mut buf = [0u8; 16 * 1024];
    let mut rest = bytes;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return rest.is_empty(),
            Ok(n) if n <= rest.len() && buf[..n] == rest[..n] => rest = &rest[n..],
            Ok(_) => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// What a replaced file must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A power loss: data fsynced before the rename, directory fsynced after.
    Durable,
    /// Only the death of the process: the rename alone is atomic for other processes.
    ProcessCrash,
}

/// Write a temp file, rename it over `path`; with [`Durability::Durable`] fsync the data
/// before the rename and the directory after.
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), StoreError> {
    write_atomic_mode(path, bytes, durability, 0o644)
}

/// [`write_atomic`] for secrets: the file is created with mode 0600, so there is no moment
/// at which another user can read it.
pub fn write_atomic_private(
    path: &Path,
    bytes: &[u8],
    durability: Durability,
) -> Result<(), StoreError> {
    write_atomic_mode(path, bytes, durability, 0o600)
}

fn write_atomic_mode(
    path: &Path,
    bytes: &[u8],
    durability: Durability,
    mode: u32,
) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        f.write_all(bytes).map_err(io_err("writing", &tmp))?;
        if durability == Durability::Durable {
            f.sync_all().map_err(io_err("syncing", &tmp))?;
        }
        fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
        if durability == Durability::Durable {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use klive_format::agent_state::Operation;

    #[test]
    fn state_round_trip_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state"));
        assert_eq!(store.load_state().unwrap().last_good, None);
        let mut s = store.load_state().unwrap();
        s.last_interrupted = None;
        store.save_state(&s).unwrap();
        assert_eq!(store.load_state().unwrap(), s);
        fs::write(
            dir.path().join("state/state.json"),
            b"{\"format\": 1, \"last_go",
        )
        .unwrap();
        let err = store.load_state().unwrap_err().to_string();
        assert!(
            err.contains("corrupt") && err.contains("move it aside"),
            "{err}"
        );
    }

    #[test]
    fn a_cached_module_is_rewritten_unless_it_holds_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        // Larger than the comparison buffer, so several chunks are compared.
        let bytes: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let path = store.cache_module("b1", "m.ko", &bytes).unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert!(same_contents(&path, &bytes));
        // A flipped byte in the last chunk, a truncated copy, a longer copy: all rewritten.
        let mut flipped = bytes.clone();
        flipped[39_999] ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert!(!same_contents(&path, &bytes));
        store.cache_module("b1", "m.ko", &bytes).unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes);
        fs::write(&path, &bytes[..20_000]).unwrap();
        assert!(!same_contents(&path, &bytes));
        let mut longer = bytes.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        assert!(!same_contents(&path, &bytes));
        store.cache_module("b1", "m.ko", &bytes).unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert!(!same_contents(&dir.path().join("missing"), &bytes));
    }

    #[test]
    fn intent_is_written_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let intent = Intent {
            operation: Operation::Revert,
            started_at: "now".into(),
            pid: 1,
            boot_id: "b".into(),
            previous: None,
        };
        store.save_intent(&intent).unwrap();
        assert_eq!(store.load_intent().unwrap(), Some(intent));
        store.clear_intent().unwrap();
        assert_eq!(store.load_intent().unwrap(), None);
        store.clear_intent().unwrap();
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn torn_journal_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let e = JournalEntry {
            at: "t".into(),
            operation: "apply".into(),
            step: "begin".into(),
            detail: String::new(),
        };
        store.journal(&e).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.jsonl"))
            .unwrap();
        f.write_all(b"{\"at\":\"t\",\"oper").unwrap();
        assert_eq!(store.read_journal().unwrap(), vec![e]);
    }

    #[test]
    fn second_lock_waits_then_reports_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let _held = store.lock(Duration::ZERO).unwrap();
        let err = store.lock(Duration::from_millis(120)).unwrap_err();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
    }
}
