//! The evidence commands of `klive-server`: `cve import`, `policy`, `exception`, `report`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use klive_format::evidence::ClockStart;
use klive_server::domain::AuthUser;
use klive_server::evidence::cve::{Cves, Source};
use klive_server::evidence::policy::{Policies, PolicyChange};
use klive_server::evidence::report::{self, EvidenceKey};

use super::{Ctx, parse_duration};

#[derive(Subcommand)]
pub enum CveCommand {
    /// Import CVE knowledge: Debian kernel changelogs (changelog.gz of linux-image-*), OSV
    /// advisories, the CISA KEV catalog. Each file is checked whole first; a bad file changes
    /// nothing.
    Import {
        #[arg(long = "debian-changelog")]
        debian_changelog: Vec<PathBuf>,
        #[arg(long)]
        osv: Vec<PathBuf>,
        #[arg(long)]
        kev: Vec<PathBuf>,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: String,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print every SLA policy version.
    Show,
    /// Add a policy version effective now; findings detected earlier keep their version.
    Set {
        #[arg(long, default_value_t = 7)]
        critical: u32,
        #[arg(long, default_value_t = 30)]
        high: u32,
        #[arg(long, default_value_t = 90)]
        medium: u32,
        #[arg(long, default_value_t = 180)]
        low: u32,
        /// Days for CVEs no source rated.
        #[arg(long, default_value_t = 90)]
        unrated: u32,
        /// Ignore CISA KEV due dates.
        #[arg(long)]
        no_kev: bool,
        /// Days a KEV due date that already passed at detection still leaves.
        #[arg(long, default_value_t = 1)]
        kev_floor: u32,
        /// detected, published or fix_available.
        #[arg(long, default_value = "detected", value_parser = parse_clock)]
        clock_start: ClockStart,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: String,
    },
}

#[derive(Subcommand)]
pub enum ExceptionCommand {
    /// Accept the risk of a CVE (on one host, or all) until it expires.
    Add {
        cve: String,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        reason: String,
        #[arg(long, value_parser = parse_duration, default_value = "30d")]
        expires: u64,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: String,
    },
    List,
}

#[derive(Subcommand)]
pub enum ReportCommand {
    /// Write the SOC 2 evidence pack of a period into a new directory (approver or admin).
    Soc2 {
        /// First day (YYYY-MM-DD, from 00:00 UTC) or an RFC 3339 time.
        #[arg(long)]
        from: String,
        /// Last day (YYYY-MM-DD, until 24:00 UTC) or an RFC 3339 time.
        #[arg(long)]
        to: String,
        #[arg(long)]
        out: PathBuf,
        /// Skip the PDF even when Chromium is installed.
        #[arg(long)]
        no_pdf: bool,
        #[arg(long = "as", env = "KLIVE_USER")]
        actor: String,
    },
    /// Check a pack's signature and every file's hash; exit 1 and name the first bad file.
    Verify {
        dir: PathBuf,
        /// Expected public key (hex); default: this server's key when DATA has one.
        #[arg(long)]
        key: Option<String>,
    },
}

fn parse_clock(s: &str) -> Result<ClockStart, String> {
    ClockStart::parse(s)
        .ok_or_else(|| format!("{s:?} is not a clock start: detected, published or fix_available"))
}

/// `YYYY-MM-DD` (start of day, or end of day with `end`) or RFC 3339, in unix ms.
pub fn parse_time(s: &str, end: bool) -> Result<i64> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let date: jiff::civil::Date = s
        .parse()
        .with_context(|| format!("{s:?} is neither a date (YYYY-MM-DD) nor an RFC 3339 time"))?;
    let start = date
        .to_zoned(jiff::tz::TimeZone::UTC)
        .with_context(|| format!("{s:?} is out of range"))?
        .timestamp()
        .as_millisecond();
    Ok(if end {
        start + klive_server::store::history::DAY_MS - 1
    } else {
        start
    })
}

/// `cve import`.
pub async fn cve(ctx: &Ctx, command: CveCommand) -> Result<()> {
    let CveCommand::Import {
        debian_changelog,
        osv,
        kev,
        actor,
    } = command;
    let by = &ctx.user(&actor).await?;
    let files: Vec<(Source, PathBuf)> = debian_changelog
        .into_iter()
        .map(|p| (Source::DebianChangelog, p))
        .chain(osv.into_iter().map(|p| (Source::Osv, p)))
        .chain(kev.into_iter().map(|p| (Source::Kev, p)))
        .collect();
    if files.is_empty() {
        bail!("give at least one of --debian-changelog, --osv or --kev");
    }
    for (source, path) in files {
        import_file(ctx, by, source, &path).await?;
    }
    Ok(())
}

/// Imports one file of CVE knowledge, or says it was imported before.
async fn import_file(ctx: &Ctx, by: &AuthUser, source: Source, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match Cves::new(&ctx.service)
        .import(by, source, &name, &bytes)
        .await
    {
        Ok(s) => println!(
            "imported {} ({}): {} CVEs, {} package fixes ({} new), {} facts",
            path.display(),
            source.as_str(),
            s.cves,
            s.fixes,
            s.new_fixes,
            s.facts
        ),
        Err(klive_server::Error::AlreadyImported(_)) => {
            println!("{} was imported before; skipped", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("importing {}", path.display())),
    }
    Ok(())
}

pub async fn policy(ctx: &Ctx, command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Show => show_policies(ctx).await,
        PolicyCommand::Set {
            critical,
            high,
            medium,
            low,
            unrated,
            no_kev,
            kev_floor,
            clock_start,
            note,
            actor,
        } => {
            let change = PolicyChange {
                critical_days: critical,
                high_days: high,
                medium_days: medium,
                low_days: low,
                unrated_days: unrated,
                kev_shortens: !no_kev,
                kev_floor_days: kev_floor,
                clock_start,
                note,
            };
            set_policy(ctx, &actor, &change).await
        }
    }
}

/// `policy show`: every version.
async fn show_policies(ctx: &Ctx) -> Result<()> {
    println!(
        "version\teffective\tby\tcritical\thigh\tmedium\tlow\tunrated\tkev\tclock_start\tnote"
    );
    for v in Policies::new(&ctx.service).sla_policies().await? {
        let p = v.policy;
        let r = &p.rules;
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            p.version,
            p.effective_at,
            p.created_by,
            r.critical_days,
            r.high_days,
            r.medium_days,
            r.low_days,
            r.unrated_days,
            if r.kev_shortens { "yes" } else { "no" },
            r.clock_start.as_str(),
            r.note
        );
    }
    Ok(())
}

/// `policy set`.
async fn set_policy(ctx: &Ctx, actor: &str, change: &PolicyChange) -> Result<()> {
    let by = ctx.user(actor).await?;
    let p = Policies::new(&ctx.service)
        .set_sla_policy(&by, change)
        .await?;
    println!(
        "policy version {} in force from {} (applies to findings detected from now on)",
        p.version, p.effective_at
    );
    Ok(())
}

pub async fn exception(ctx: &Ctx, command: ExceptionCommand) -> Result<()> {
    match command {
        ExceptionCommand::Add {
            cve,
            host,
            reason,
            expires,
            actor,
        } => add_exception(ctx, &actor, &cve, host.as_deref(), &reason, expires).await,
        ExceptionCommand::List => list_exceptions(ctx).await,
    }
}

/// `exception add`.
async fn add_exception(
    ctx: &Ctx,
    actor: &str,
    cve: &str,
    host: Option<&str>,
    reason: &str,
    expires: u64,
) -> Result<()> {
    let by = ctx.user(actor).await?;
    let e = Policies::new(&ctx.service)
        .add_exception(&by, cve, host, reason, expires)
        .await?;
    println!("exception {} for {} until {}", e.id, e.cve, e.expires_at);
    Ok(())
}

/// `exception list`.
async fn list_exceptions(ctx: &Ctx) -> Result<()> {
    for (_, _, e) in Policies::new(&ctx.service).exceptions(i64::MAX).await? {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            e.id,
            e.cve,
            e.host_id.as_deref().unwrap_or("all"),
            e.created_by,
            e.expires_at,
            e.reason
        );
    }
    Ok(())
}

pub async fn report(ctx: &Ctx, command: ReportCommand) -> Result<()> {
    match command {
        ReportCommand::Soc2 {
            from,
            to,
            out,
            no_pdf,
            actor,
        } => soc2(ctx, &actor, &from, &to, &out, no_pdf).await,
        ReportCommand::Verify { dir, key } => verify(&ctx.data, &dir, key),
    }
}

/// `report soc2`.
async fn soc2(
    ctx: &Ctx,
    actor: &str,
    from: &str,
    to: &str,
    out: &Path,
    no_pdf: bool,
) -> Result<()> {
    let by = &ctx.user(actor).await?;
    let from = parse_time(from, false)?;
    let to = parse_time(to, true)?;
    let key = EvidenceKey::load_or_create(&ctx.data)?;
    let chromium = if no_pdf {
        None
    } else {
        report::find_chromium()
    };
    let pack =
        report::generate_pack(&ctx.service, by, &key, from, to, out, chromium.as_deref()).await?;
    let note = pack.pdf_note.clone();
    let s = &pack.summary;
    println!("evidence pack written to {}", out.display());
    if s.no_data {
        println!("no data: no host was in scope and no change was made in this period");
    }
    println!(
        "{} hosts in scope, {} findings, {} changes, audit chain {}",
        s.hosts_in_scope, s.findings, s.changes, s.audit_chain
    );
    print_pdf_outcome(chromium.as_deref(), note, no_pdf);
    println!("verify with: klive-server report verify {}", out.display());
    println!("reproduce with: {}", pack.command);
    Ok(())
}

/// Whether `report soc2` printed report.pdf, and why not.
fn print_pdf_outcome(chromium: Option<&Path>, note: Option<String>, no_pdf: bool) {
    match (chromium, note) {
        (None, _) if no_pdf => {
            println!("pdf: skipped (--no-pdf); print report.html from a browser")
        }
        (None, _) => println!(
            "pdf: not written (no chromium found; install it or set KLIVE_CHROMIUM); report.html has a print stylesheet"
        ),
        (Some(c), None) => println!("pdf: report.pdf printed with {}", c.display()),
        (Some(_), Some(e)) => {
            println!("pdf: not written ({e}); report.html has a print stylesheet")
        }
    }
}

/// `report verify`: needs no database.
pub fn verify(data: &Path, dir: &Path, key: Option<String>) -> Result<()> {
    let expected = match key {
        Some(k) => Some(k),
        None if EvidenceKey::path(data).exists() => {
            Some(EvidenceKey::load_or_create(data)?.public_hex)
        }
        None => None,
    };
    match report::verify_pack(dir, expected.as_deref()) {
        Ok(m) => {
            println!(
                "pack intact: {} files verified, signed by {}{}",
                m.files.len(),
                m.public_key,
                if expected.is_some() {
                    " (the expected key)"
                } else {
                    " (no expected key given: pass --key to pin it)"
                }
            );
            println!(
                "period {} to {}, generated {} by {}",
                m.period_from, m.period_to, m.generated_at, m.generated_by
            );
            Ok(())
        }
        Err(e) => bail!("pack verification failed: {e}"),
    }
}
