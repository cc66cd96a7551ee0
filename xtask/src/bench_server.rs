//! `cargo xtask bench server`: the release `klive-server` on loopback under a load generator
//! in this process (`ureq` over plain HTTP/1.1, one thread and keep-alive connection each), on
//! SQLite and on a throwaway PostgreSQL cluster. For each backend: 100,000 hosts registered
//! through `POST /api/v1/register`, then check-ins (`POST /api/v1/checkin`) and the trivial
//! `GET /api/v1/health` of the same server in the same run, side by side (the ratio is the
//! figure), then `GET /api/v1/fleet` over the 100,000 hosts. The Markdown section is
//! appended to BENCHMARKS.md.
//!
//! Plain HTTP (`serve --plain-http`): the figure is the server's work per request, not TLS;
//! TLS handshakes happen once per keep-alive connection for agents anyway.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use klive_format::api::{
    AppliedReport, CheckIn, EnrollTokenCreated, EnrollTokenRequest, RegisterRequest,
    RegisterResponse,
};
use klive_format::digest::sha256_hex;
use klive_format::release::{ModuleDigest, ReleaseManifest, TargetKernel};
use klive_format::stats::nearest_rank;
use klive_format::status::{KernelInfo, PatchState};
use klive_format::{BuildId, PatchLevel};

use crate::server;
use crate::vm::http::Client;

const HOSTS: usize = 100_000;
/// Hosts whose credentials the check-in load cycles through.
const CHECKIN_HOSTS: usize = 10_000;
const CONNECTIONS: usize = 32;
const REGISTER_CONNECTIONS: usize = 16;
const LOAD_SECS: u64 = 10;
const WARMUP_SECS: u64 = 2;
const BUILD_ID: &str = "3e0c8f6a1b2c4d5e3e0c8f6a1b2c4d5e3e0c8f6a";

/// Targets of the issue, on the 2-core machine.
const TARGET_CHECKINS_PER_SEC: f64 = 5000.0;
const TARGET_P99_MS: f64 = 50.0;
const TARGET_FLEET_MS: f64 = 200.0;

#[derive(Debug)]
struct Load {
    requests: usize,
    errors: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

impl Load {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }
}

#[derive(Debug)]
struct Figures {
    backend: &'static str,
    register: Load,
    first: Load,
    health: Load,
    checkin: Load,
    fleet_best: Duration,
    fleet_median: Duration,
    /// What `klive-server audit verify` said after the loads.
    audit: String,
}

pub fn run(root: &Path) -> Result<()> {
    crate::run(crate::cargo(&["build", "--release", "-p", "klive-server"]))
        .context("building the release klive-server failed")?;
    let bin = root.join("target/release/klive-server");
    let work = root.join("target/bench-server");
    fs::create_dir_all(&work)?;
    let sqlite = backend(&bin, &work, "SQLite", None)?;
    let pg = {
        let cluster = crate::pg::Cluster::start()?;
        backend(&bin, &work, "PostgreSQL", Some(cluster.url()))?
    };
    crate::bench_env::append_report(root, &report(&[sqlite, pg]))
}

fn kernel() -> Result<KernelInfo> {
    Ok(KernelInfo {
        release: "6.1.0-56-amd64".into(),
        version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2".into(),
        arch: "x86_64".into(),
        build_id: Some(
            BUILD_ID
                .parse::<BuildId>()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        package_version: Some("6.1.192-2".into()),
        distro: Some("Debian GNU/Linux 12 (bookworm)".into()),
    })
}

fn backend(bin: &Path, work: &Path, label: &'static str, db: Option<&str>) -> Result<Figures> {
    eprintln!("xtask: == klive-server on {label}");
    let data = work.join(label.to_lowercase());
    if data.exists() {
        fs::remove_dir_all(&data)?;
    }
    fs::create_dir_all(&data)?;
    let added = server::cli(bin, &data, db, &["user", "add", "admin", "--role", "admin"])?;
    let token = server::api_token(&added)?;
    server::cli(
        bin,
        &data,
        db,
        &["keys", "init", "--root-keys", "1", "--threshold", "1"],
    )?;
    // One release for the hosts' kernel, so every check-in chooses a target.
    let ko = klive_testkit::elf::module_bytes(&[
        ("license", "GPL"),
        ("livepatch", "Y"),
        ("name", "klive_bench_l1"),
        ("klive_level", "1"),
        ("klive_build_id", BUILD_ID),
    ]);
    let ko_path = data.join("klive_bench_l1.ko");
    fs::write(&ko_path, &ko)?;
    let manifest = ReleaseManifest {
        format: klive_format::release::MANIFEST_FORMAT,
        module_name: "klive_bench_l1".into(),
        level: PatchLevel::new(1).map_err(|e| anyhow::anyhow!("{e}"))?,
        kernel: TargetKernel {
            build_id: BUILD_ID.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
            release: "6.1.0-56-amd64".into(),
            version: None,
            distro: None,
            arch: "x86_64".into(),
        },
        module: ModuleDigest {
            file: "klive_bench_l1.ko".into(),
            sha256: sha256_hex(&ko),
            size: ko.len() as u64,
        },
        fixes: vec![],
    };
    let manifest_path = data.join("manifest.json");
    fs::write(&manifest_path, serde_json::to_vec(&manifest)?)?;
    server::cli(
        bin,
        &data,
        db,
        &[
            "release",
            "add",
            "--manifest",
            &manifest_path.to_string_lossy(),
            "--module",
            &ko_path.to_string_lossy(),
            "--as",
            "admin",
        ],
    )?;

    let port = server::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let log_path = data.join("server.log");
    let log = fs::File::create(&log_path)?;
    let _server = server::Running(
        server::command(bin, &data, db)
            .args(["serve", "--listen", &addr, "--plain-http"])
            .env("KLIVE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting klive-server")?,
    );
    server::wait_listening(port, &log_path)?;

    // Registrations: one enrollment token per connection.
    let mut tokens = Vec::new();
    for _ in 0..REGISTER_CONNECTIONS {
        let body = serde_json::to_vec(&EnrollTokenRequest {
            channel: "canary".into(),
            expires_in_secs: 3600,
            max_uses: u32::try_from(HOSTS).unwrap_or(u32::MAX),
        })?;
        let a = Client::new(&addr).request(
            "POST",
            "/api/v1/enroll-tokens",
            Some(&token),
            Some(&body),
        )?;
        if a.status != 200 {
            bail!(
                "creating an enrollment token: HTTP {}: {}",
                a.status,
                a.text()
            );
        }
        tokens.push(serde_json::from_slice::<EnrollTokenCreated>(&a.body)?.token);
    }
    let kernel = kernel()?;
    eprintln!("xtask: registering {HOSTS} hosts over {REGISTER_CONNECTIONS} connections");
    let per = HOSTS / REGISTER_CONNECTIONS;
    let register_start = Instant::now();
    let results: Vec<Result<(Vec<String>, Vec<Duration>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(w, t)| {
                let (addr, kernel) = (&addr, &kernel);
                s.spawn(move || -> Result<(Vec<String>, Vec<Duration>)> {
                    let client = Client::new(addr);
                    let mut creds = Vec::with_capacity(per);
                    let mut lat = Vec::with_capacity(per);
                    for i in 0..per {
                        let body = serde_json::to_vec(&RegisterRequest {
                            enrollment_token: t.clone(),
                            hostname: format!("bench-{w}-{i}"),
                            kernel: kernel.clone(),
                            agent_version: "bench".into(),
                        })?;
                        let t0 = Instant::now();
                        let a = client.request("POST", "/api/v1/register", None, Some(&body))?;
                        lat.push(t0.elapsed());
                        if a.status != 200 {
                            bail!("register: HTTP {}: {}", a.status, a.text());
                        }
                        creds.push(serde_json::from_slice::<RegisterResponse>(&a.body)?.credential);
                    }
                    Ok((creds, lat))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a register worker panicked"))
            })
            .collect()
    });
    let register_secs = register_start.elapsed().as_secs_f64();
    let mut credentials = Vec::new();
    let mut register_lat = Vec::new();
    for r in results {
        let (c, l) = r?;
        credentials.extend(c);
        register_lat.extend(l);
    }
    let register = summarize(register_lat, 0, register_secs);
    eprintln!(
        "xtask: {} registrations in {register_secs:.1} s ({:.0}/s)",
        register.requests,
        register.rate()
    );

    let health = load(&addr, "health", |_, _| {
        ("GET", "/api/v1/health".to_owned(), None, Vec::new())
    })?;
    let creds: Arc<Vec<String>> = Arc::new(credentials.into_iter().take(CHECKIN_HOSTS).collect());
    let base_seq = u64::try_from(jiff_now_ms()).unwrap_or(1);
    let level1 = PatchLevel::new(1).map_err(|e| anyhow::anyhow!("{e}"))?;
    let checkin_body = move |round: u64| {
        serde_json::to_vec(&CheckIn {
            sequence: base_seq + round,
            kernel: kernel.clone(),
            applied: Some(AppliedReport {
                level: level1,
                state: PatchState::Applied,
            }),
            uptime_secs: 1000 + round,
            boot_id: "bench-boot".into(),
            agent_version: "bench".into(),
            last_error: None,
            taint: None,
        })
        .unwrap_or_default()
    };
    // Each host's first check-in reports a kernel, a level and a boot: state changes the
    // server audits (a transaction with hash-chained audit records). Timed on its own;
    // the steady state afterwards is what a fleet sends every interval.
    let first = once_each(&addr, &creds, &|_| checkin_body(0))?;
    let creds_for_load = Arc::clone(&creds);
    let checkin = load(&addr, "check-in", move |worker, n| {
        // Each worker owns the hosts i ≡ worker (mod CONNECTIONS); round k sends sequence
        // base + 1 + k, so every host's sequence grows.
        let creds = &creds_for_load;
        let mine = (creds.len() - worker).div_ceil(CONNECTIONS).max(1);
        let host = worker + (n % mine) * CONNECTIONS;
        let round = (n / mine) as u64;
        (
            "POST",
            "/api/v1/checkin".to_owned(),
            creds.get(host).cloned(),
            checkin_body(1 + round),
        )
    })?;

    let mut fleet = Vec::new();
    let client = Client::new(&addr);
    for _ in 0..10 {
        let t0 = Instant::now();
        let a = client.request("GET", "/api/v1/fleet", Some(&token), None)?;
        fleet.push(t0.elapsed());
        if a.status != 200 {
            bail!("GET /api/v1/fleet: HTTP {}: {}", a.status, a.text());
        }
        let hosts = serde_json::from_slice::<serde_json::Value>(&a.body)?["hosts"]
            .as_u64()
            .unwrap_or(0);
        if hosts != HOSTS as u64 {
            bail!("the fleet summary counts {hosts} hosts, expected {HOSTS}");
        }
    }
    fleet.sort();
    // Every check-in above went through grouped transactions: the hash chain must still hold.
    let audit = server::cli(bin, &data, db, &["audit", "verify"])?
        .trim()
        .to_owned();
    eprintln!("xtask: {audit}");
    Ok(Figures {
        backend: label,
        register,
        first,
        health,
        checkin,
        fleet_best: fleet[0],
        fleet_median: nearest_rank(&fleet, 50).unwrap_or_default(),
        audit,
    })
}

fn jiff_now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// One check-in per host in `creds`, over `CONNECTIONS` connections.
fn once_each(
    addr: &str,
    creds: &[String],
    body: &(dyn Fn(usize) -> Vec<u8> + Sync),
) -> Result<Load> {
    let started = Instant::now();
    let results: Vec<Result<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|w| {
                s.spawn(move || -> Result<Vec<Duration>> {
                    let client = Client::new(addr);
                    let mut lat = Vec::new();
                    for (i, cred) in creds.iter().enumerate().skip(w).step_by(CONNECTIONS) {
                        let t0 = Instant::now();
                        let a = client.request(
                            "POST",
                            "/api/v1/checkin",
                            Some(cred),
                            Some(&body(i)),
                        )?;
                        lat.push(t0.elapsed());
                        if a.status != 200 {
                            bail!("first check-in: HTTP {}: {}", a.status, a.text());
                        }
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a check-in worker panicked"))
            })
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    let l = summarize(all, 0, secs);
    eprintln!(
        "xtask: first check-in of {} hosts: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        l.requests,
        l.rate(),
        ms(l.p50),
        ms(l.p99)
    );
    Ok(l)
}

type Make = dyn Fn(usize, usize) -> (&'static str, String, Option<String>, Vec<u8>) + Send + Sync;

/// `CONNECTIONS` keep-alive connections, one thread each, sending requests back to back for
/// `WARMUP_SECS` (not counted) and then `LOAD_SECS`.
fn load(
    addr: &str,
    what: &str,
    make: impl Fn(usize, usize) -> (&'static str, String, Option<String>, Vec<u8>)
    + Send
    + Sync
    + 'static,
) -> Result<Load> {
    let make: Arc<Make> = Arc::new(make);
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    eprintln!(
        "xtask: {what}: {CONNECTIONS} connections, {LOAD_SECS} s after {WARMUP_SECS} s of warm-up"
    );
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|w| {
            let (make, counting, stop, addr) = (
                Arc::clone(&make),
                Arc::clone(&counting),
                Arc::clone(&stop),
                addr.to_owned(),
            );
            std::thread::spawn(move || -> Result<(Vec<Duration>, usize)> {
                let client = Client::new(&addr);
                let mut lat = Vec::new();
                let mut errors = 0;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (method, path, bearer, body) = make(w, n);
                    n += 1;
                    let t0 = Instant::now();
                    let a = client.request(
                        method,
                        &path,
                        bearer.as_deref(),
                        (!body.is_empty()).then_some(body.as_slice()),
                    )?;
                    let took = t0.elapsed();
                    if counting.load(Ordering::Relaxed) {
                        if a.status == 200 {
                            lat.push(took);
                        } else {
                            errors += 1;
                        }
                    }
                }
                Ok((lat, errors))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(WARMUP_SECS));
    counting.store(true, Ordering::SeqCst);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(LOAD_SECS));
    counting.store(false, Ordering::SeqCst);
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load worker panicked"))??;
        all.extend(l);
        errors += e;
    }
    let l = summarize(all, errors, secs);
    eprintln!(
        "xtask: {what}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        l.rate(),
        ms(l.p50),
        ms(l.p99),
        l.errors
    );
    if l.errors > 0 {
        bail!("{what}: {} requests failed", l.errors);
    }
    Ok(l)
}

fn summarize(mut lat: Vec<Duration>, errors: usize, secs: f64) -> Load {
    lat.sort();
    Load {
        requests: lat.len(),
        errors,
        secs,
        p50: nearest_rank(&lat, 50).unwrap_or_default(),
        p99: nearest_rank(&lat, 99).unwrap_or_default(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

fn report(figures: &[Figures]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## klive-server check-ins (`cargo xtask bench server`), {}, {}\n",
        crate::bench_env::today(),
        crate::bench_env::machine()
    );
    let _ = writeln!(
        md,
        "Release `klive-server serve --plain-http` on loopback; the load generator (xtask, same \
         machine, sharing its cores) keeps {CONNECTIONS} keep-alive HTTP/1.1 connections busy, one \
         thread each, {LOAD_SECS} s after {WARMUP_SECS} s of warm-up. Before the loads, {HOSTS} \
         hosts register through `POST /api/v1/register` ({REGISTER_CONNECTIONS} connections). \
         {CHECKIN_HOSTS} of them check in once (`first check-in`: a new kernel, level and boot, \
         which the server audits in a hash-chained transaction), then keep checking in with \
         growing sequences and nothing changed (`check-in`, the steady state of a fleet), each \
         choosing its target among the releases (one is published). `health` is `GET /api/v1/health` \
         of the same server in the same run: the ratio check-in/health is the figure. \
         Fleet status is `GET /api/v1/fleet` over the {HOSTS} hosts (10 calls).\n"
    );
    let _ = writeln!(
        md,
        "| backend | endpoint | requests/s | p50 | p99 | check-in / health |\n|---|---|---|---|---|---|"
    );
    for f in figures {
        for (name, l) in [
            ("health", &f.health),
            ("check-in", &f.checkin),
            ("first check-in (audited)", &f.first),
            ("register", &f.register),
        ] {
            let ratio = if name == "check-in" {
                format!("{:.2}", f.checkin.rate() / f.health.rate())
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| {} | {name} | {:.0} | {:.2} ms | {:.2} ms | {ratio} |",
                f.backend,
                l.rate(),
                ms(l.p50),
                ms(l.p99)
            );
        }
    }
    let _ = writeln!(
        md,
        "\n| figure | measured | target | verdict |\n|---|---|---|---|"
    );
    for f in figures {
        let strict = f.backend == "SQLite";
        let rate = f.checkin.rate();
        let p99 = ms(f.checkin.p99);
        let fleet = ms(f.fleet_best);
        let _ = writeln!(
            md,
            "| {} check-ins/s | {rate:.0} | ≥ {TARGET_CHECKINS_PER_SEC:.0}{} | {} |",
            f.backend,
            if strict { "" } else { " (set for SQLite)" },
            verdict(rate >= TARGET_CHECKINS_PER_SEC)
        );
        let _ = writeln!(
            md,
            "| {} check-in p99 | {p99:.1} ms | ≤ {TARGET_P99_MS:.0} ms{} | {} |",
            f.backend,
            if strict { "" } else { " (set for SQLite)" },
            verdict(p99 <= TARGET_P99_MS)
        );
        let _ = writeln!(
            md,
            "| {} fleet status, {HOSTS} hosts (best / median of 10) | {fleet:.0} / {:.0} ms | ≤ {TARGET_FLEET_MS:.0} ms | {} |",
            f.backend,
            ms(f.fleet_median),
            verdict(fleet <= TARGET_FLEET_MS)
        );
    }
    for f in figures {
        let _ = writeln!(
            md,
            "\n{} after the run, `klive-server audit verify`: {}.",
            f.backend, f.audit
        );
    }
    md
}
