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
use sqlx::Row;
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    Hashes, KeyHolder, Metafile, Role, RoleKeys, RoleType, Root, Signed, Snapshot, Target, Targets,
    Timestamp,
};
use tough::sign::Sign;

use klive_format::api::{tuf_manifest_target, tuf_module_target};

use crate::crypto::sha256_hex;
use crate::db::Tx;
use crate::error::Error;

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
    root: Signed<Root>,
    root_bytes: Vec<u8>,
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
    pub online: PathBuf,
    pub root_json: PathBuf,
}

impl KeyPaths {
    pub fn new(data: &Path) -> KeyPaths {
        KeyPaths {
            offline: data.join("keys").join("offline"),
            online: data.join("keys").join("online"),
            root_json: data.join("tuf").join("root.json"),
        }
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

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(bytes)
        .map_err(io(format!("writing {}", path.display())))
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
    Ok(Initialised {
        root_sha256: sha256_hex(&bytes),
        root_json: paths.root_json,
        offline_dir: paths.offline,
        root_keys,
        threshold,
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
        let root_bytes = std::fs::read(&paths.root_json)
            .map_err(io(format!("reading {}", paths.root_json.display())))?;
        let root: Signed<Root> = serde_json::from_slice(&root_bytes)
            .map_err(|e| tuf_error("parsing the root metadata", e))?;
        let mut online_keys: Vec<Box<dyn KeySource>> = Vec::new();
        for (name, _) in ONLINE_ROLES {
            let path = paths.online.join(format!("{name}.pk8"));
            if !path.exists() {
                return Err(Error::Config(format!(
                    "the online {name} key {} is missing; restore it from backup",
                    path.display()
                )));
            }
            online_keys.push(Box::new(LocalKeySource { path }));
        }
        Ok(Some(Signer {
            root,
            root_bytes,
            online_keys,
            lifetimes: Lifetimes::default(),
        }))
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
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM tuf_metadata WHERE channel = $1",
        )
        .bind(channel)
        .fetch_one(&mut **tx)
        .await?;
        let v = NonZeroU64::new(version.max(1) as u64).unwrap_or(NonZeroU64::MIN);
        let rows = sqlx::query(
            "SELECT r.build_id AS build_id, r.level AS level, r.module_name AS module_name, r.module_sha256 AS sha256, r.module_size AS size, r.manifest AS manifest FROM releases r JOIN release_channels rc ON rc.release_id = r.id WHERE rc.channel = $1 AND r.withdrawn_at IS NULL",
        )
        .bind(channel)
        .fetch_all(&mut **tx)
        .await?;
        let at = |secs: i64| {
            jiff::Timestamp::from_millisecond(now_ms + secs * 1000)
                .map_err(|e| tuf_error("computing an expiry", e))
        };
        let mut targets = Targets::new(SPEC_VERSION.into(), v, at(self.lifetimes.targets_secs)?);
        for row in &rows {
            let build_id: String = row.try_get("build_id")?;
            let level: i64 = row.try_get("level")?;
            let module_name: String = row.try_get("module_name")?;
            let sha256: String = row.try_get("sha256")?;
            let size: i64 = row.try_get("size")?;
            let manifest: String = row.try_get("manifest")?;
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
            let module = target(&sha256, size.max(0) as u64, custom("module"))?;
            let manifest_target = target(
                &sha256_hex(manifest.as_bytes()),
                manifest.len() as u64,
                custom("manifest"),
            )?;
            let level = u32::try_from(level).unwrap_or(0);
            for (name, t) in [
                (tuf_module_target(&build_id, level), module),
                (tuf_manifest_target(&build_id, level), manifest_target),
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
            sqlx::query(
                "INSERT INTO tuf_metadata (channel, name, version, body, expires_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel, name) DO UPDATE SET version = excluded.version, body = excluded.body, expires_at = excluded.expires_at",
            )
            .bind(channel)
            .bind(&name)
            .bind(version)
            .bind(body)
            .bind(expires)
            .execute(&mut **tx)
            .await?;
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
