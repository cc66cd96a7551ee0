//! Findings: for every host and CVE, when the server knew the host was exposed, when and how it
//! stopped being exposed, the deadline the policy in force at detection gave it, and a verdict.
//! Everything is computed from the append-only records (host history, CVE knowledge with the
//! time it was learnt, releases with their channel history, policies, exceptions) as they stood
//! at an "as of" time, so asking about a past date gives the answer that was true then.
//!
//! Rules (also printed in the report):
//! - a host is exposed to a CVE when its kernel lacks the fix — the Debian `linux` changelog or
//!   OSV name the CVE at a later package version than the host's, or a release for the host's
//!   build lists it — and no `applied` live patch level of that build up to the applied one
//!   lists it;
//! - a finding opens at the later of "the host ran the exposed state" and "the server knew";
//!   it closes when the exposure ends: by a live patch level, by a kernel change (reboot into a
//!   fixed kernel) or by revocation of the host (not counted as remediated);
//! - severity is the one known at detection (release manifests first, then OSV); a CVE unrated
//!   at detection takes the first rating that arrives later; otherwise it stays `unrated`;
//! - due = clock start + the policy's days for the severity; with `kev_shortens`, a CISA KEV
//!   due date known before the finding ended replaces it when earlier, but never less than
//!   `kev_floor_days` after detection;
//! - an exception for the CVE (on that host or all hosts) active when the finding ended (fix
//!   or as-of) turns a late or overdue verdict into `excepted`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use klive_format::evidence::{ClockStart, ExceptionRecord, Finding, FixMethod, Rating, Verdict};
use klive_format::release::ReleaseManifest;

use crate::clock::{rfc3339, write_rfc3339};
use crate::domain::Service;
use crate::error::Error;
use crate::evidence::cve::KERNEL_PACKAGE;
use crate::evidence::policy::{Policies, PolicyVersion, in_force};
use crate::store::as_of;
pub use crate::store::as_of::HostRow;
use crate::store::cve as cve_store;
use crate::store::history::{DAY_MS, HostState};
use klive_format::debver;

/// A release as known at the as-of time.
#[derive(Debug, Clone)]
pub struct ReleaseRow {
    pub id: String,
    pub level: i64,
    pub published_at: i64,
    pub published_by: String,
    pub withdrawn_at: Option<i64>,
    /// (cve, rating, cvss)
    fixes: Vec<(u32, Rating, Option<f64>)>,
    /// (channel, since)
    pub channels: Vec<(String, i64)>,
}

/// A CVE fixed by a Debian version: when the server learnt it and when the version was
/// released.
#[derive(Debug, Clone, Copy)]
struct PackageFix {
    cve: u32,
    known_at: i64,
    released_at: Option<i64>,
}

#[derive(Debug, Clone)]
struct ReleaseRating {
    known_at: i64,
    rating: Rating,
    cvss: Option<f64>,
    source: String,
}

/// A finding while it is open.
#[derive(Debug, Clone)]
struct Exposure {
    detected: i64,
    kernel: Arc<str>,
    build: Option<String>,
}

/// How and when an exposure ended.
#[derive(Debug, Clone)]
struct Closure {
    at: i64,
    method: FixMethod,
    level: Option<i64>,
    kernel: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
struct FactRow {
    known_at: i64,
    source: String,
    severity: Option<Rating>,
    cvss: Option<f64>,
    published_at: Option<i64>,
    kev_due_at: Option<i64>,
}

/// What the server knew about CVEs at the as-of time.
#[derive(Debug, Default)]
pub struct Knowledge {
    pub as_of: i64,
    names: Vec<String>,
    index: HashMap<String, u32>,
    /// Debian `linux` versions, ascending, each with (cve, known_at, released_at).
    debian: Vec<(String, Vec<PackageFix>)>,
    facts: Vec<Vec<FactRow>>,
    /// Release-derived ratings per CVE: (known_at, rating, cvss, source).
    release_ratings: Vec<Vec<ReleaseRating>>,
    releases: HashMap<String, Vec<ReleaseRow>>,
}

impl Knowledge {
    fn intern(&mut self, cve: &str) -> u32 {
        if let Some(i) = self.index.get(cve) {
            return *i;
        }
        let i = self.names.len() as u32;
        self.names.push(cve.to_owned());
        self.index.insert(cve.to_owned(), i);
        self.facts.push(Vec::new());
        self.release_ratings.push(Vec::new());
        i
    }

    pub fn cve_name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }

    pub fn cve_count(&self) -> usize {
        self.names.len()
    }

    /// True when the server can assess a kernel: Debian version data or a release for it.
    pub fn knows_kernel(&self, package_version: Option<&str>, build_id: Option<&str>) -> bool {
        (package_version.is_some() && !self.debian.is_empty())
            || build_id.is_some_and(|b| self.releases.contains_key(b))
    }

    /// Loads what was known at `as_of`.
    pub async fn load(service: &Service, as_of: i64) -> Result<Knowledge, Error> {
        let mut k = Knowledge {
            as_of,
            ..Knowledge::default()
        };
        let db = service.db();
        let fixes = cve_store::package_fixes(db, KERNEL_PACKAGE, as_of).await?;
        let mut by_version: BTreeMap<String, Vec<PackageFix>> = BTreeMap::new();
        for r in fixes {
            let i = k.intern(&r.cve);
            by_version.entry(r.version).or_default().push(PackageFix {
                cve: i,
                known_at: r.known_at,
                released_at: r.released_at,
            });
        }
        let mut debian: Vec<_> = by_version.into_iter().collect();
        debian.sort_by(|a, b| debver::compare(&a.0, &b.0));
        k.debian = debian;

        for r in cve_store::facts(db, as_of).await? {
            let i = k.intern(&r.cve);
            k.facts[i as usize].push(FactRow {
                known_at: r.known_at,
                source: r.source,
                severity: r.severity,
                cvss: r.cvss,
                published_at: r.published_at,
                kev_due_at: r.kev_due_at,
            });
        }

        let rows = as_of::releases(db, as_of).await?;
        let channels = as_of::release_channels(db, as_of).await?;
        let mut by_release: HashMap<String, Vec<(String, i64)>> = HashMap::new();
        for c in channels {
            by_release
                .entry(c.release_id)
                .or_default()
                .push((c.channel, c.since));
        }
        for r in rows {
            let id = r.id;
            let manifest: ReleaseManifest = serde_json::from_str(&r.manifest)
                .map_err(|e| Error::Corrupt(format!("stored manifest of {id}: {e}")))?;
            let published_at = r.published_at;
            let fixes = manifest
                .fixes
                .iter()
                .map(|f| {
                    let i = k.intern(&f.cve);
                    let rating = Rating::from(f.severity);
                    let cvss = f.cvss.map(f64::from);
                    k.release_ratings[i as usize].push(ReleaseRating {
                        known_at: published_at,
                        rating,
                        cvss,
                        source: format!("release:{id}"),
                    });
                    (i, rating, cvss)
                })
                .collect();
            k.releases.entry(r.build_id).or_default().push(ReleaseRow {
                channels: by_release.remove(&id).unwrap_or_default(),
                id,
                level: r.level,
                published_at,
                published_by: r.published_by,
                withdrawn_at: r.withdrawn_at.filter(|w| *w <= as_of),
                fixes,
            });
        }
        for ratings in &mut k.release_ratings {
            ratings.sort_by_key(|r| r.known_at);
        }
        Ok(k)
    }

    /// CVEs a kernel lacks, with the time the server learnt each: (cve, known_at), sorted.
    fn affected(&self, package_version: Option<&str>, build_id: Option<&str>) -> Vec<(u32, i64)> {
        let mut out: HashMap<u32, i64> = HashMap::new();
        if let Some(pv) = package_version {
            let mut fixed_here: std::collections::HashSet<u32> = Default::default();
            for (version, cves) in &self.debian {
                let later = debver::compare(version, pv) == std::cmp::Ordering::Greater;
                for fix in cves {
                    if later {
                        let e = out.entry(fix.cve).or_insert(fix.known_at);
                        *e = (*e).min(fix.known_at);
                    } else {
                        fixed_here.insert(fix.cve);
                    }
                }
            }
            out.retain(|c, _| !fixed_here.contains(c));
        }
        if let Some(b) = build_id {
            for r in self.releases.get(b).into_iter().flatten() {
                for (c, _, _) in &r.fixes {
                    let e = out.entry(*c).or_insert(r.published_at);
                    *e = (*e).min(r.published_at);
                }
            }
        }
        let mut v: Vec<_> = out.into_iter().collect();
        v.sort_unstable();
        v
    }

    /// CVEs fixed by live patch level `level` of `build_id` (levels are cumulative).
    fn fixed_by_level(&self, build_id: &str, level: i64) -> std::collections::HashSet<u32> {
        self.releases
            .get(build_id)
            .into_iter()
            .flatten()
            .filter(|r| r.level <= level)
            .flat_map(|r| r.fixes.iter().map(|f| f.0))
            .collect()
    }

    /// The exposed CVEs of one host state, with their known_at.
    fn exposure(&self, s: &HostState) -> Vec<(u32, i64)> {
        let mut affected = self.affected(s.package_version.as_deref(), s.build_id.as_deref());
        if let (Some(b), Some(level)) = (s.build_id.as_deref(), s.effective_level()) {
            let fixed = self.fixed_by_level(b, level);
            affected.retain(|(c, _)| !fixed.contains(c));
        }
        affected
    }

    /// (rating, cvss, source) at detection, per the module's rules.
    fn rating(&self, cve: u32, detected: i64) -> (Rating, Option<f64>, String) {
        let rel = &self.release_ratings[cve as usize];
        if let Some(r) = rel.iter().rev().find(|r| r.known_at <= detected) {
            return (r.rating, r.cvss, r.source.clone());
        }
        let facts = &self.facts[cve as usize];
        if let Some(f) = facts
            .iter()
            .rev()
            .find(|f| f.known_at <= detected && f.severity.is_some())
        {
            return (
                f.severity.unwrap_or(Rating::Unrated),
                f.cvss,
                f.source.clone(),
            );
        }
        let later_rel = rel
            .first()
            .map(|r| (r.known_at, r.rating, r.cvss, r.source.clone()));
        let later_fact = facts.iter().find(|f| f.severity.is_some()).map(|f| {
            (
                f.known_at,
                f.severity.unwrap_or(Rating::Unrated),
                f.cvss,
                f.source.clone(),
            )
        });
        match (later_rel, later_fact) {
            (Some(a), Some(b)) => {
                let x = if a.0 <= b.0 { a } else { b };
                (x.1, x.2, x.3)
            }
            (Some(x), None) | (None, Some(x)) => (x.1, x.2, x.3),
            (None, None) => (Rating::Unrated, None, "none".into()),
        }
    }

    fn kev_due(&self, cve: u32, until: i64) -> Option<i64> {
        self.facts[cve as usize]
            .iter()
            .filter(|f| f.known_at <= until)
            .filter_map(|f| f.kev_due_at)
            .min()
    }

    fn is_kev(&self, cve: u32) -> bool {
        self.facts[cve as usize]
            .iter()
            .any(|f| f.kev_due_at.is_some())
    }

    fn published(&self, cve: u32) -> Option<i64> {
        self.facts[cve as usize]
            .iter()
            .filter_map(|f| f.published_at)
            .min()
    }

    /// When a fix was first available to a host on `build_id` in `channel`.
    fn fix_available(&self, cve: u32, build_id: Option<&str>, channel: &str) -> Option<i64> {
        let from_release = build_id
            .and_then(|b| self.releases.get(b))
            .into_iter()
            .flatten()
            .filter(|r| r.fixes.iter().any(|f| f.0 == cve))
            .flat_map(|r| r.channels.iter().filter(|c| c.0 == channel).map(|c| c.1))
            .min();
        let from_debian = self
            .debian
            .iter()
            .flat_map(|(_, cves)| {
                cves.iter()
                    .filter(|c| c.cve == cve)
                    .filter_map(|c| c.released_at)
            })
            .min();
        match (from_release, from_debian) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Releases with their channel history, oldest first, for the change population.
    pub fn release_rows(&self) -> Vec<&ReleaseRow> {
        let mut out: Vec<&ReleaseRow> = self.releases.values().flatten().collect();
        out.sort_by(|a, b| {
            a.published_at
                .cmp(&b.published_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        out
    }

    /// CVEs a release lists as fixed.
    pub fn release_fixes(&self, r: &ReleaseRow) -> Vec<&str> {
        r.fixes.iter().map(|f| self.cve_name(f.0)).collect()
    }
}

/// A finding with its times in ms, for statistics; [`Assessment::record`] renders it.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingCalc {
    pub host: u32,
    pub cve: u32,
    pub severity: Rating,
    pub severity_source: Arc<str>,
    pub kev: bool,
    pub kernel_release: Arc<str>,
    pub detected_at: i64,
    pub clock_start_at: i64,
    pub clock_start_basis: ClockStart,
    pub due_at: i64,
    pub policy_version: u32,
    pub fixed_at: Option<i64>,
    pub fix_method: Option<FixMethod>,
    pub fixed_level: Option<i64>,
    pub fixed_kernel: Option<Arc<str>>,
    pub verdict: Verdict,
    pub exception: Option<u32>,
}

impl FindingCalc {
    /// Open at `t` (detected at or before, not yet fixed).
    pub fn open_at(&self, t: i64) -> bool {
        self.detected_at <= t && self.fixed_at.is_none_or(|f| f > t)
    }

    /// Time to patch, for findings fixed by a live patch or a kernel.
    pub fn time_to_patch(&self) -> Option<i64> {
        match self.fix_method {
            Some(FixMethod::Livepatch | FixMethod::Kernel) => {
                self.fixed_at.map(|f| (f - self.clock_start_at).max(0))
            }
            _ => None,
        }
    }

    pub fn remediated(&self) -> bool {
        matches!(
            self.fix_method,
            Some(FixMethod::Livepatch | FixMethod::Kernel)
        )
    }
}

/// The fleet's findings as of a time, with what they were computed from.
#[derive(Debug)]
pub struct Assessment {
    pub as_of: i64,
    pub knowledge: Knowledge,
    pub hosts: Vec<HostRow>,
    /// Each host's history rows up to as-of, by host index.
    pub timelines: Vec<Vec<HostState>>,
    pub findings: Vec<FindingCalc>,
    pub policies: Vec<PolicyVersion>,
    pub exceptions: Vec<(i64, i64, ExceptionRecord)>,
    /// Where the time went (step, milliseconds), for the benchmark.
    pub timings: Vec<(&'static str, u128)>,
}

impl Assessment {
    /// Renders a finding for the populations and the API.
    pub fn record(&self, f: &FindingCalc) -> Finding {
        let host = &self.hosts[f.host as usize];
        Finding {
            host_id: host.id.clone(),
            hostname: host.hostname.clone(),
            cve: self.knowledge.cve_name(f.cve).to_owned(),
            severity: f.severity,
            severity_source: f.severity_source.to_string(),
            kev: f.kev,
            kernel_release: f.kernel_release.to_string(),
            detected_at: rfc3339(f.detected_at),
            clock_start_at: rfc3339(f.clock_start_at),
            clock_start_basis: f.clock_start_basis.as_str().to_owned(),
            due_at: rfc3339(f.due_at),
            policy_version: f.policy_version,
            fixed_at: f.fixed_at.map(rfc3339),
            fix_method: f.fix_method,
            fixed_level: f.fixed_level.and_then(|l| u32::try_from(l).ok()),
            fixed_kernel: f.fixed_kernel.as_ref().map(|k| k.to_string()),
            time_to_patch_secs: f.time_to_patch().map(|ms| (ms / 1000) as u64),
            verdict: f.verdict,
            exception_id: f
                .exception
                .map(|i| self.exceptions[i as usize].2.id.clone()),
        }
    }

    /// [`Assessment::record`] into `out`, reusing its strings: the pack renders every finding
    /// of the period (millions) one at a time.
    pub fn fill_record(&self, f: &FindingCalc, out: &mut Finding) {
        fn set(s: &mut String, v: &str) {
            s.clear();
            s.push_str(v);
        }
        fn set_opt(s: &mut Option<String>, v: Option<&str>) {
            match (s.as_mut(), v) {
                (Some(s), Some(v)) => set(s, v),
                (None, Some(v)) => *s = Some(v.to_owned()),
                (_, None) => *s = None,
            }
        }
        let host = &self.hosts[f.host as usize];
        set(&mut out.host_id, &host.id);
        set(&mut out.hostname, &host.hostname);
        set(&mut out.cve, self.knowledge.cve_name(f.cve));
        out.severity = f.severity;
        set(&mut out.severity_source, &f.severity_source);
        out.kev = f.kev;
        set(&mut out.kernel_release, &f.kernel_release);
        write_rfc3339(&mut out.detected_at, f.detected_at);
        write_rfc3339(&mut out.clock_start_at, f.clock_start_at);
        set(&mut out.clock_start_basis, f.clock_start_basis.as_str());
        write_rfc3339(&mut out.due_at, f.due_at);
        out.policy_version = f.policy_version;
        match f.fixed_at {
            Some(at) => write_rfc3339(out.fixed_at.get_or_insert_with(String::new), at),
            None => out.fixed_at = None,
        }
        out.fix_method = f.fix_method;
        out.fixed_level = f.fixed_level.and_then(|l| u32::try_from(l).ok());
        set_opt(&mut out.fixed_kernel, f.fixed_kernel.as_deref());
        out.time_to_patch_secs = f.time_to_patch().map(|ms| (ms / 1000) as u64);
        out.verdict = f.verdict;
        set_opt(
            &mut out.exception_id,
            f.exception
                .map(|i| self.exceptions[i as usize].2.id.as_str()),
        );
    }

    /// The latest state of a host at or before `t`.
    pub fn state_at(&self, host: usize, t: i64) -> Option<&HostState> {
        self.timelines[host].iter().rev().find(|s| s.at <= t)
    }
}

/// Loads everything and computes every finding as of `as_of`.
pub async fn assess(service: &Service, as_of: i64) -> Result<Assessment, Error> {
    let started = std::time::Instant::now();
    let knowledge = Knowledge::load(service, as_of).await?;
    let mut hosts = as_of::hosts(service.db(), as_of).await?;
    for h in &mut hosts {
        h.revoked_at = h.revoked_at.filter(|t| *t <= as_of);
    }
    let loaded = started.elapsed().as_millis();
    let timelines = load_timelines(service, &hosts, as_of).await?;
    let read = started.elapsed().as_millis();
    let policies = Policies::new(service).sla_policies().await?;
    let exceptions = Policies::new(service).exceptions(as_of).await?;
    let mut assessment = Assessment {
        as_of,
        knowledge,
        hosts,
        timelines,
        findings: Vec::new(),
        policies,
        exceptions,
        timings: Vec::new(),
    };
    assessment.findings = compute_parallel(&assessment);
    assessment.timings = vec![
        ("knowledge_and_hosts", loaded),
        ("host_history", read - loaded),
        ("findings_compute", started.elapsed().as_millis() - read),
    ];
    Ok(assessment)
}

/// Every host's history rows up to `as_of`, by host index: streamed (the fleet has millions
/// of rows) and decoded by column position; rows of hosts registered after `as_of` are
/// skipped.
async fn load_timelines(
    service: &Service,
    hosts: &[HostRow],
    as_of: i64,
) -> Result<Vec<Vec<HostState>>, Error> {
    let mut timelines: Vec<Vec<HostState>> = vec![Vec::new(); hosts.len()];
    let positions: HashMap<&str, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.id.as_str(), i))
        .collect();
    // Rows arrive grouped by host: look the host up once per group.
    let mut current: Option<(String, Option<usize>)> = None;
    as_of::for_each_history_row(
        service.db(),
        as_of,
        |host_id| match &current {
            Some((id, index)) if id == host_id => *index,
            _ => {
                let index = positions.get(host_id).copied();
                current = Some((host_id.to_owned(), index));
                index
            }
        },
        |index, state| timelines[index].push(state),
    )
    .await?;
    Ok(timelines)
}

/// [`compute`] over the hosts split in two halves on two threads (each host's findings depend
/// on that host's history alone); the result is in the same order as one pass. The threshold
/// is low enough that the 1,000-host evidence test, whose independent model checks every
/// figure, takes the two-thread path.
fn compute_parallel(a: &Assessment) -> Vec<FindingCalc> {
    let n = a.hosts.len();
    if n < 512 {
        return compute(a, 0..n);
    }
    let mid = n / 2;
    std::thread::scope(|scope| {
        let second = scope.spawn(|| compute(a, mid..n));
        let mut out = compute(a, 0..mid);
        match second.join() {
            Ok(rest) => out.extend(rest),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        out
    })
}

type ExposureKey = (Option<String>, Option<String>, Option<i64>);

fn compute(a: &Assessment, hosts: std::ops::Range<usize>) -> Vec<FindingCalc> {
    let k = &a.knowledge;
    let mut cache: HashMap<ExposureKey, Arc<Vec<(u32, i64)>>> = HashMap::new();
    let mut kernels: HashMap<String, Arc<str>> = HashMap::new();
    let mut out = Vec::new();
    for host_index in hosts {
        let host = &a.hosts[host_index];
        let states = &a.timelines[host_index];
        let end = host.revoked_at.unwrap_or(a.as_of).min(a.as_of);
        let mut open: BTreeMap<u32, Exposure> = BTreeMap::new();
        let mut closed: Vec<(u32, Exposure, Closure)> = Vec::new();
        let mut previous: Option<&HostState> = None;
        for (i, s) in states.iter().enumerate() {
            if s.at > end {
                break;
            }
            let next = states.get(i + 1).map_or(end, |n| n.at.min(end));
            let key = (
                s.package_version.clone(),
                s.build_id.clone(),
                s.effective_level(),
            );
            let exposed = cache
                .entry(key)
                .or_insert_with(|| Arc::new(k.exposure(s)))
                .clone();
            let kernel: Arc<str> = kernels
                .entry(s.kernel_release.clone().unwrap_or_default())
                .or_insert_with_key(|r| Arc::from(r.as_str()))
                .clone();
            let kernel_changed = previous.is_some_and(|p| {
                p.build_id != s.build_id || p.package_version != s.package_version
            });
            let gone: Vec<u32> = open
                .keys()
                .filter(|c| exposed.binary_search_by_key(*c, |e| e.0).is_err())
                .copied()
                .collect();
            for c in gone {
                if let Some(exposure) = open.remove(&c) {
                    let closure = if kernel_changed {
                        Closure {
                            at: s.at,
                            method: FixMethod::Kernel,
                            level: None,
                            kernel: Some(kernel.clone()),
                        }
                    } else {
                        Closure {
                            at: s.at,
                            method: FixMethod::Livepatch,
                            level: s.effective_level(),
                            kernel: None,
                        }
                    };
                    closed.push((c, exposure, closure));
                }
            }
            let last = i + 1 == states.len() || next == end;
            for (c, known) in exposed.iter() {
                if open.contains_key(c) {
                    continue;
                }
                let detected = s.at.max(*known);
                if detected < next || (last && detected <= end) {
                    open.insert(
                        *c,
                        Exposure {
                            detected,
                            kernel: kernel.clone(),
                            build: s.build_id.clone(),
                        },
                    );
                }
            }
            previous = Some(s);
        }
        for (c, exposure) in std::mem::take(&mut open) {
            match host.revoked_at {
                Some(at) if at <= a.as_of => closed.push((
                    c,
                    exposure,
                    Closure {
                        at,
                        method: FixMethod::HostRevoked,
                        level: None,
                        kernel: None,
                    },
                )),
                _ => out.push(judge(a, host_index, c, &exposure, None)),
            }
        }
        for (c, exposure, closure) in closed {
            out.push(judge(a, host_index, c, &exposure, Some(closure)));
        }
    }
    out
}

fn judge(
    a: &Assessment,
    host_index: usize,
    cve: u32,
    exposure: &Exposure,
    fixed: Option<Closure>,
) -> FindingCalc {
    let k = &a.knowledge;
    let host = &a.hosts[host_index];
    let detected = exposure.detected;
    let (severity, _cvss, source) = k.rating(cve, detected);
    let policy = in_force(&a.policies, detected).map(|p| &p.policy);
    let ended = fixed.as_ref().map_or(a.as_of, |f| f.at);
    let (clock_start_at, basis) = match policy.map(|p| p.rules.clock_start) {
        Some(ClockStart::Published) => match k.published(cve) {
            Some(p) => (p, ClockStart::Published),
            None => (detected, ClockStart::Detected),
        },
        Some(ClockStart::FixAvailable) => {
            match k.fix_available(cve, exposure.build.as_deref(), &host.channel) {
                Some(t) => (t, ClockStart::FixAvailable),
                None => (detected, ClockStart::Detected),
            }
        }
        _ => (detected, ClockStart::Detected),
    };
    let mut due_at = match policy {
        Some(p) => clock_start_at + i64::from(p.rules.days(severity)) * DAY_MS,
        None => i64::MAX,
    };
    if let Some(p) = policy
        && p.rules.kev_shortens
        && let Some(kev_due) = k.kev_due(cve, ended)
    {
        due_at = due_at.min(kev_due.max(detected + i64::from(p.rules.kev_floor_days) * DAY_MS));
    }
    let mut verdict = match &fixed {
        Some(c) if c.method == FixMethod::HostRevoked => Verdict::HostRetired,
        Some(c) if c.at <= due_at => Verdict::FixedOnTime,
        Some(_) => Verdict::FixedLate,
        None if a.as_of <= due_at => Verdict::OpenWithinSla,
        None => Verdict::OpenOverdue,
    };
    let mut exception = None;
    if matches!(verdict, Verdict::FixedLate | Verdict::OpenOverdue) {
        let name = k.cve_name(cve);
        exception = a
            .exceptions
            .iter()
            .position(|(created, expires, e)| {
                e.cve == name
                    && e.host_id.as_deref().is_none_or(|h| h == host.id)
                    && *created <= ended
                    && *expires >= ended
            })
            .map(|i| i as u32);
        if exception.is_some() {
            verdict = Verdict::Excepted;
        }
    }
    FindingCalc {
        host: host_index as u32,
        cve,
        severity,
        severity_source: Arc::from(source.as_str()),
        kev: k.is_kev(cve),
        kernel_release: exposure.kernel.clone(),
        detected_at: detected,
        clock_start_at,
        clock_start_basis: basis,
        due_at,
        policy_version: policy.map_or(0, |p| p.version),
        fixed_at: fixed.as_ref().map(|c| c.at),
        fix_method: fixed.as_ref().map(|c| c.method),
        fixed_level: fixed.as_ref().and_then(|c| c.level),
        fixed_kernel: fixed.and_then(|c| c.kernel),
        verdict,
        exception,
    }
}

/// Nearest-rank percentile (`q` in 0..=100) of sorted values: the smallest value with at
/// least q% of the values at or below it; the workspace's one definition.
pub use klive_format::stats::nearest_rank as percentile;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=20).collect();
        assert_eq!(percentile(&v, 50), Some(10));
        assert_eq!(percentile(&v, 95), Some(19));
        assert_eq!(percentile(&v, 100), Some(20));
        assert_eq!(percentile(&[7], 95), Some(7));
        assert_eq!(percentile::<i64>(&[], 50), None);
    }
}
