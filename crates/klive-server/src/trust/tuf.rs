//! TUF metadata, one repository per channel, signed with `tough`.
//!
//! `keys init` makes the root keys (meant to be moved offline; `threshold` of them sign the
//! root) and one online key each for targets, snapshot and timestamp, which stay on the server.
//! Every change of what a channel holds (publish, promotion, withdrawal) re-signs that
//! channel's targets, snapshot and timestamp in the same database transaction as the change,
//! so metadata and releases never disagree. Targets are named by [`klive_format::api`]'s
//! `tuf_module_target` / `tuf_manifest_target`; consistent snapshots are on, so a target is
//! fetched as `{sha256}.{name}` and metadata as `{version}.{role}.json`.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use serde_json::{Value, json};
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    Hashes, KeyHolder, Metafile, Role, RoleKeys, RoleType, Root, Signed, Snapshot, Target, Targets,
    Timestamp,
};
use tough::sign::Sign;

use klive_format::api::{tuf_manifest_target, tuf_module_target};

use crate::error::Error;
use crate::store::db::Tx;
use crate::store::tuf::TargetRow;
use crate::trust::secrets::write_secret;
use klive_format::digest::sha256_hex;

const SPEC_VERSION: &str = "1.0.0";
const ONLINE_ROLES: [(&str, RoleType); 3] = [
    ("targets", RoleType::Targets),
    ("snapshot", RoleType::Snapshot),
    ("timestamp", RoleType::Timestamp),
];

/// How long signed metadata stays valid.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub targets_secs: i64,
    pub snapshot_secs: i64,
    /// Short, so that a mirror or attacker cannot keep serving old metadata (freeze attack);
    /// the server re-signs before half of it has passed.
    pub timestamp_secs: i64,
}

impl Default for Lifetimes {
    fn default() -> Lifetimes {
        Lifetimes {
            targets_secs: 30 * 86400,
            snapshot_secs: 30 * 86400,
            timestamp_secs: 86400,
        }
    }
}

/// The server's signing state: the root (public) and the online keys.
#[derive(Debug)]
pub struct Signer {
    /// The root in force.
    root: Signed<Root>,
    /// Root version 1 (the anchor agents pin).
    root_bytes: Vec<u8>,
    version: u64,
    paths: KeyPaths,
    online_keys: Vec<Box<dyn KeySource>>,
    pub lifetimes: Lifetimes,
}

fn tuf_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tuf(format!("{what}: {e}"))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Where `keys init` puts things under the data directory.
#[derive(Debug)]
pub struct KeyPaths {
    pub offline: PathBuf,
    /// The online keys of root version 1; a rotation that replaces them puts the new ones
    /// in `online/v{N}/` for root version N.
    pub online: PathBuf,
    /// Root version 1, the trust anchor agents pin at registration.
    pub root_json: PathBuf,
    /// Every root version as `{N}.root.json`; the highest is the one in force.
    pub roots: PathBuf,
}

impl KeyPaths {
    pub fn new(data: &Path) -> KeyPaths {
        KeyPaths {
            offline: data.join("keys").join("offline"),
            online: data.join("keys").join("online"),
            root_json: data.join("tuf").join("root.json"),
            roots: data.join("tuf").join("roots"),
        }
    }

    fn root_version(&self, version: u64) -> PathBuf {
        self.roots.join(format!("{version}.root.json"))
    }

    /// Versions present in `roots/`, ascending (empty for a data directory made before
    /// root versions were kept, where `root.json` is version 1 and the only one).
    fn versions(&self) -> Result<Vec<u64>, Error> {
        let entries = match std::fs::read_dir(&self.roots) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("listing {}", self.roots.display()))(e)),
        };
        let mut versions: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".root.json")?
                    .parse()
                    .ok()
            })
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The online key directory of root version `version`: the newest `online/v{K}` with
    /// K <= version, else `online/`.
    fn online_for(&self, version: u64) -> PathBuf {
        (2..=version)
            .rev()
            .map(|k| self.online.join(format!("v{k}")))
            .find(|d| d.is_dir())
            .unwrap_or_else(|| self.online.clone())
    }
}

/// What `keys init` made.
#[derive(Debug)]
pub struct Initialised {
    pub root_json: PathBuf,
    pub root_sha256: String,
    pub offline_dir: PathBuf,
    pub root_keys: usize,
    pub threshold: usize,
}

fn new_key(path: &Path) -> Result<Box<dyn Sign>, Error> {
    let rng = SystemRandom::new();
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| tuf_error("generating a key", e))?;
    write_secret(path, pkcs8.as_ref())?;
    let key = tough::sign::parse_keypair(pkcs8.as_ref())
        .map_err(|e| tuf_error("reading a generated key", e))?;
    Ok(Box::new(key))
}

/// Creates `root_keys` root keys (any `threshold` of them can sign a new root), the three
/// online keys, and the signed root. Refuses to overwrite existing keys.
pub async fn init_keys(
    data: &Path,
    root_keys: usize,
    threshold: usize,
    root_expires_days: i64,
) -> Result<Initialised, Error> {
    if root_keys == 0 || threshold == 0 || threshold > root_keys {
        return Err(Error::Config(format!(
            "a threshold of {threshold} out of {root_keys} root keys is not possible; use 1 <= threshold <= keys"
        )));
    }
    let paths = KeyPaths::new(data);
    if paths.root_json.exists() || paths.online.exists() {
        return Err(Error::Config(format!(
            "keys exist already ({}); keys init never overwrites them",
            paths.online.display()
        )));
    }
    for dir in [&paths.offline, &paths.online] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("restricting {}", dir.display())))?;
    }
    let tuf_dir = paths.root_json.parent().unwrap_or(data);
    std::fs::create_dir_all(tuf_dir).map_err(io(format!("creating {}", tuf_dir.display())))?;

    let mut keys = HashMap::new();
    let mut roles = HashMap::new();
    let mut root_sources: Vec<Box<dyn KeySource>> = Vec::new();
    let mut root_ids = Vec::new();
    for i in 1..=root_keys {
        let path = paths.offline.join(format!("root-{i}.pk8"));
        let key = new_key(&path)?.tuf_key();
        let id = key
            .key_id()
            .map_err(|e| tuf_error("computing a key id", e))?;
        root_ids.push(id.clone());
        keys.insert(id, key);
        root_sources.push(Box::new(LocalKeySource { path }));
    }
    roles.insert(
        RoleType::Root,
        RoleKeys {
            keyids: root_ids,
            threshold: NonZeroU64::new(threshold as u64).unwrap_or(NonZeroU64::MIN),
            _extra: HashMap::new(),
        },
    );
    for (name, role) in ONLINE_ROLES {
        let key = new_key(&paths.online.join(format!("{name}.pk8")))?.tuf_key();
        let id = key
            .key_id()
            .map_err(|e| tuf_error("computing a key id", e))?;
        keys.insert(id.clone(), key);
        roles.insert(
            role,
            RoleKeys {
                keyids: vec![id],
                threshold: NonZeroU64::MIN,
                _extra: HashMap::new(),
            },
        );
    }
    let root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: expires_in(root_expires_days * 86400)?,
        keys,
        roles,
        _extra: HashMap::new(),
    };
    let holder = KeyHolder::Root(root.clone());
    let signed = SignedRole::new(root, &holder, &root_sources, &SystemRandom::new())
        .await
        .map_err(|e| tuf_error("signing the root", e))?;
    let bytes = signed.buffer().clone();
    std::fs::write(&paths.root_json, &bytes)
        .map_err(io(format!("writing {}", paths.root_json.display())))?;
    std::fs::create_dir_all(&paths.roots)
        .map_err(io(format!("creating {}", paths.roots.display())))?;
    write_atomic(&paths.root_version(1), &bytes)?;
    Ok(Initialised {
        root_sha256: sha256_hex(&bytes),
        root_json: paths.root_json,
        offline_dir: paths.offline,
        root_keys,
        threshold,
    })
}

/// Writes `bytes` to `path` through a temp file, fsynced and renamed into place, then
/// fsyncs the directory: the file is either absent or whole, also after a power loss.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))
}

/// What `keys rotate` did.
#[derive(Debug)]
pub struct Rotated {
    pub version: u64,
    pub expires: String,
    pub online_keys_replaced: bool,
    pub root_json: PathBuf,
}

/// Signs root version N+1 (N = the version in force) with `root_key_files`, which must hold
/// at least the threshold of root N's keys: a new expiry and, with `new_online_keys`, fresh
/// targets, snapshot and timestamp keys in place of the old ones (after a suspected leak).
/// The root keys themselves stay. Agents walk from the root they pinned to `N+1.root.json`.
///
/// Commit point: `tuf/roots/{N+1}.root.json` appears (atomic rename) only once everything it
/// names exists; an interrupted rotation leaves version N in force and can be run again.
/// Servers load the keys at start: run it with them stopped, then copy `DATA/tuf` and
/// `DATA/keys/online` to every replica and start them.
pub async fn rotate(
    data: &Path,
    root_key_files: &[PathBuf],
    new_online_keys: bool,
    root_expires_days: i64,
) -> Result<Rotated, Error> {
    let Some(current) = Signer::load(data)? else {
        return Err(Error::Config(
            "there are no TUF keys yet; run `klive-server keys init` first".into(),
        ));
    };
    if root_expires_days <= 0 {
        return Err(Error::Config(
            "--root-expires-days must be at least 1".into(),
        ));
    }
    let paths = KeyPaths::new(data);
    let old = current.root.signed.clone();
    let root_role = old
        .roles
        .get(&RoleType::Root)
        .ok_or_else(|| tuf_error("the root in force", "it names no root keys"))?;
    // The given files must be distinct root keys of the version in force, enough of them.
    let mut given = Vec::new();
    let mut sources: Vec<Box<dyn KeySource>> = Vec::new();
    for path in root_key_files {
        let pkcs8 = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
        let id = tough::sign::parse_keypair(&pkcs8)
            .map_err(|e| {
                Error::Config(format!(
                    "{} is not a private key ({e}); give the root-N.pk8 files from keys init",
                    path.display()
                ))
            })?
            .tuf_key()
            .key_id()
            .map_err(|e| tuf_error("computing a key id", e))?;
        if !root_role.keyids.contains(&id) {
            return Err(Error::Config(format!(
                "{} is not a root key of root version {}; give the root-N.pk8 files from keys init",
                path.display(),
                current.version
            )));
        }
        if !given.contains(&id) {
            given.push(id);
            sources.push(Box::new(LocalKeySource { path: path.clone() }));
        }
    }
    if (given.len() as u64) < root_role.threshold.get() {
        return Err(Error::Config(format!(
            "{} distinct root key(s) given; root version {} needs {} of its {} root keys to sign the next root",
            given.len(),
            current.version,
            root_role.threshold,
            root_role.keyids.len()
        )));
    }
    let version = current.version + 1;
    let mut root = old.clone();
    root.version = NonZeroU64::new(version).unwrap_or(NonZeroU64::MIN);
    root.expires = expires_in(root_expires_days * 86400)?;
    if new_online_keys {
        let dir = paths.online.join(format!("v{version}"));
        // Left by an interrupted rotation: version `version` never came into force.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io(format!("creating {}", dir.display())))?;
        }
        for (name, role) in ONLINE_ROLES {
            let key = new_key(&dir.join(format!("{name}.pk8")))?.tuf_key();
            let id = key
                .key_id()
                .map_err(|e| tuf_error("computing a key id", e))?;
            if let Some(keys) = root.roles.get_mut(&role) {
                for old_id in std::mem::replace(&mut keys.keyids, vec![id.clone()]) {
                    root.keys.remove(&old_id);
                }
            }
            root.keys.insert(id, key);
        }
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("syncing {}", dir.display())))?;
    }
    let signed = SignedRole::new(
        root.clone(),
        &KeyHolder::Root(root.clone()),
        &sources,
        &SystemRandom::new(),
    )
    .await
    .map_err(|e| tuf_error("signing the new root", e))?;
    // What a client checks (TUF 5.3.4): the new root is signed by a threshold of the old
    // root's keys and of its own.
    let parsed: Signed<Root> = serde_json::from_slice(signed.buffer())
        .map_err(|e| tuf_error("reading back the new root", e))?;
    for (which, trusted) in [("the old", &old), ("the new", &root)] {
        trusted
            .verify_role(&parsed)
            .map_err(|e| tuf_error(&format!("checking the new root against {which} root"), e))?;
    }
    std::fs::create_dir_all(&paths.roots)
        .map_err(io(format!("creating {}", paths.roots.display())))?;
    // A data directory from before root versions were kept: version 1 joins the chain.
    if current.version == 1 && !paths.root_version(1).exists() {
        write_atomic(&paths.root_version(1), &current.root_bytes)?;
    }
    let out = paths.root_version(version);
    write_atomic(&out, signed.buffer())?;
    Ok(Rotated {
        version,
        expires: root.expires.to_string(),
        online_keys_replaced: new_online_keys,
        root_json: out,
    })
}

fn expires_in(secs: i64) -> Result<jiff::Timestamp, Error> {
    jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .map_err(|e| tuf_error("computing an expiry", e))
}

impl Signer {
    /// The signer of a data directory after `keys init`, or `None` before.
    pub fn load(data: &Path) -> Result<Option<Signer>, Error> {
        let paths = KeyPaths::new(data);
        if !paths.root_json.exists() {
            return Ok(None);
        }
        let anchor = std::fs::read(&paths.root_json)
            .map_err(io(format!("reading {}", paths.root_json.display())))?;
        let (version, current) = match paths.versions()?.last() {
            Some(&v) => {
                let path = paths.root_version(v);
                let bytes =
                    std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
                (v, bytes)
            }
            None => (1, anchor.clone()),
        };
        let root: Signed<Root> = serde_json::from_slice(&current)
            .map_err(|e| tuf_error("parsing the root metadata", e))?;
        if root.signed.version.get() != version {
            return Err(Error::Config(format!(
                "{} says version {}; restore the file from backup",
                paths.root_version(version).display(),
                root.signed.version
            )));
        }
        let online = paths.online_for(version);
        let mut online_keys: Vec<Box<dyn KeySource>> = Vec::new();
        for (name, role) in ONLINE_ROLES {
            let path = online.join(format!("{name}.pk8"));
            let pkcs8 = std::fs::read(&path).map_err(|e| {
                Error::Config(format!(
                    "the online {name} key {} cannot be read ({e}); restore it from backup",
                    path.display()
                ))
            })?;
            let id = tough::sign::parse_keypair(&pkcs8)
                .map_err(|e| tuf_error(&format!("reading {}", path.display()), e))?
                .tuf_key()
                .key_id()
                .map_err(|e| tuf_error("computing a key id", e))?;
            if !root
                .signed
                .roles
                .get(&role)
                .is_some_and(|r| r.keyids.contains(&id))
            {
                return Err(Error::Config(format!(
                    "the online {name} key {} is not the one root version {version} names; restore the keys that belong to it",
                    path.display()
                )));
            }
            online_keys.push(Box::new(LocalKeySource { path }));
        }
        Ok(Some(Signer {
            root,
            root_bytes: anchor,
            version,
            paths,
            online_keys,
            lifetimes: Lifetimes::default(),
        }))
    }

    /// The root version in force.
    pub fn root_version(&self) -> u64 {
        self.version
    }

    /// `{version}.root.json` for 1 <= version <= the version in force (`None` otherwise), so
    /// that agents that pinned an older root walk the chain to the current one.
    pub fn root_metadata(&self, version: u64) -> Result<Option<Vec<u8>>, Error> {
        if version == 0 || version > self.version {
            return Ok(None);
        }
        if version == 1 {
            return Ok(Some(self.root_bytes.clone()));
        }
        let path = self.paths.root_version(version);
        std::fs::read(&path)
            .map(Some)
            .map_err(io(format!("reading {}", path.display())))
    }

    /// The trusted root the agent pins (`1.root.json`).
    pub fn root_bytes(&self) -> &[u8] {
        &self.root_bytes
    }

    async fn sign<T: Role + serde::Serialize>(&self, role: T) -> Result<SignedRole<T>, Error> {
        SignedRole::new(
            role,
            &KeyHolder::Root(self.root.signed.clone()),
            &self.online_keys,
            &SystemRandom::new(),
        )
        .await
        .map_err(|e| tuf_error("signing metadata", e))
    }

    /// Re-signs `channel`'s metadata from what the channel holds now, inside `tx`.
    pub async fn regenerate(&self, tx: &mut Tx, channel: &str, now_ms: i64) -> Result<(), Error> {
        let version = crate::store::tuf::next_version(tx, channel).await?;
        let v = NonZeroU64::new(version.max(1) as u64).unwrap_or(NonZeroU64::MIN);
        let rows = crate::store::tuf::targets(tx, channel).await?;
        let at = |secs: i64| {
            jiff::Timestamp::from_millisecond(now_ms + secs * 1000)
                .map_err(|e| tuf_error("computing an expiry", e))
        };
        let mut targets = Targets::new(SPEC_VERSION.into(), v, at(self.lifetimes.targets_secs)?);
        for row in &rows {
            let TargetRow {
                build_id,
                level,
                module_name,
                sha256,
                size,
                manifest,
            } = row;
            let custom = |kind: &str| -> HashMap<String, Value> {
                [
                    ("kind".to_owned(), json!(kind)),
                    ("build_id".to_owned(), json!(build_id)),
                    ("level".to_owned(), json!(level)),
                    ("module_name".to_owned(), json!(module_name)),
                ]
                .into_iter()
                .collect()
            };
            let module = target(sha256, (*size).max(0) as u64, custom("module"))?;
            let manifest_target = target(
                &sha256_hex(manifest.as_bytes()),
                manifest.len() as u64,
                custom("manifest"),
            )?;
            let level = u32::try_from(*level).unwrap_or(0);
            for (name, t) in [
                (tuf_module_target(build_id, level), module),
                (tuf_manifest_target(build_id, level), manifest_target),
            ] {
                let name =
                    tough::TargetName::new(name).map_err(|e| tuf_error("naming a target", e))?;
                targets.targets.insert(name, t);
            }
        }
        let targets = self.sign(targets).await?;
        let mut snapshot = Snapshot::new(SPEC_VERSION.into(), v, at(self.lifetimes.snapshot_secs)?);
        snapshot
            .meta
            .insert("targets.json".into(), metafile(&targets, v));
        let snapshot = self.sign(snapshot).await?;
        let timestamp_expires = now_ms + self.lifetimes.timestamp_secs * 1000;
        let mut timestamp =
            Timestamp::new(SPEC_VERSION.into(), v, at(self.lifetimes.timestamp_secs)?);
        timestamp
            .meta
            .insert("snapshot.json".into(), metafile(&snapshot, v));
        let timestamp = self.sign(timestamp).await?;

        for (name, body, expires) in [
            (format!("{v}.targets.json"), targets.buffer(), None),
            (format!("{v}.snapshot.json"), snapshot.buffer(), None),
            (
                "timestamp.json".to_owned(),
                timestamp.buffer(),
                Some(timestamp_expires),
            ),
        ] {
            let body = String::from_utf8(body.clone())
                .map_err(|e| tuf_error("metadata is not UTF-8", e))?;
            crate::store::tuf::put_metadata(tx, channel, &name, version, body, expires).await?;
        }
        Ok(())
    }
}

fn target(sha256: &str, length: u64, custom: HashMap<String, Value>) -> Result<Target, Error> {
    Ok(Target {
        length,
        hashes: Hashes {
            sha256: decoded(sha256)?,
            _extra: HashMap::new(),
        },
        custom,
        _extra: HashMap::new(),
    })
}

fn decoded(hex: &str) -> Result<Decoded<Hex>, Error> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    bytes
        .map(Decoded::from)
        .ok_or_else(|| Error::Corrupt(format!("stored digest {hex:?} is not hex")))
}

fn metafile<T>(role: &SignedRole<T>, version: NonZeroU64) -> Metafile
where
    T: Role + serde::Serialize,
{
    Metafile {
        length: Some(*role.length()),
        hashes: Some(Hashes {
            sha256: Decoded::from(role.sha256().to_vec()),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}
