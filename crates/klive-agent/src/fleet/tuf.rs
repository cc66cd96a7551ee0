//! The TUF side of the agent: loading a channel's repository from the server (or a bundle
//! from a directory) under the pinned root, keeping a newer root it verified, reading
//! targets, and turning tough's errors into [`FleetError::Tuf`] with a hint.

use std::path::Path;
use std::sync::Arc;

use klive_format::api::FleetRegistration;
use klive_format::{BuildId, PatchLevel};
use klive_kernel::Kernel;
use tough::{IntoVec, Repository, RepositoryLoader, TargetName};
use url::Url;

use super::{Fleet, FleetError};
use crate::AgentError;
use crate::transport::{BundleTransport, Http, NetError, ServerTransport};

/// A current-thread runtime for tough's async API; nothing else runs on it.
pub(super) fn block_on<F: Future>(what: &str, f: F) -> Result<F::Output, FleetError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| {
            FleetError::Agent(AgentError::Other(format!(
                "starting the runtime for {what}: {e}; check the process limits"
            )))
        })?;
    Ok(rt.block_on(f))
}

/// Every message in an error's source chain, for errors that wrap the real cause.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn transient_in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(n) = c.downcast_ref::<NetError>() {
            return n.is_transient();
        }
        cur = c.source();
    }
    false
}

fn tuf_error(what: &str, e: tough::error::Error) -> FleetError {
    let detail = chain(&e);
    let transient = transient_in_chain(&e);
    let lower = detail.to_lowercase();
    let hint = if transient {
        "the server did not answer; retry later (the daemon does)"
    } else if lower.contains("blob_corrupt") {
        "the server's stored module does not match its digest (tampered or corrupted storage): report it to the server's operator"
    } else if lower.contains("expired") {
        "the signed metadata has expired (a stale mirror or a server that stopped re-signing): ask the server's operator to check it"
    } else if lower.contains("version") && lower.contains("previously") {
        "the server offered older metadata than this host has seen (rollback): ask the server's operator to check it"
    } else if lower.contains("hash") || lower.contains("length") || lower.contains("digest") {
        "a file did not match its signed hash or length (tampered or corrupted in storage or transit): report it to the server's operator"
    } else if lower.contains("signature") || lower.contains("threshold") || lower.contains("key") {
        "the metadata is not signed by the keys of the root this host trusts (the pinned one, or a newer one it verified since): check that this host registered with the right server and that the server does not sign with keys a root rotation retired"
    } else {
        "check the server and retry; report it to the server's operator if it persists"
    };
    FleetError::Tuf {
        what: what.to_owned(),
        detail,
        hint: hint.to_owned(),
        transient,
    }
}

/// Loads a repository with `loader`; `what` names it in errors.
fn load(what: &str, loader: RepositoryLoader<'_>) -> Result<Repository, FleetError> {
    block_on(what, loader.load())?.map_err(|e| tuf_error(what, e))
}

/// Loads the repository in a directory (`metadata/`, `targets/`) verified from `root`,
/// with its versions kept in `datastore`.
pub(super) fn load_from_dir(
    what: &str,
    root: &[u8],
    metadata_dir: &Path,
    targets_dir: &Path,
    datastore: &Path,
) -> Result<Repository, FleetError> {
    let to_url = |p: &Path| {
        Url::from_directory_path(p)
            .map_err(|()| FleetError::Usage(format!("{} is not an absolute path", p.display())))
    };
    let loader = RepositoryLoader::new(&root, to_url(metadata_dir)?, to_url(targets_dir)?)
        .transport(BundleTransport {
            targets_dir: targets_dir.to_owned(),
        })
        .datastore(datastore);
    load(what, loader)
}

/// Reads a target through `repo` (length and hashes checked against the signed
/// metadata); `None` when the metadata does not list it.
pub(super) fn read_target(
    repo: &Repository,
    target: &TargetName,
    what: &str,
) -> Result<Option<Vec<u8>>, FleetError> {
    block_on(what, async {
        match repo.read_target(target).await {
            Ok(Some(stream)) => stream.into_vec().await.map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        }
    })?
    .map_err(|e| tuf_error(what, e))
}

/// `{build_id}-{level}.ko` or `.manifest.json` → (build_id, level).
pub(super) fn parse_target(name: &str) -> Option<(&str, u32)> {
    let stem = name
        .strip_suffix(".ko")
        .or_else(|| name.strip_suffix(".manifest.json"))?;
    let (b, l) = stem.rsplit_once('-')?;
    Some((b, l.parse().ok()?))
}

/// The highest level `repo` signs a module of `build_id` for.
pub(super) fn highest_level(repo: &Repository, build_id: &BuildId) -> Option<PatchLevel> {
    repo.targets()
        .signed
        .targets
        .keys()
        .filter(|n| n.raw().ends_with(".ko"))
        .filter_map(|n| parse_target(n.raw()))
        .filter(|(b, _)| *b == build_id.as_str())
        .filter_map(|(_, l)| PatchLevel::new(l).ok())
        .max()
}

impl<K: Kernel> Fleet<'_, K> {
    /// Loads the channel's repository from the server, pinning the registered root.
    pub(super) fn load_channel(
        &self,
        reg: &FleetRegistration,
        http: &Arc<dyn Http>,
        channel: &str,
    ) -> Result<Repository, FleetError> {
        let base = format!("{}/api/v1/tuf/{channel}/", reg.server);
        let url = |part: &str| {
            Url::parse(&format!("{base}{part}/"))
                .map_err(|e| FleetError::Usage(format!("bad server URL {base}: {e}")))
        };
        let (metadata, targets) = (url("metadata")?, url("targets")?);
        let datastore = self.files.tuf_datastore(channel)?;
        let root_bytes = self.trusted_root(reg)?;
        let loader = RepositoryLoader::new(&root_bytes, metadata, targets)
            .transport(ServerTransport {
                http: Arc::clone(http),
                bearer: reg.credential.clone(),
            })
            .datastore(datastore);
        let repo = load(&format!("the signed metadata of channel {channel}"), loader)?;
        self.remember_root(&root_bytes, &repo)?;
        Ok(repo)
    }

    /// The root to start verifying from: the newest one verified so far, else the pinned one.
    pub(super) fn trusted_root(&self, reg: &FleetRegistration) -> Result<Vec<u8>, FleetError> {
        Ok(self
            .files
            .trusted_root()?
            .unwrap_or_else(|| reg.tuf_root.as_bytes().to_vec()))
    }

    /// Keeps the root `repo` was verified under when it is newer than `started_from` (the
    /// server rotated its root): the rotation's retired keys are refused from then on.
    fn remember_root(&self, started_from: &[u8], repo: &Repository) -> Result<(), FleetError> {
        let old =
            serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(started_from)
                .map(|r| r.signed.version.get())
                .unwrap_or(0);
        if repo.root().signed.version.get() > old {
            let bytes = serde_json::to_vec(repo.root())
                .map_err(|e| FleetError::Usage(format!("encoding the TUF root: {e}")))?;
            self.files.save_trusted_root(&bytes)?;
        }
        Ok(())
    }
}
