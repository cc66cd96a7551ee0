//! A pack as one tar archive, for the dashboard download.

use std::path::Path;

use super::io;
use crate::error::Error;

/// A ustar archive of a pack directory's regular files, in name order under `prefix/`, with
/// fixed owner, mode (0644) and time (0), so the same pack gives the same bytes.
pub fn tar_dir(dir: &Path, prefix: &str) -> Result<Vec<u8>, Error> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut archive = tar::Builder::new(Vec::new());
    for name in names {
        let data = std::fs::read(dir.join(&name)).map_err(io(format!("reading {name}")))?;
        let path = format!("{prefix}/{name}");
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        archive
            .append_data(&mut header, &path, data.as_slice())
            .map_err(io(format!("adding {path} to the archive")))?;
    }
    archive
        .into_inner()
        .map_err(io("finishing the archive".to_owned()))
}
