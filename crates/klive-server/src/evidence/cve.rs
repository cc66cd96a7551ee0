//! CVE knowledge from outside the server: Debian kernel changelogs (which CVEs each kernel
//! package version fixes), OSV advisories (severity, publication, fixed versions) and the CISA
//! Known Exploited Vulnerabilities catalog (date added, due date). Each file is parsed
//! completely before anything is stored, then stored in one transaction with its audit record:
//! a malformed file changes nothing. Fixes carried by releases come from their manifests.

use std::collections::BTreeSet;
use std::io::Read;

use serde_json::{Value, json};

use klive_format::api::Role;
use klive_format::evidence::Rating;

use crate::domain::{AuthUser, Service};
use crate::error::Error;
use crate::store::audit::{self, Actor};
use crate::store::cve::{self as store, NewFact, NewImport, NewPackageFix};
use crate::trust::secrets::new_id;
use klive_format::debver;
use klive_format::digest::sha256_hex;

/// The Debian source package of the kernel; host package versions are compared with its
/// changelog versions.
pub const KERNEL_PACKAGE: &str = "linux";

/// Largest accepted input (a Debian kernel changelog is about 4 MB uncompressed).
const MAX_INPUT: u64 = 256 * 1024 * 1024;

/// The kinds of file `cve import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    DebianChangelog,
    Osv,
    Kev,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::DebianChangelog => "debian-changelog",
            Source::Osv => "osv",
            Source::Kev => "kev",
        }
    }
}

/// A file that is not what it claims to be, with where and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct FeedError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

fn feed_error(file: &str, line: Option<usize>, message: impl Into<String>) -> FeedError {
    FeedError {
        file: file.to_owned(),
        line,
        message: message.into(),
    }
}

/// One changelog entry: a package version and the CVEs its changes name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogEntry {
    pub package: String,
    pub version: String,
    pub released_at: i64,
    pub cves: BTreeSet<String>,
}

/// Reads gzip (by its magic bytes) or plain text.
pub fn decompress(file: &str, bytes: &[u8]) -> Result<String, FeedError> {
    let mut text = String::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_INPUT)
            .read_to_string(&mut text)
            .map_err(|e| feed_error(file, None, format!("cannot decompress it as gzip: {e}")))?;
    } else {
        text = String::from_utf8(bytes.to_vec())
            .map_err(|_| feed_error(file, None, "it is neither gzip nor UTF-8 text"))?;
    }
    Ok(text)
}

/// Every `CVE-YYYY-NNNN+` in `text`, upper-cased.
pub fn cve_ids(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find(['C', 'c']) {
        let start = i + pos;
        i = start + 1;
        let rest = &bytes[start..];
        if rest.len() < 13 || !rest[..4].eq_ignore_ascii_case(b"CVE-") {
            continue;
        }
        let year = &rest[4..8];
        if !year.iter().all(u8::is_ascii_digit) || rest[8] != b'-' {
            continue;
        }
        let digits = rest[9..].iter().take_while(|c| c.is_ascii_digit()).count();
        if (4..=7).contains(&digits) {
            let id = &text[start..start + 9 + digits];
            out.insert(id.to_ascii_uppercase());
            i = start + 9 + digits;
        }
    }
    out
}

/// True for a whole string that is one CVE id.
pub fn is_cve_id(s: &str) -> bool {
    cve_ids(s).into_iter().next().is_some_and(|c| c == s)
}

/// Parses a Debian changelog. Entries of a `linux-signed-*` package that say "Sign kernel
/// from linux VERSION" count for that `linux` version.
pub fn parse_debian_changelog(file: &str, text: &str) -> Result<Vec<ChangelogEntry>, FeedError> {
    struct Open {
        package: String,
        version: String,
        line: usize,
        body: String,
    }
    let mut entries = Vec::new();
    let mut open: Option<Open> = None;
    for (index, line) in text.lines().enumerate() {
        let n = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix(" -- ") {
            let Some(entry) = open.take() else {
                return Err(feed_error(
                    file,
                    Some(n),
                    "a trailer line (` -- name  date`) without an entry header before it",
                ));
            };
            let date = rest.split_once("  ").map(|(_, d)| d.trim()).ok_or_else(|| {
                feed_error(
                    file,
                    Some(n),
                    "the trailer has no date (expected ` -- Name <email>  Day, DD Mon YYYY HH:MM:SS +ZZZZ`)",
                )
            })?;
            let released_at = jiff::fmt::rfc2822::parse(date)
                .map(|z| z.timestamp().as_millisecond())
                .map_err(|e| feed_error(file, Some(n), format!("bad date {date:?}: {e}")))?;
            let (package, version) = match signed_source(&entry.package, &entry.body) {
                Some(v) => (KERNEL_PACKAGE.to_owned(), v),
                None => (entry.package, entry.version),
            };
            entries.push(ChangelogEntry {
                package,
                version,
                released_at,
                cves: cve_ids(&entry.body),
            });
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            match open.as_mut() {
                Some(entry) => {
                    entry.body.push_str(line);
                    entry.body.push('\n');
                }
                None => {
                    return Err(feed_error(
                        file,
                        Some(n),
                        "a change line outside any entry: this is not a Debian changelog",
                    ));
                }
            }
            continue;
        }
        // Comments (Debian trims old entries with a `# Older entries ...` note) are skipped;
        // editor trailers and pre-Debian history end the parsable part, as in dpkg.
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with("Local variables:")
            || line.starts_with("Old Changelog:")
            || line.starts_with("vim:")
        {
            break;
        }
        if let Some(entry) = &open {
            return Err(feed_error(
                file,
                Some(entry.line),
                format!(
                    "the entry for {} {} has no trailer line before line {n}",
                    entry.package, entry.version
                ),
            ));
        }
        let (package, version) = parse_header(line).ok_or_else(|| {
            feed_error(
                file,
                Some(n),
                format!(
                    "expected an entry header `package (version) suite; urgency=...`, found {:?}",
                    truncate(line, 80)
                ),
            )
        })?;
        open = Some(Open {
            package,
            version,
            line: n,
            body: String::new(),
        });
    }
    if let Some(entry) = open {
        return Err(feed_error(
            file,
            Some(entry.line),
            format!(
                "the entry for {} {} ends without a trailer line; the file may be truncated",
                entry.package, entry.version
            ),
        ));
    }
    if entries.is_empty() {
        return Err(feed_error(file, None, "it contains no changelog entry"));
    }
    Ok(entries)
}

fn parse_header(line: &str) -> Option<(String, String)> {
    let (package, rest) = line.split_once(" (")?;
    let (version, rest) = rest.split_once(')')?;
    let valid_package = !package.is_empty()
        && package.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-')
        });
    (valid_package && debver::is_valid(version) && rest.contains(';'))
        .then(|| (package.to_owned(), version.to_owned()))
}

fn signed_source(package: &str, body: &str) -> Option<String> {
    if !package.starts_with("linux-signed") {
        return None;
    }
    let at = body.find("Sign kernel from linux ")?;
    let version = body[at + "Sign kernel from linux ".len()..]
        .split_whitespace()
        .next()?;
    debver::is_valid(version).then(|| version.to_owned())
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What one OSV advisory or KEV entry says about a CVE.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    pub cve: String,
    pub severity: Option<Rating>,
    pub cvss: Option<f64>,
    pub published_at: Option<i64>,
    pub kev_added_at: Option<i64>,
    pub kev_due_at: Option<i64>,
    pub summary: Option<String>,
}

/// Parsed contents of a feed file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub facts: Vec<Fact>,
    /// (package, version, cve, released_at)
    pub fixes: Vec<(String, String, String, Option<i64>)>,
    /// Records read but not stored (withdrawn advisories), for the summary.
    pub skipped: usize,
}

fn rfc3339_ms(file: &str, what: &str, s: &str) -> Result<i64, FeedError> {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| {
            feed_error(
                file,
                None,
                format!("{what} {s:?} is not an RFC 3339 time: {e}"),
            )
        })
}

/// `YYYY-MM-DD` as the start of that UTC day.
fn date_ms(file: &str, what: &str, s: &str) -> Result<i64, FeedError> {
    let date: jiff::civil::Date = s.parse().map_err(|e| {
        feed_error(
            file,
            None,
            format!("{what} {s:?} is not a YYYY-MM-DD date: {e}"),
        )
    })?;
    date.to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_millisecond())
        .map_err(|e| feed_error(file, None, format!("{what} {s:?}: {e}")))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Parses one OSV advisory, or a JSON array of them. Debian `linux` fixed versions become
/// package fixes; CVSS vectors are scored.
pub fn parse_osv(file: &str, text: &str) -> Result<Parsed, FeedError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| feed_error(file, Some(e.line()), format!("not valid JSON: {e}")))?;
    let records: Vec<&Value> = match &value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![&value],
        _ => {
            return Err(feed_error(
                file,
                None,
                "an OSV file is a JSON object (one advisory) or an array of them",
            ));
        }
    };
    let mut parsed = Parsed::default();
    for (index, record) in records.into_iter().enumerate() {
        let id = str_field(record, "id").ok_or_else(|| {
            feed_error(
                file,
                None,
                format!(
                    "record {} has no \"id\": this is not an OSV advisory (https://ossf.github.io/osv-schema/)",
                    index + 1
                ),
            )
        })?;
        let context = |m: String| feed_error(file, None, format!("advisory {id}: {m}"));
        if record.get("modified").and_then(Value::as_str).is_none() {
            return Err(context(
                "has no \"modified\" time, which every OSV advisory carries".into(),
            ));
        }
        if record.get("withdrawn").is_some_and(|w| !w.is_null()) {
            parsed.skipped += 1;
            continue;
        }
        let mut names = vec![id.to_owned()];
        for key in ["aliases", "upstream"] {
            if let Some(list) = record.get(key).and_then(Value::as_array) {
                names.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
            }
        }
        let cves: BTreeSet<String> = names.iter().flat_map(|n| cve_ids(n)).collect();
        if cves.is_empty() {
            return Err(context(
                "names no CVE id (in id, aliases or upstream); klive tracks CVEs only".into(),
            ));
        }
        let (severity, cvss) = osv_severity(record).map_err(context)?;
        let published_at = str_field(record, "published")
            .map(|p| rfc3339_ms(file, "published", p))
            .transpose()?;
        let summary = str_field(record, "summary").map(|s| truncate(s, 300).to_owned());
        let mut fixed_versions = BTreeSet::new();
        for affected in record
            .get("affected")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let package = affected.get("package");
            let ecosystem = package
                .and_then(|p| str_field(p, "ecosystem"))
                .unwrap_or("");
            let name = package.and_then(|p| str_field(p, "name")).unwrap_or("");
            if !ecosystem.starts_with("Debian") || name != KERNEL_PACKAGE {
                continue;
            }
            for range in affected
                .get("ranges")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if str_field(range, "type") != Some("ECOSYSTEM") {
                    continue;
                }
                for event in range
                    .get("events")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(fixed) = str_field(event, "fixed") {
                        if !debver::is_valid(fixed) {
                            return Err(context(format!(
                                "fixed version {fixed:?} is not a Debian version"
                            )));
                        }
                        fixed_versions.insert(fixed.to_owned());
                    }
                }
            }
        }
        for cve in &cves {
            parsed.facts.push(Fact {
                cve: cve.clone(),
                severity,
                cvss,
                published_at,
                kev_added_at: None,
                kev_due_at: None,
                summary: summary.clone(),
            });
            for version in &fixed_versions {
                parsed.fixes.push((
                    KERNEL_PACKAGE.to_owned(),
                    version.clone(),
                    cve.clone(),
                    None,
                ));
            }
        }
    }
    if parsed.facts.is_empty() && parsed.skipped == 0 {
        return Err(feed_error(file, None, "it contains no advisory"));
    }
    Ok(parsed)
}

/// The highest CVSS score among the advisory's vectors, else a named severity.
fn osv_severity(record: &Value) -> Result<(Option<Rating>, Option<f64>), String> {
    let mut best: Option<f64> = None;
    let mut named: Option<Rating> = None;
    for s in record
        .get("severity")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = str_field(s, "type").unwrap_or("");
        let score = str_field(s, "score").unwrap_or("");
        if kind.starts_with("CVSS_V") {
            let parsed: cvss::Cvss = score
                .parse()
                .map_err(|e| format!("{kind} vector {score:?} does not parse: {e}"))?;
            let value = parsed.score();
            best = Some(best.map_or(value, |b: f64| b.max(value)));
        } else if let Some(r) = named_severity(score) {
            named = named.max(Some(r));
        }
    }
    if let Some(text) = record
        .get("database_specific")
        .and_then(|d| str_field(d, "severity"))
        .and_then(named_severity)
    {
        named = named.max(Some(text));
    }
    Ok(match best {
        Some(score) => (Some(Rating::from_cvss(score)), Some(score)),
        None => (named, None),
    })
}

fn named_severity(s: &str) -> Option<Rating> {
    match s.trim().to_ascii_lowercase().as_str() {
        "negligible" => Some(Rating::Low),
        "moderate" => Some(Rating::Medium),
        "important" => Some(Rating::High),
        other => Rating::parse(other).filter(|r| *r != Rating::Unrated),
    }
}

/// Parses the CISA KEV catalog (`known_exploited_vulnerabilities.json`).
pub fn parse_kev(file: &str, text: &str) -> Result<Parsed, FeedError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| feed_error(file, Some(e.line()), format!("not valid JSON: {e}")))?;
    let list = value
        .get("vulnerabilities")
        .and_then(Value::as_array)
        .filter(|_| value.get("catalogVersion").is_some())
        .ok_or_else(|| {
            feed_error(
                file,
                None,
                "not a CISA KEV catalog: expected an object with \"catalogVersion\" and \"vulnerabilities\"",
            )
        })?;
    let mut parsed = Parsed::default();
    for (index, item) in list.iter().enumerate() {
        let field = |key: &str| {
            str_field(item, key).ok_or_else(|| {
                feed_error(
                    file,
                    None,
                    format!("vulnerability {} has no {key:?}", index + 1),
                )
            })
        };
        let cve = field("cveID")?;
        if !is_cve_id(cve) {
            return Err(feed_error(
                file,
                None,
                format!("vulnerability {}: {cve:?} is not a CVE id", index + 1),
            ));
        }
        let added = date_ms(file, "dateAdded", field("dateAdded")?)?;
        // Due "by" that date: the end of that UTC day.
        let due = date_ms(file, "dueDate", field("dueDate")?)? + crate::store::history::DAY_MS - 1;
        parsed.facts.push(Fact {
            cve: cve.to_owned(),
            severity: None,
            cvss: None,
            published_at: None,
            kev_added_at: Some(added),
            kev_due_at: Some(due),
            summary: str_field(item, "vulnerabilityName").map(|s| truncate(s, 300).to_owned()),
        });
    }
    if parsed.facts.is_empty() {
        return Err(feed_error(file, None, "the catalog lists no vulnerability"));
    }
    Ok(parsed)
}

/// Parses a file of the given kind.
pub fn parse(source: Source, file: &str, bytes: &[u8]) -> Result<Parsed, FeedError> {
    let text = decompress(file, bytes)?;
    match source {
        Source::DebianChangelog => {
            let entries = parse_debian_changelog(file, &text)?;
            let mut parsed = Parsed::default();
            for e in entries {
                for cve in e.cves {
                    parsed.fixes.push((
                        e.package.clone(),
                        e.version.clone(),
                        cve,
                        Some(e.released_at),
                    ));
                }
            }
            if parsed.fixes.is_empty() {
                return Err(feed_error(
                    file,
                    None,
                    "no entry names a CVE; is this the changelog of a kernel package?",
                ));
            }
            Ok(parsed)
        }
        Source::Osv => parse_osv(file, &text),
        Source::Kev => parse_kev(file, &text),
    }
}

/// What an import stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub import_id: String,
    pub source: Source,
    pub file: String,
    pub fixes: usize,
    pub new_fixes: usize,
    pub facts: usize,
    pub cves: usize,
}

/// CVE knowledge of a service: `Cves::new(&service)`.
#[derive(Debug, Clone, Copy)]
pub struct Cves<'a>(&'a Service);

impl<'a> Cves<'a> {
    pub fn new(service: &'a Service) -> Cves<'a> {
        Cves(service)
    }

    /// Parses `bytes` completely, then stores it in one transaction with its audit record.
    /// Needs the approver role: CVE knowledge decides what the fleet is judged against.
    pub async fn import(
        &self,
        by: &AuthUser,
        source: Source,
        file: &str,
        bytes: &[u8],
    ) -> Result<ImportSummary, Error> {
        require(by, Role::Approver)?;
        let parsed = parse(source, file, bytes).map_err(|e| Error::InvalidFeed(e.to_string()))?;
        let digest = sha256_hex(bytes);
        let import_id = new_id()?;
        let now = self.0.now();
        let cves: BTreeSet<&str> = parsed
            .facts
            .iter()
            .map(|f| f.cve.as_str())
            .chain(parsed.fixes.iter().map(|f| f.2.as_str()))
            .collect();
        let mut tx = self.0.db().begin_audited().await?;
        store::insert_import(
            &mut tx,
            &NewImport {
                id: &import_id,
                source: source.as_str(),
                file_name: file,
                sha256: &digest,
                imported_at: now,
                imported_by: &by.name,
                records: (parsed.facts.len() + parsed.fixes.len()) as i64,
            },
        )
        .await?;
        let mut new_fixes = 0;
        for (package, version, cve, released_at) in &parsed.fixes {
            let fix = NewPackageFix {
                package,
                version,
                cve,
                import_id: &import_id,
                known_at: now,
                released_at: *released_at,
            };
            new_fixes += usize::from(store::insert_package_fix(&mut tx, &fix).await?);
        }
        let fact_source = format!("{}:{file}", source.as_str());
        let mut facts = 0;
        for f in &parsed.facts {
            let fact = NewFact {
                cve: &f.cve,
                import_id: &import_id,
                source: &fact_source,
                known_at: now,
                severity: f.severity,
                cvss: f.cvss,
                published_at: f.published_at,
                kev_added_at: f.kev_added_at,
                kev_due_at: f.kev_due_at,
                summary: f.summary.as_deref(),
            };
            facts += usize::from(store::insert_fact(&mut tx, &fact).await?);
        }
        audit::append(
            &mut tx,
            now,
            &Actor::User(by.name.clone()),
            "cve.import",
            &import_id,
            json!({"source": source.as_str(), "file": file, "sha256": digest,
                   "fixes": parsed.fixes.len(), "new_fixes": new_fixes, "facts": facts, "cves": cves.len()}),
        )
        .await?;
        tx.commit().await?;
        Ok(ImportSummary {
            import_id,
            source,
            file: file.to_owned(),
            fixes: parsed.fixes.len(),
            new_fixes,
            facts,
            cves: cves.len(),
        })
    }
}

/// The role check of the service, for the evidence modules.
pub(crate) fn require(by: &AuthUser, needed: Role) -> Result<(), Error> {
    if by.role >= needed {
        Ok(())
    } else {
        Err(Error::Forbidden {
            needed: needed.as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "linux-signed-amd64 (6.1.192+2) bookworm-security; urgency=high

  * Sign kernel from linux 6.1.192-2

  * ext4: fix NULL folio dereference (CVE-2026-11111)

 -- Salvatore Bonaccorso <carnil@debian.org>  Mon, 16 Nov 2026 11:17:40 +0100

linux (6.1.192-1) bookworm-security; urgency=high

  * New upstream stable update:
    - apparmor: fix out-of-bounds write when null terminating a label vec
      (CVE-2026-89761)
    - two at once (CVE-2026-1234, cve-2026-99999)

 -- Ben Hutchings <benh@debian.org>  Sat, 07 Nov 2026 10:00:00 +0000

linux (6.1.190-1) bookworm-security; urgency=high

  * no CVE here

 -- Ben Hutchings <benh@debian.org>  Sat, 31 Oct 2026 10:00:00 +0000
";

    #[test]
    fn changelog_entries_carry_their_cves_and_signed_entries_map_to_linux() {
        let entries = parse_debian_changelog("c", SAMPLE).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].package, "linux");
        assert_eq!(entries[0].version, "6.1.192-2");
        assert_eq!(
            entries[0].cves.iter().collect::<Vec<_>>(),
            ["CVE-2026-11111"]
        );
        assert_eq!(
            entries[1].cves.iter().collect::<Vec<_>>(),
            ["CVE-2026-1234", "CVE-2026-89761", "CVE-2026-99999"]
        );
        assert!(entries[2].cves.is_empty());
        assert_eq!(
            entries[1].released_at,
            "2026-11-07T10:00:00Z"
                .parse::<jiff::Timestamp>()
                .unwrap()
                .as_millisecond()
        );
    }

    #[test]
    fn malformed_changelogs_are_refused_with_the_line() {
        let truncated = &SAMPLE[..SAMPLE.find(" -- Ben").unwrap()];
        let e = parse_debian_changelog("c", truncated).unwrap_err();
        assert!(e.message.contains("without a trailer"), "{e}");
        assert_eq!(e.line, Some(9));
        let e = parse_debian_changelog("c", "hello world\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        let bad_date = SAMPLE.replace("Sat, 07 Nov 2026", "Caturday");
        assert!(parse_debian_changelog("c", &bad_date).is_err());
        assert!(parse_debian_changelog("c", "").is_err());
        assert!(parse(Source::DebianChangelog, "x", &[0x1f, 0x8b, 0, 1, 2]).is_err());
    }

    #[test]
    fn cve_ids_are_found_and_normalised() {
        let ids =
            cve_ids("x CVE-2024-1 CVE-2024-12345, (cve-2023-0001) CVE-20x4-1111 CVE-2024-12345678");
        assert_eq!(
            ids.into_iter().collect::<Vec<_>>(),
            ["CVE-2023-0001", "CVE-2024-12345"]
        );
        assert!(is_cve_id("CVE-2024-26581"));
        assert!(!is_cve_id("DEBIAN-CVE-2024-26581"));
    }

    #[test]
    fn osv_and_kev_samples_parse_and_bad_ones_are_refused() {
        let osv = r#"{"schema_version":"1.6.0","id":"DEBIAN-CVE-2024-26581","modified":"2024-05-01T00:00:00Z",
            "published":"2024-02-20T13:15:00Z","upstream":["CVE-2024-26581"],"summary":"netfilter: nft_set_rbtree",
            "severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"}],
            "affected":[{"package":{"ecosystem":"Debian:12","name":"linux"},
              "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"6.1.82-1"}]}]}]}"#;
        let p = parse_osv("o", osv).unwrap();
        assert_eq!(p.facts[0].cve, "CVE-2024-26581");
        assert_eq!(p.facts[0].severity, Some(Rating::High));
        assert!((p.facts[0].cvss.unwrap() - 7.8).abs() < 0.01);
        assert_eq!(p.fixes[0].1, "6.1.82-1");
        assert!(
            parse_osv("o", r#"{"foo":1}"#)
                .unwrap_err()
                .message
                .contains("not an OSV")
        );
        assert!(parse_osv("o", &osv.replace("CVSS:3.1/AV:L", "CVSS:3.1/AV:Q")).is_err());
        assert!(parse_osv("o", "{").is_err());

        let kev = r#"{"title":"CISA Catalog of Known Exploited Vulnerabilities","catalogVersion":"2024.06.13",
            "dateReleased":"2024-06-13T17:09:06.0751Z","count":1,"vulnerabilities":[{"cveID":"CVE-2024-1086",
            "vendorProject":"Linux","product":"Kernel","vulnerabilityName":"Linux Kernel Use-After-Free Vulnerability",
            "dateAdded":"2024-05-30","shortDescription":"x","requiredAction":"Apply mitigations","dueDate":"2024-06-20",
            "knownRansomwareCampaignUse":"Known","notes":"","cwes":["CWE-416"]}]}"#;
        let k = parse_kev("k", kev).unwrap();
        assert_eq!(k.facts[0].cve, "CVE-2024-1086");
        let due = k.facts[0].kev_due_at.unwrap();
        assert_eq!(
            jiff::Timestamp::from_millisecond(due).unwrap().to_string(),
            "2024-06-20T23:59:59.999Z"
        );
        assert!(parse_kev("k", r#"{"vulnerabilities":[]}"#).is_err());
        assert!(parse_kev("k", &kev.replace("2024-06-20", "next week")).is_err());
    }
}
