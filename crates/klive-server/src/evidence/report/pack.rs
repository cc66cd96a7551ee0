//! Writing a pack: the populations streamed into a sibling temporary directory, the signed
//! manifest, and the rename into place.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use klive_format::api::Role;
use klive_format::digest::sha256_hex;
use klive_format::evidence::{
    EVIDENCE_FORMAT, EvidenceManifest, Finding, ManifestFile, Rating, ReportSummary, Verdict,
};

use super::figures::{Figures, figures};
use super::files::{
    AUDIT_COLUMNS, CHANGE_COLUMNS, CsvOut, EXCEPTION_COLUMNS, FINDING_COLUMNS, HOST_COLUMNS,
    JsonLines, PackFile, json_bytes, write_csv, write_json_records,
};
use super::html::render_html;
use super::io;
use super::key::EvidenceKey;
use super::pdf::start_pdf;
use crate::clock::rfc3339;
use crate::domain::{AuthUser, Service};
use crate::error::Error;
use crate::evidence::cve::require;

/// The command that regenerates a pack of this period.
pub fn reproduce_command(from: i64, to: i64) -> String {
    format!(
        "klive-server report soc2 --from {} --to {} --out DIR",
        rfc3339(from),
        rfc3339(to)
    )
}

/// Steps and their milliseconds.
pub type Timings = Vec<(&'static str, u128)>;

/// A pack that was written.
#[derive(Debug)]
pub struct PackOutcome {
    pub summary: ReportSummary,
    pub manifest: EvidenceManifest,
    pub command: String,
    /// Why the PDF is missing although Chromium was given.
    pub pdf_note: Option<String>,
    /// Where the time went, step by step (milliseconds).
    pub timings: Timings,
}

/// Computes the period's figures and writes the pack into `out` (which must not exist or be
/// empty). Needs the approver role: the pack is signed with the server's key and is the
/// organisation's formal evidence (viewers read the same figures on the dashboard).
///
/// The populations are streamed to disk record by record, each file hashed as its bytes go
/// out; the report is written first so Chromium prints the PDF while the populations are
/// written. Everything goes to a sibling temporary directory that is renamed into place once
/// the signed manifest is written, so a failed run leaves no partial pack.
pub async fn generate_pack(
    service: &Service,
    by: &AuthUser,
    key: &EvidenceKey,
    from: i64,
    to: i64,
    out: &Path,
    chromium: Option<&Path>,
) -> Result<PackOutcome, Error> {
    require(by, Role::Approver)?;
    let dir = PackDir::create(out)?;
    let started = std::time::Instant::now();
    let f = figures(service, from, to).await?;
    let mut timings = f.assessment.timings.clone();
    timings.push(("figures", started.elapsed().as_millis()));
    let generated_at = service.now();
    let command = reproduce_command(from, to);
    let computed = started.elapsed().as_millis();
    let html = render_html(&f, generated_at, &by.name, &command, &key.public_hex)?;
    timings.push(("report_html", started.elapsed().as_millis() - computed));
    let chromium = chromium.map(Path::to_path_buf);
    let (dir, f, pdf_note, steps) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let mut dir = dir;
        let (pdf_note, steps) = write_files(&mut dir, &f, &html, chromium.as_deref())?;
        Ok((dir, f, pdf_note, steps))
    })
    .await
    .map_err(|e| Error::Corrupt(format!("the pack writer failed: {e}")))??;
    timings.extend(steps);
    let manifest = dir.finish(
        EvidenceManifest {
            format: EVIDENCE_FORMAT,
            kind: "soc2".into(),
            generator: format!("klive-server {}", env!("CARGO_PKG_VERSION")),
            generated_at: rfc3339(generated_at),
            period_from: rfc3339(from),
            period_to: rfc3339(to),
            as_of: rfc3339(f.as_of),
            generated_by: by.name.clone(),
            command: command.clone(),
            public_key: key.public_hex.clone(),
            files: Vec::new(),
        },
        key,
    )?;
    timings.push(("total", started.elapsed().as_millis()));
    Ok(PackOutcome {
        summary: f.summary,
        manifest,
        command,
        pdf_note,
        timings,
    })
}

/// Writes the report, starts Chromium on it, then the summary and every population; waits
/// for the PDF last.
fn write_files(
    dir: &mut PackDir,
    f: &Figures,
    html: &str,
    chromium: Option<&Path>,
) -> Result<(Option<String>, Timings), Error> {
    let mut steps = Vec::new();
    let mut step = std::time::Instant::now();
    let mut lap = |name: &'static str, steps: &mut Vec<(&'static str, u128)>| {
        steps.push((name, step.elapsed().as_millis()));
        step = std::time::Instant::now();
    };
    dir.write("report.html", None, |w| w.write_all(html.as_bytes()))?;
    let mut pdf = None;
    let mut pdf_note = None;
    if let Some(chromium) = chromium {
        let html = std::fs::canonicalize(dir.path().join("report.html"))
            .map_err(io("locating report.html".into()))?;
        match start_pdf(chromium, &html, &dir.path().join("report.pdf")) {
            Ok(job) => pdf = Some(job),
            Err(e) => pdf_note = Some(e),
        }
    }
    let summary = json_bytes(&serde_json::json!({
        "summary": f.summary,
        "policies_in_force": f.policies,
        "cve_imports": f.imports,
        "daily_checkins": f.coverage.iter().map(|(d, n)| serde_json::json!({"day": rfc3339(*d), "hosts": n})).collect::<Vec<_>>(),
    }))?;
    dir.write("summary.json", None, |w| w.write_all(&summary))?;
    lap("report_and_summary", &mut steps);
    // Two writers, one per core: every CSV file on this thread, every JSON file on another;
    // each renders the findings record by record as it goes.
    let shared: &PackDir = dir;
    let (csv, json) = std::thread::scope(|scope| {
        let json = scope.spawn(|| write_population_files::<Json>(shared, f));
        let csv = write_population_files::<Csv>(shared, f);
        let json = json
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (csv, json)
    });
    dir.files.extend(csv?);
    dir.files.extend(json?);
    lap("populations", &mut steps);
    // The Vanta and Drata shapes repeat the findings population; they are served as
    // dashboard exports (/ui/exports/) rather than doubling the pack.
    if let Some(job) = pdf {
        match job.wait() {
            Ok(()) => dir.add_written("report.pdf")?,
            Err(e) => pdf_note = Some(e),
        }
        lap("pdf_wait", &mut steps);
    }
    Ok((pdf_note, steps))
}

/// One of the two formats every population is written in.
trait Population {
    const EXT: &'static str;
    /// Writes `records`, with these `columns` where the format names them.
    fn records<T: Serialize>(
        w: &mut PackFile,
        records: &[T],
        columns: &[&str],
    ) -> std::io::Result<()>;
    /// Writes every finding, rendered record by record; returns how many.
    fn findings(w: &mut PackFile, f: &Figures) -> std::io::Result<u64>;
}

struct Csv;
struct Json;

impl Population for Csv {
    const EXT: &'static str = "csv";

    fn records<T: Serialize>(
        w: &mut PackFile,
        records: &[T],
        columns: &[&str],
    ) -> std::io::Result<()> {
        write_csv(w, records, columns)
    }

    fn findings(w: &mut PackFile, f: &Figures) -> std::io::Result<u64> {
        let mut record = empty_finding();
        let mut rows = 0u64;
        let mut csv = CsvOut::new(w);
        csv.header(FINDING_COLUMNS)?;
        for x in f.findings() {
            f.assessment.fill_record(x, &mut record);
            csv.finding(&record)?;
            rows += 1;
        }
        csv.finish()?;
        Ok(rows)
    }
}

impl Population for Json {
    const EXT: &'static str = "json";

    fn records<T: Serialize>(
        w: &mut PackFile,
        records: &[T],
        _columns: &[&str],
    ) -> std::io::Result<()> {
        write_json_records(w, records)
    }

    fn findings(w: &mut PackFile, f: &Figures) -> std::io::Result<u64> {
        let mut record = empty_finding();
        let mut rows = 0u64;
        let mut json = JsonLines::default();
        for x in f.findings() {
            f.assessment.fill_record(x, &mut record);
            json.push(w, &record)?;
            rows += 1;
        }
        json.finish(w)?;
        Ok(rows)
    }
}

/// Writes the population `name` of `records` in format `P`.
fn population<P: Population, T: Serialize>(
    dir: &PackDir,
    name: &str,
    records: &[T],
    columns: &[&str],
) -> Result<ManifestFile, Error> {
    let name = format!("{name}.{}", P::EXT);
    let mut file = dir.open_file(&name)?;
    P::records(&mut file, records, columns).map_err(io(format!("writing {name}")))?;
    file.finish(Some(records.len() as u64))
}

/// Every population file in format `P`: hosts, changes, exceptions, audit, then findings.
fn write_population_files<P: Population>(
    dir: &PackDir,
    f: &Figures,
) -> Result<Vec<ManifestFile>, Error> {
    let mut files = vec![
        population::<P, _>(dir, "hosts", &f.hosts, HOST_COLUMNS)?,
        population::<P, _>(dir, "changes", &f.changes, CHANGE_COLUMNS)?,
        population::<P, _>(dir, "exceptions", &f.exceptions, EXCEPTION_COLUMNS)?,
        population::<P, _>(dir, "audit", &f.audit, AUDIT_COLUMNS)?,
    ];
    let name = format!("findings.{}", P::EXT);
    let mut file = dir.open_file(&name)?;
    let rows = P::findings(&mut file, f).map_err(io(format!("writing {name}")))?;
    files.push(file.finish(Some(rows))?);
    Ok(files)
}

fn empty_finding() -> Finding {
    Finding {
        host_id: String::new(),
        hostname: String::new(),
        cve: String::new(),
        severity: Rating::Unrated,
        severity_source: String::new(),
        kev: false,
        kernel_release: String::new(),
        detected_at: String::new(),
        clock_start_at: String::new(),
        clock_start_basis: String::new(),
        due_at: String::new(),
        policy_version: 0,
        fixed_at: None,
        fix_method: None,
        fixed_level: None,
        fixed_kernel: None,
        time_to_patch_secs: None,
        verdict: Verdict::OpenWithinSla,
        exception_id: None,
    }
}

/// A pack being written into a sibling temporary directory of its destination; removed
/// unless [`PackDir::finish`] moved it into place.
#[derive(Debug)]
pub struct PackDir {
    out: PathBuf,
    tmp: PathBuf,
    files: Vec<ManifestFile>,
    done: bool,
}

impl PackDir {
    /// Refuses a destination that exists and is not empty; creates the temporary directory.
    pub fn create(out: &Path) -> Result<PackDir, Error> {
        PackDir::check_destination(out)?;
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pack".into());
        let tmp = parent.join(format!(".{name}.partial"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(format!("removing {}", tmp.display())))?;
        }
        std::fs::create_dir(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        Ok(PackDir {
            out: out.to_path_buf(),
            tmp,
            files: Vec::new(),
            done: false,
        })
    }

    fn check_destination(out: &Path) -> Result<bool, Error> {
        if !out.exists() {
            return Ok(false);
        }
        let empty = std::fs::read_dir(out)
            .map_err(io(format!("reading {}", out.display())))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::BadRequest(format!(
                "{} exists and is not empty; choose a new directory for the pack",
                out.display()
            )));
        }
        Ok(true)
    }

    /// The temporary directory the files go to.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Opens a new file of the pack.
    pub fn open_file(&self, name: &str) -> Result<PackFile, Error> {
        PackFile::create(&self.tmp.join(name), name)
    }

    /// Flushes a file and lists it.
    pub fn close(&mut self, file: PackFile, rows: Option<u64>) -> Result<(), Error> {
        let entry = file.finish(rows)?;
        self.files.push(entry);
        Ok(())
    }

    /// Writes a whole file.
    pub fn write(
        &mut self,
        name: &str,
        rows: Option<u64>,
        write: impl FnOnce(&mut PackFile) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        let mut file = self.open_file(name)?;
        write(&mut file).map_err(io(format!("writing {name}")))?;
        self.close(file, rows)
    }

    /// Lists a file something else wrote into the directory (the PDF), hashing it.
    pub fn add_written(&mut self, name: &str) -> Result<(), Error> {
        let path = self.tmp.join(name);
        let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        self.files.push(ManifestFile {
            path: name.to_owned(),
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            rows: None,
        });
        Ok(())
    }

    /// Writes `manifest.json` (with the files listed, by path) and its signature, and moves
    /// the pack into place.
    pub fn finish(
        mut self,
        mut manifest: EvidenceManifest,
        key: &EvidenceKey,
    ) -> Result<EvidenceManifest, Error> {
        let mut files = std::mem::take(&mut self.files);
        files.sort_by(|a, b| a.path.cmp(&b.path));
        manifest.files = files;
        let bytes = json_bytes(&manifest)?;
        std::fs::write(self.tmp.join("manifest.json"), &bytes)
            .map_err(io("writing manifest.json".into()))?;
        std::fs::write(
            self.tmp.join("manifest.sig"),
            format!("{}\n", key.sign(&bytes)),
        )
        .map_err(io("writing manifest.sig".into()))?;
        if PackDir::check_destination(&self.out)? {
            std::fs::remove_dir(&self.out)
                .map_err(io(format!("replacing {}", self.out.display())))?;
        }
        std::fs::rename(&self.tmp, &self.out)
            .map_err(io(format!("moving the pack into {}", self.out.display())))?;
        self.done = true;
        Ok(manifest)
    }
}

impl Drop for PackDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
