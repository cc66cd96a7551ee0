//! The pack's files as they are written: CSV and JSON populations, and [`PackFile`], which
//! hashes every byte on its way to disk.

use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use klive_format::digest::Sha256;
use klive_format::evidence::{Finding, ManifestFile};

use super::io;
use crate::error::Error;

/// CSV text of `records`, with `columns` in that order (values from their JSON form).
pub fn csv<T: Serialize>(records: &[T], columns: &[&str]) -> String {
    let mut out = Vec::new();
    let _ = write_csv(&mut out, records, columns);
    String::from_utf8(out).unwrap_or_default()
}

/// [`csv`] into a writer.
pub fn write_csv<T: Serialize, W: Write>(
    w: &mut W,
    records: &[T],
    columns: &[&str],
) -> std::io::Result<()> {
    w.write_all(columns.join(",").as_bytes())?;
    w.write_all(b"\n")?;
    let mut line = Vec::new();
    for r in records {
        line.clear();
        let value = serde_json::to_value(r).unwrap_or(Value::Null);
        for (i, c) in columns.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            match value.get(c) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => csv_cell(&mut line, s),
                Some(other) => csv_cell(&mut line, &other.to_string()),
            }
        }
        line.push(b'\n');
        w.write_all(&line)?;
    }
    Ok(())
}

/// Appends one CSV cell. A leading = + - @ would be a formula in a spreadsheet: it is quoted
/// with a leading '.
fn csv_cell(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let guard = matches!(bytes.first(), Some(b'=' | b'+' | b'-' | b'@')) && !s.starts_with("-0");
    let quote = bytes
        .iter()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if quote {
        out.push(b'"');
    }
    if guard {
        out.push(b'\'');
    }
    if quote {
        for part in s.split_inclusive('"') {
            out.extend_from_slice(part.as_bytes());
            if part.ends_with('"') {
                out.push(b'"');
            }
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Appends one finding as a CSV line (the header is [`FINDING_COLUMNS`]); the same cells as
/// [`csv`] gives, written field by field (the population can have millions of rows).
pub fn finding_csv_line(out: &mut Vec<u8>, x: &Finding) {
    let opt = |out: &mut Vec<u8>, v: &Option<String>| {
        if let Some(v) = v {
            csv_cell(out, v);
        }
    };
    csv_cell(out, &x.host_id);
    out.push(b',');
    csv_cell(out, &x.hostname);
    out.push(b',');
    csv_cell(out, &x.cve);
    out.push(b',');
    out.extend_from_slice(x.severity.as_str().as_bytes());
    out.push(b',');
    csv_cell(out, &x.severity_source);
    out.push(b',');
    out.extend_from_slice(if x.kev { b"true," } else { b"false," });
    csv_cell(out, &x.kernel_release);
    out.push(b',');
    csv_cell(out, &x.detected_at);
    out.push(b',');
    csv_cell(out, &x.clock_start_at);
    out.push(b',');
    csv_cell(out, &x.clock_start_basis);
    out.push(b',');
    csv_cell(out, &x.due_at);
    let _ = write!(out, ",{},", x.policy_version);
    opt(out, &x.fixed_at);
    out.push(b',');
    if let Some(m) = x.fix_method {
        out.extend_from_slice(m.as_str().as_bytes());
    }
    out.push(b',');
    if let Some(l) = x.fixed_level {
        let _ = write!(out, "{l}");
    }
    out.push(b',');
    opt(out, &x.fixed_kernel);
    out.push(b',');
    if let Some(t) = x.time_to_patch_secs {
        let _ = write!(out, "{t}");
    }
    out.push(b',');
    out.extend_from_slice(x.verdict.as_str().as_bytes());
    out.push(b',');
    opt(out, &x.exception_id);
    out.push(b'\n');
}

/// The findings population as CSV text (see [`finding_csv_line`]).
pub fn findings_csv(findings: &[Finding]) -> String {
    let mut out = FINDING_COLUMNS.join(",").into_bytes();
    out.push(b'\n');
    for x in findings {
        finding_csv_line(&mut out, x);
    }
    String::from_utf8(out).unwrap_or_default()
}

pub const HOST_COLUMNS: &[&str] = &[
    "host_id",
    "hostname",
    "channel",
    "registered_at",
    "revoked_at",
    "last_seen_at",
    "kernel_release",
    "package_version",
    "build_id",
    "applied_level",
    "applied_state",
    "uptime_days_at_end",
    "reboots_in_period",
    "livepatches_in_period",
    "cve_knowledge",
    "open_findings_at_end",
    "taint",
];
pub const FINDING_COLUMNS: &[&str] = &[
    "host_id",
    "hostname",
    "cve",
    "severity",
    "severity_source",
    "kev",
    "kernel_release",
    "detected_at",
    "clock_start_at",
    "clock_start_basis",
    "due_at",
    "policy_version",
    "fixed_at",
    "fix_method",
    "fixed_level",
    "fixed_kernel",
    "time_to_patch_secs",
    "verdict",
    "exception_id",
];
pub const CHANGE_COLUMNS: &[&str] = &[
    "kind",
    "release",
    "channel",
    "made_by",
    "made_at",
    "published_by",
    "approved_by",
    "approved_at",
    "emergency",
    "reason",
    "segregation_ok",
    "note",
];
pub const EXCEPTION_COLUMNS: &[&str] = &[
    "id",
    "cve",
    "host_id",
    "reason",
    "created_by",
    "created_at",
    "expires_at",
];
pub const AUDIT_COLUMNS: &[&str] = &[
    "seq",
    "at",
    "actor",
    "action",
    "subject",
    "detail",
    "prev_hash",
    "hash",
];

/// A JSON array with one compact record per line (populations can have millions of rows).
pub fn write_json_records<T: Serialize, W: Write>(
    w: &mut W,
    records: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    let mut json = JsonLines::default();
    for r in records {
        json.push(w, &r)?;
    }
    json.finish(w)
}

/// Writes a JSON array one compact record per line, record by record.
#[derive(Default)]
pub(super) struct JsonLines {
    any: bool,
    line: Vec<u8>,
}

impl JsonLines {
    pub(super) fn push<T: Serialize, W: Write>(
        &mut self,
        w: &mut W,
        record: &T,
    ) -> std::io::Result<()> {
        self.line.clear();
        self.line
            .extend_from_slice(if self.any { b",\n" } else { b"[\n" });
        self.any = true;
        serde_json::to_writer(&mut self.line, record)?;
        w.write_all(&self.line)
    }

    pub(super) fn finish<W: Write>(self, w: &mut W) -> std::io::Result<()> {
        w.write_all(if self.any { b"\n]\n" } else { b"[\n]\n" })
    }
}

pub(super) fn json_bytes<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, Error> {
    let mut bytes = serde_json::to_vec_pretty(v)
        .map_err(|e| Error::Corrupt(format!("serialising evidence: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// A file of the pack being written: buffered, and hashed (SHA-256) and counted as its bytes
/// go to disk, so no file is read back to hash it.
pub struct PackFile {
    name: String,
    inner: BufWriter<HashedFile>,
}

impl std::fmt::Debug for PackFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackFile")
            .field("name", &self.name)
            .finish()
    }
}

impl PackFile {
    /// Creates the file `name` at `path`.
    pub(super) fn create(path: &Path, name: &str) -> Result<PackFile, Error> {
        let file =
            std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
        Ok(PackFile {
            name: name.to_owned(),
            inner: BufWriter::with_capacity(
                1 << 20,
                HashedFile {
                    file,
                    hasher: Sha256::new(),
                    size: 0,
                },
            ),
        })
    }

    /// Flushes the file; its manifest entry with hash, size and data rows.
    pub fn finish(self, rows: Option<u64>) -> Result<ManifestFile, Error> {
        let what = format!("writing {}", self.name);
        let hashed = self.inner.into_inner().map_err(|e| Error::Io {
            what,
            source: e.into_error(),
        })?;
        Ok(ManifestFile {
            path: self.name,
            sha256: hashed.hasher.finish_hex(),
            size: hashed.size,
            rows,
        })
    }
}

struct HashedFile {
    file: std::fs::File,
    hasher: Sha256,
    size: u64,
}

impl Write for HashedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Write for PackFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use klive_format::evidence::{FixMethod, Rating, Verdict};

    #[test]
    fn findings_csv_matches_the_generic_writer() {
        let f = Finding {
            host_id: "h1".into(),
            hostname: "web,1".into(),
            cve: "CVE-2024-1".into(),
            severity: Rating::High,
            severity_source: "release:x".into(),
            kev: true,
            kernel_release: "6.1".into(),
            detected_at: "2026-01-01T00:00:00Z".into(),
            clock_start_at: "2026-01-01T00:00:00Z".into(),
            clock_start_basis: "detected".into(),
            due_at: "2026-01-31T00:00:00Z".into(),
            policy_version: 2,
            fixed_at: Some("2026-01-02T00:00:00Z".into()),
            fix_method: Some(FixMethod::Livepatch),
            fixed_level: Some(3),
            fixed_kernel: None,
            time_to_patch_secs: Some(86400),
            verdict: Verdict::FixedOnTime,
            exception_id: None,
        };
        let mut open = f.clone();
        open.fixed_at = None;
        open.fix_method = None;
        open.fixed_level = None;
        open.time_to_patch_secs = None;
        open.verdict = Verdict::OpenOverdue;
        open.exception_id = Some("e1".into());
        let both = [f, open];
        assert_eq!(findings_csv(&both), csv(&both, FINDING_COLUMNS));
    }

    #[test]
    fn csv_quotes_and_guards_formulas() {
        #[derive(Serialize)]
        struct R {
            a: String,
            b: Option<u32>,
        }
        let text = csv(
            &[
                R {
                    a: "x,\"y\"".into(),
                    b: Some(1),
                },
                R {
                    a: "=cmd()".into(),
                    b: None,
                },
            ],
            &["a", "b"],
        );
        assert_eq!(text, "a,b\n\"x,\"\"y\"\"\",1\n'=cmd(),\n");
    }
}
