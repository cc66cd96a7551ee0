//! CVE knowledge as imported: one `cve_imports` row per feed file, the package versions that
//! fix each CVE (`cve_package_fixes`) and what advisories say about it (`cve_facts`), each
//! with the time the server learnt it. Append-only.

use klive_format::evidence::Rating;

use crate::error::{Error, on_unique};
use crate::store::db::{Db, Tx};

/// One imported feed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewImport<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub file_name: &'a str,
    pub sha256: &'a str,
    pub imported_at: i64,
    pub imported_by: &'a str,
    pub records: i64,
}

/// A package version that fixes a CVE, learnt from import `import_id` at `known_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPackageFix<'a> {
    pub package: &'a str,
    pub version: &'a str,
    pub cve: &'a str,
    pub import_id: &'a str,
    pub known_at: i64,
    pub released_at: Option<i64>,
}

/// What one advisory of import `import_id` says about a CVE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewFact<'a> {
    pub cve: &'a str,
    pub import_id: &'a str,
    pub source: &'a str,
    pub known_at: i64,
    pub severity: Option<Rating>,
    pub cvss: Option<f64>,
    pub published_at: Option<i64>,
    pub kev_added_at: Option<i64>,
    pub kev_due_at: Option<i64>,
    pub summary: Option<&'a str>,
}

/// A stored package fix.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PackageFixRow {
    pub version: String,
    pub cve: String,
    pub known_at: i64,
    pub released_at: Option<i64>,
}

/// A stored fact; a severity the server does not know reads as none.
#[derive(Debug, Clone, PartialEq)]
pub struct FactRow {
    pub cve: String,
    pub source: String,
    pub known_at: i64,
    pub severity: Option<Rating>,
    pub cvss: Option<f64>,
    pub published_at: Option<i64>,
    pub kev_due_at: Option<i64>,
}

/// Records an import inside the caller's audited transaction; a file with the same name and
/// digest imported before is [`Error::AlreadyImported`].
pub async fn insert_import(tx: &mut Tx, i: &NewImport<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO cve_imports (id, source, file_name, sha256, imported_at, imported_by, records) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(i.id)
    .bind(i.source)
    .bind(i.file_name)
    .bind(i.sha256)
    .bind(i.imported_at)
    .bind(i.imported_by)
    .bind(i.records)
    .execute(&mut **tx)
    .await
    .map_err(|e| on_unique(e, Error::AlreadyImported(i.file_name.to_owned())))?;
    Ok(())
}

/// Stores a package fix unless that (package, version, cve) is known; true when stored.
pub async fn insert_package_fix(tx: &mut Tx, f: &NewPackageFix<'_>) -> Result<bool, Error> {
    let done = sqlx::query(
        "INSERT INTO cve_package_fixes (package, version, cve, import_id, known_at, released_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (package, version, cve) DO NOTHING",
    )
    .bind(f.package)
    .bind(f.version)
    .bind(f.cve)
    .bind(f.import_id)
    .bind(f.known_at)
    .bind(f.released_at)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Stores a fact unless the import already has one for that CVE; true when stored.
pub async fn insert_fact(tx: &mut Tx, f: &NewFact<'_>) -> Result<bool, Error> {
    let done = sqlx::query(
        "INSERT INTO cve_facts (cve, import_id, source, known_at, severity, cvss, published_at, kev_added_at, kev_due_at, summary) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (cve, import_id) DO NOTHING",
    )
    .bind(f.cve)
    .bind(f.import_id)
    .bind(f.source)
    .bind(f.known_at)
    .bind(f.severity.map(|s| s.as_str()))
    .bind(f.cvss)
    .bind(f.published_at)
    .bind(f.kev_added_at)
    .bind(f.kev_due_at)
    .bind(f.summary)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The fixes of `package` known at or before `as_of`, in no particular order.
pub async fn package_fixes(
    db: &Db,
    package: &str,
    as_of: i64,
) -> Result<Vec<PackageFixRow>, Error> {
    Ok(sqlx::query_as::<_, PackageFixRow>(
        "SELECT version, cve, known_at, released_at FROM cve_package_fixes WHERE package = $1 AND known_at <= $2",
    )
    .bind(package)
    .bind(as_of)
    .fetch_all(&db.pool)
    .await?)
}

/// The facts known at or before `as_of`, in the order they were learnt (then by import).
pub async fn facts(db: &Db, as_of: i64) -> Result<Vec<FactRow>, Error> {
    let rows = sqlx::query_as::<_, StoredFact>(
        "SELECT cve, source, known_at, severity, cvss, published_at, kev_due_at FROM cve_facts WHERE known_at <= $1 ORDER BY known_at, import_id",
    )
    .bind(as_of)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| FactRow {
            cve: r.cve,
            source: r.source,
            known_at: r.known_at,
            severity: r.severity.as_deref().and_then(Rating::parse),
            cvss: r.cvss,
            published_at: r.published_at,
            kev_due_at: r.kev_due_at,
        })
        .collect())
}

/// A fact as stored: [`FactRow`] with the severity's text.
#[derive(sqlx::FromRow)]
struct StoredFact {
    severity: Option<String>,
    cve: String,
    source: String,
    known_at: i64,
    cvss: Option<f64>,
    published_at: Option<i64>,
    kev_due_at: Option<i64>,
}

/// A CVE feed import as recorded (times in unix ms).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ImportRow {
    pub source: String,
    #[sqlx(rename = "file_name")]
    pub file: String,
    pub sha256: String,
    pub imported_at: i64,
    pub imported_by: String,
    pub records: i64,
}

/// The imports made at or before `until`, oldest first.
pub async fn imports_until(db: &Db, until: i64) -> Result<Vec<ImportRow>, Error> {
    Ok(sqlx::query_as::<_, ImportRow>(
        "SELECT source, file_name, sha256, imported_at, imported_by, records FROM cve_imports WHERE imported_at <= $1 ORDER BY imported_at, id",
    )
    .bind(until)
    .fetch_all(&db.pool)
    .await?)
}
