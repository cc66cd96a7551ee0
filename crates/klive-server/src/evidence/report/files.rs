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
    let mut out = CsvOut::new(w);
    out.header(columns)?;
    for r in records {
        let value = serde_json::to_value(r).unwrap_or(Value::Null);
        for c in columns {
            match value.get(c) {
                None | Some(Value::Null) => out.empty()?,
                Some(Value::String(s)) => out.cell(s)?,
                Some(other) => out.cell(&other.to_string())?,
            }
        }
        out.end_row()?;
    }
    out.finish().map(drop)
}

/// The pack's CSV dialect over a writer: RFC 4180 minimal quoting (a cell is quoted only when
/// it holds a comma, a quote, CR or LF; quotes inside are doubled), `\n` after each record,
/// and a spreadsheet-formula guard: a cell starting with = + - @ (but not a negative number's
/// "-0") gets a leading '.
pub(super) struct CsvOut<W: Write> {
    csv: ::csv::Writer<W>,
    guarded: Vec<u8>,
    number: String,
}

impl<W: Write> CsvOut<W> {
    pub(super) fn new(w: W) -> CsvOut<W> {
        let csv = ::csv::WriterBuilder::new()
            .quote_style(::csv::QuoteStyle::Necessary)
            .double_quote(true)
            .terminator(::csv::Terminator::Any(b'\n'))
            .has_headers(false)
            .from_writer(w);
        CsvOut {
            csv,
            guarded: Vec::new(),
            number: String::new(),
        }
    }

    /// The header line.
    pub(super) fn header(&mut self, columns: &[&str]) -> std::io::Result<()> {
        Ok(self.csv.write_record(columns)?)
    }

    /// A text cell, quoted as needed and guarded against formulas.
    pub(super) fn cell(&mut self, s: &str) -> std::io::Result<()> {
        let guard =
            matches!(s.as_bytes().first(), Some(b'=' | b'+' | b'-' | b'@')) && !s.starts_with("-0");
        if guard {
            self.guarded.clear();
            self.guarded.push(b'\'');
            self.guarded.extend_from_slice(s.as_bytes());
            self.csv.write_field(&self.guarded)?;
        } else {
            self.csv.write_field(s)?;
        }
        Ok(())
    }

    /// A cell of a fixed word (an enum's spelling), written as it is.
    fn word(&mut self, s: &str) -> std::io::Result<()> {
        Ok(self.csv.write_field(s)?)
    }

    fn number(&mut self, n: impl std::fmt::Display) -> std::io::Result<()> {
        use std::fmt::Write as _;
        self.number.clear();
        let _ = write!(self.number, "{n}");
        Ok(self.csv.write_field(&self.number)?)
    }

    fn opt_cell(&mut self, v: Option<&str>) -> std::io::Result<()> {
        match v {
            Some(v) => self.cell(v),
            None => self.empty(),
        }
    }

    /// An empty cell (a missing value).
    pub(super) fn empty(&mut self) -> std::io::Result<()> {
        Ok(self.csv.write_field([])?)
    }

    /// Ends the record.
    pub(super) fn end_row(&mut self) -> std::io::Result<()> {
        Ok(self.csv.write_record(None::<&[u8]>)?)
    }

    /// One finding as a record (the header is [`FINDING_COLUMNS`]); the same cells as
    /// [`csv`] gives, written field by field (the population can have millions of rows).
    pub(super) fn finding(&mut self, x: &Finding) -> std::io::Result<()> {
        self.cell(&x.host_id)?;
        self.cell(&x.hostname)?;
        self.cell(&x.cve)?;
        self.word(x.severity.as_str())?;
        self.cell(&x.severity_source)?;
        self.word(if x.kev { "true" } else { "false" })?;
        self.cell(&x.kernel_release)?;
        self.cell(&x.detected_at)?;
        self.cell(&x.clock_start_at)?;
        self.cell(&x.clock_start_basis)?;
        self.cell(&x.due_at)?;
        self.number(x.policy_version)?;
        self.opt_cell(x.fixed_at.as_deref())?;
        match x.fix_method {
            Some(m) => self.word(m.as_str())?,
            None => self.empty()?,
        }
        match x.fixed_level {
            Some(l) => self.number(l)?,
            None => self.empty()?,
        }
        self.opt_cell(x.fixed_kernel.as_deref())?;
        match x.time_to_patch_secs {
            Some(t) => self.number(t)?,
            None => self.empty()?,
        }
        self.word(x.verdict.as_str())?;
        self.opt_cell(x.exception_id.as_deref())?;
        self.end_row()
    }

    /// Flushes what is buffered; the writer underneath.
    pub(super) fn finish(self) -> std::io::Result<W> {
        self.csv.into_inner().map_err(|e| e.into_error())
    }
}

/// Appends one finding as a CSV line (the header is [`FINDING_COLUMNS`]).
pub fn finding_csv_line(out: &mut Vec<u8>, x: &Finding) {
    let mut csv = CsvOut::new(out);
    // Writing into memory cannot fail.
    let _ = csv.finding(x).and_then(|()| csv.finish());
}

/// The findings population as CSV text.
pub fn findings_csv(findings: &[Finding]) -> String {
    let text = (|| {
        let mut csv = CsvOut::new(Vec::new());
        csv.header(FINDING_COLUMNS)?;
        for x in findings {
            csv.finding(x)?;
        }
        csv.finish()
    })();
    String::from_utf8(text.unwrap_or_default()).unwrap_or_default()
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

    /// The hand-written cell encoder the csv crate replaced (kept to show the bytes of a pack
    /// did not change).
    fn reference_cell(out: &mut Vec<u8>, s: &str) {
        let bytes = s.as_bytes();
        let guard =
            matches!(bytes.first(), Some(b'=' | b'+' | b'-' | b'@')) && !s.starts_with("-0");
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

    #[test]
    fn csv_cells_are_byte_identical_to_the_former_encoder() {
        // Every string of up to 4 of these pieces: separators, quotes, line ends, formula
        // starts, "-0", the guard's quote itself, spaces, tabs and non-ASCII.
        let pieces = [
            "a", ",", "\"", "\n", "\r", "=", "+", "-", "@", "0", "'", " ", "\t", "é", ";",
        ];
        let mut cells = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|p| pieces.iter().map(move |c| format!("{p}{c}")))
                .collect();
            cells.extend(last.iter().cloned());
        }
        let mut expected = b"a,b\n".to_vec();
        let mut csv = CsvOut::new(Vec::new());
        csv.header(&["a", "b"]).unwrap();
        for c in &cells {
            reference_cell(&mut expected, c);
            expected.push(b',');
            reference_cell(&mut expected, c);
            expected.push(b'\n');
            csv.cell(c).unwrap();
            csv.cell(c).unwrap();
            csv.end_row().unwrap();
        }
        let got = csv.finish().unwrap();
        assert!(got == expected, "the csv crate changed a cell's bytes");
    }

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
