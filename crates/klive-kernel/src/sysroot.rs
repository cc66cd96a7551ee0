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

/// The directory `/sys` and `/proc` are found under: `/` on a host, a temp dir in tests.
#[derive(Debug, Clone)]
pub struct SysRoot {
    root: PathBuf,
}

impl Default for SysRoot {
    fn default() -> Self {
        Self::new("/")
    }
}

impl SysRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
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
        fs::read(&path).map_err(|source| SysfsError::Read { path, source })
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
        let entries = match fs::read_dir(&path) {
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
