use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A failure reading or writing a pseudo-file, with its path.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds {content:?}, expected {expected}")]
    Parse {
        path: PathBuf,
        content: String,
        expected: &'static str,
    },
}

impl SysfsError {
    /// Whether a read failed because the object is gone: ENOENT, or ENODEV, which sysfs
    /// returns for an attribute of a kobject the kernel is removing while the directory may
    /// still be listed.
    pub fn is_vanished(&self) -> bool {
        match self {
            SysfsError::Read { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::ENODEV)
            }
            SysfsError::Write { .. } | SysfsError::Parse { .. } => false,
        }
    }
}

/// A test double's view of every read: given the path read (as passed to [`SysRoot`]), an
/// error to return instead of reading, or `None` to read the file.
#[cfg(feature = "fake")]
pub(crate) type ReadHook = std::sync::Arc<dyn Fn(&str) -> Option<io::Error> + Send + Sync>;

/// The directory `/sys` and `/proc` are found under: `/` on a host, a temp dir in tests.
#[derive(Clone)]
pub struct SysRoot {
    root: PathBuf,
    #[cfg(feature = "fake")]
    hook: Option<ReadHook>,
}

impl std::fmt::Debug for SysRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SysRoot").field("root", &self.root).finish()
    }
}

impl Default for SysRoot {
    fn default() -> Self {
        Self::new("/")
    }
}

impl SysRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            #[cfg(feature = "fake")]
            hook: None,
        }
    }

    /// The fake kernel's hook on every read and directory listing.
    #[cfg(feature = "fake")]
    pub(crate) fn with_hook(mut self, hook: ReadHook) -> Self {
        self.hook = Some(hook);
        self
    }

    #[cfg(feature = "fake")]
    fn injected(&self, rel: &str) -> Result<(), io::Error> {
        match self.hook.as_ref().and_then(|h| h(rel)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    #[cfg(not(feature = "fake"))]
    fn injected(&self, _rel: &str) -> Result<(), io::Error> {
        Ok(())
    }

    /// `rel` is an absolute-looking path such as `/sys/kernel/livepatch`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    pub fn read_bytes(&self, rel: &str) -> Result<Vec<u8>, SysfsError> {
        let path = self.path(rel);
        self.injected(rel)
            .and_then(|()| fs::read(&path))
            .map_err(|source| SysfsError::Read { path, source })
    }

    /// The file's text with trailing whitespace removed; invalid UTF-8 is replaced, never fatal.
    pub fn read_trimmed(&self, rel: &str) -> Result<String, SysfsError> {
        let bytes = self.read_bytes(rel)?;
        Ok(String::from_utf8_lossy(&bytes).trim_end().to_owned())
    }

    /// Like [`SysRoot::read_trimmed`] but `None` when the file does not exist.
    pub fn read_optional(&self, rel: &str) -> Result<Option<String>, SysfsError> {
        match self.read_trimmed(rel) {
            Ok(s) => Ok(Some(s)),
            Err(SysfsError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn read_bool01(&self, rel: &str) -> Result<bool, SysfsError> {
        let s = self.read_trimmed(rel)?;
        match s.as_str() {
            "0" | "N" => Ok(false),
            "1" | "Y" => Ok(true),
            _ => Err(SysfsError::Parse {
                path: self.path(rel),
                content: s,
                expected: "0 or 1",
            }),
        }
    }

    pub fn read_int<T: std::str::FromStr>(&self, rel: &str) -> Result<T, SysfsError> {
        let s = self.read_trimmed(rel)?;
        s.trim().parse().map_err(|_| SysfsError::Parse {
            path: self.path(rel),
            content: s.clone(),
            expected: "an integer",
        })
    }

    /// Names of the entries of a directory, sorted; empty when it does not exist.
    pub fn list_dir(&self, rel: &str) -> Result<Vec<String>, SysfsError> {
        let path = self.path(rel);
        let entries = match self.injected(rel).and_then(|()| fs::read_dir(&path)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(SysfsError::Read { path, source }),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SysfsError::Read {
                path: path.clone(),
                source,
            })?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    pub fn is_dir(&self, rel: &str) -> bool {
        self.path(rel).is_dir()
    }

    /// Writes a control file (sysfs attributes take the whole value in one write).
    pub fn write(&self, rel: &str, value: &str) -> Result<(), SysfsError> {
        let path = self.path(rel);
        write_existing(&path, value.as_bytes()).map_err(|source| SysfsError::Write { path, source })
    }
}

fn write_existing(path: &Path, value: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_error(errno: i32) -> SysfsError {
        SysfsError::Read {
            path: PathBuf::from("/sys/kernel/livepatch/klive_x/transition"),
            source: io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn only_enoent_and_enodev_mean_vanished() {
        assert!(read_error(libc::ENOENT).is_vanished());
        assert!(read_error(libc::ENODEV).is_vanished());
        assert!(!read_error(libc::EACCES).is_vanished());
        assert!(!read_error(libc::EIO).is_vanished());
    }
}
