//! A pack as one tar archive, for the dashboard download.

use std::fmt::Write as _;
use std::path::Path;

use super::io;
use crate::error::Error;

/// A ustar archive of a pack directory's regular files (for the dashboard download).
pub fn tar_dir(dir: &Path, prefix: &str) -> Result<Vec<u8>, Error> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let data = std::fs::read(dir.join(&name)).map_err(io(format!("reading {name}")))?;
        let path = format!("{prefix}/{name}");
        if path.len() > 99 {
            return Err(Error::Corrupt(format!(
                "file name {path} is too long for tar"
            )));
        }
        let mut header = [0u8; 512];
        header[..path.len()].copy_from_slice(path.as_bytes());
        let mut field = |at: usize, len: usize, text: String| {
            header[at..at + text.len().min(len)]
                .copy_from_slice(&text.as_bytes()[..text.len().min(len)]);
        };
        field(100, 8, "0000644\0".into());
        field(108, 8, "0000000\0".into());
        field(116, 8, "0000000\0".into());
        field(124, 12, format!("{:011o}\0", data.len()));
        field(136, 12, format!("{:011o}\0", 0));
        field(156, 1, "0".into());
        field(257, 6, "ustar\0".into());
        field(263, 2, "00".into());
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        let mut checksum = String::new();
        let _ = write!(checksum, "{sum:06o}\0 ");
        header[148..156].copy_from_slice(checksum.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}
