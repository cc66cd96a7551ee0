//! Host side of the fleet boot (`klive.phase=fleet`, scenarios in
//! `tests/vm/scenarios/fleet/`): a klive-server on loopback that the guest's agent reaches
//! only through QEMU user networking, and the admin steps the guest asks for.
//!
//! - The server (`klive-server serve`, HTTPS with its own CA for the name `10.0.2.100`)
//!   listens on a free loopback port. The guest reaches it as `https://10.0.2.100:8750`:
//!   `-nic user,restrict=on,guestfwd=tcp:10.0.2.100:8750-cmd:<xtask vm-relay 127.0.0.1:PORT>`
//!   starts a byte relay for every guest connection; `restrict=on` gives the guest no other
//!   way out.
//! - A second `klive-server serve --plain-http` on the same data directory (a stateless
//!   replica) answers the xtask's own admin API calls, so killing the HTTPS one does not
//!   blind the harness.
//! - Steps: the guest prints `KLIVE-STEP <n> <name> [args]` and polls
//!   `10.0.2.101:80` (`guestfwd ... -cmd:cat <ack file>`) until it reads `done <n>` or
//!   `failed <n>: <reason>`. The xtask reacts to the console line, does the step and
//!   writes the answer. Protocol and steps are documented in `tests/vm/README.md`.
//! - What the guest must know before it boots (server URL, pinned CA, TUF root digest,
//!   enrollment tokens) is put on its state disk under `harness/fleet/`.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use anyhow::{Context, Result, bail};
use klive_format::api::{HostInfo, HostPolicy};
use klive_format::release::{Fix, ModuleDigest, ReleaseManifest, Severity, TargetKernel};
use klive_format::{BuildId, PatchLevel};

use super::http;
use crate::server;

/// Address and port the guest uses for the server, and for step answers.
pub const GUEST_SERVER: &str = "10.0.2.100";
pub const GUEST_SERVER_PORT: u16 = 8750;
pub const GUEST_ACK: &str = "10.0.2.101";

/// The releases the fleet scenario publishes: (level, test module).
const RELEASES: &[(u32, &str)] = &[
    (1, "klive_test_l1"),
    (2, "klive_test_l2"),
    // Published only to be tampered with on the server's disk: never loaded.
    (3, "klive_test_stall"),
];

/// A klive-server for one fleet boot; both processes are killed on drop.
#[derive(Debug)]
pub struct FleetServer {
    bin: PathBuf,
    data: PathBuf,
    work: PathBuf,
    release: String,
    build_id: String,
    modules: PathBuf,
    https_port: u16,
    admin_port: u16,
    https: Option<Child>,
    admin: Option<Child>,
    admin_token: String,
    log: PathBuf,
}

impl Drop for FleetServer {
    fn drop(&mut self) {
        for mut child in [self.https.take(), self.admin.take()].into_iter().flatten() {
            server::kill(&mut child);
        }
    }
}

/// Lowercase hex SHA-256 of a file (klive-format's digest, as the server and agent compute it).
fn sha256_file(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(klive_format::digest::sha256_hex(&bytes))
}

impl FleetServer {
    /// Builds the server, creates a fresh data directory with users, TUF keys and TLS
    /// certificates, starts both listeners, and writes what the guest needs into
    /// `guest_dir` (the future `harness/fleet/` of its disk).
    pub fn start(
        root: &Path,
        work: &Path,
        release: &str,
        build_id: &str,
        modules: &Path,
        guest_dir: &Path,
    ) -> Result<FleetServer> {
        crate::run(crate::cargo(&["build", "-p", "klive-server"]))
            .context("building klive-server failed: fix the errors above")?;
        let bin = super::target_dir(root).join("debug/klive-server");
        let data = work.join("fleet-server");
        if data.exists() {
            fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        }
        let log = work.join("fleet-server.log");
        fs::write(&log, b"").with_context(|| format!("creating {}", log.display()))?;
        let mut s = FleetServer {
            bin,
            data,
            work: work.to_owned(),
            release: release.to_owned(),
            build_id: build_id.to_owned(),
            modules: modules.to_owned(),
            https_port: server::free_port()?,
            admin_port: server::free_port()?,
            https: None,
            admin: None,
            admin_token: String::new(),
            log,
        };
        let added = s.cli(&["user", "add", "admin", "--role", "admin"])?;
        s.admin_token = server::api_token(&added)?;
        s.cli(&[
            "user",
            "add",
            "alice",
            "--role",
            "publisher",
            "--as",
            "admin",
        ])?;
        s.cli(&["user", "add", "bob", "--role", "approver", "--as", "admin"])?;
        s.cli(&["keys", "init", "--root-keys", "1", "--threshold", "1"])?;
        s.cli(&["tls", "init", "--name", GUEST_SERVER])?;
        let token = s.cli(&[
            "enroll-token",
            "create",
            "--channel",
            "canary",
            "--expires",
            "1h",
            "--max-uses",
            "1",
            "--as",
            "admin",
        ])?;
        fs::create_dir_all(guest_dir)?;
        fs::write(guest_dir.join("canary.token"), token.trim())?;
        fs::copy(s.data.join("tls/ca.pem"), guest_dir.join("ca.pem"))?;
        fs::write(
            guest_dir.join("root.sha256"),
            sha256_file(&s.data.join("tuf/root.json"))?,
        )?;
        fs::write(
            guest_dir.join("server"),
            format!("https://{GUEST_SERVER}:{GUEST_SERVER_PORT}"),
        )?;
        s.write_manifests()?;
        s.start_https()?;
        s.admin = Some(s.spawn(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", s.admin_port),
            "--plain-http",
        ])?);
        server::wait_listening(s.admin_port, &s.log)?;
        Ok(s)
    }

    /// The `-nic` argument that connects the guest to this server and no further.
    pub fn qemu_nic(&self) -> Result<String> {
        // A copy of this very binary: QEMU starts it for each guest connection, and a
        // rebuild of xtask during the boot must not pull it away.
        let xtask = self.work.join("fleet-relay");
        fs::copy("/proc/self/exe", &xtask).context("copying the xtask binary for the relay")?;
        let ack = self.ack_file();
        fs::write(&ack, b"none\n")?;
        let _ = fs::remove_file(self.kill_file());
        let _ = fs::remove_file(self.kill_file().with_extension("done"));
        for p in [&xtask, &ack, &self.kill_file()] {
            if p.to_string_lossy().contains([',', ' ']) {
                bail!(
                    "{} contains a comma or space, which QEMU's -nic syntax cannot carry; move the workspace",
                    p.display()
                );
            }
        }
        Ok(format!(
            "user,model=virtio-net-pci,restrict=on,\
             guestfwd=tcp:{GUEST_SERVER}:{GUEST_SERVER_PORT}-cmd:{} vm-relay 127.0.0.1:{} {},\
             guestfwd=tcp:{GUEST_ACK}:80-cmd:cat {}",
            xtask.display(),
            self.https_port,
            self.kill_file().display(),
            ack.display()
        ))
    }

    fn ack_file(&self) -> PathBuf {
        self.work.join("fleet-step")
    }

    /// Armed by the `kill-during-download` step; read by the relays (`relay::relay`).
    fn kill_file(&self) -> PathBuf {
        self.work.join("fleet-kill")
    }

    fn spawn(&self, args: &[&str]) -> Result<Child> {
        let log = fs::OpenOptions::new().append(true).open(&self.log)?;
        server::command(&self.bin, &self.data, None)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))
    }

    fn start_https(&mut self) -> Result<()> {
        let child = self.spawn(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", self.https_port),
        ])?;
        self.https = Some(child);
        server::wait_listening(self.https_port, &self.log)
    }

    /// Runs an admin command of the server CLI; its stdout.
    fn cli(&self, args: &[&str]) -> Result<String> {
        server::cli(&self.bin, &self.data, None, args)
    }

    fn manifest_path(&self, level: u32) -> PathBuf {
        self.work.join(format!("fleet-release-{level}.json"))
    }

    fn module_path(&self, level: u32) -> Result<PathBuf> {
        let (_, name) = RELEASES
            .iter()
            .find(|(l, _)| *l == level)
            .with_context(|| format!("the fleet scenario has no release at level {level}"))?;
        Ok(self.modules.join(format!("{name}.ko")))
    }

    /// Hand-written manifests for the test modules, as a publisher would write them.
    fn write_manifests(&self) -> Result<()> {
        let build_id: BuildId = self
            .build_id
            .parse()
            .map_err(|e| anyhow::anyhow!("build-id {}: {e}", self.build_id))?;
        for (level, name) in RELEASES {
            let ko = self.module_path(*level)?;
            let size = fs::metadata(&ko)
                .with_context(|| format!("reading {}", ko.display()))?
                .len();
            let manifest = ReleaseManifest {
                format: klive_format::release::MANIFEST_FORMAT,
                module_name: (*name).to_owned(),
                level: PatchLevel::new(*level).map_err(|e| anyhow::anyhow!("{e}"))?,
                kernel: TargetKernel {
                    build_id: build_id.clone(),
                    release: self.release.clone(),
                    version: None,
                    distro: Some("debian".into()),
                    arch: "x86_64".into(),
                },
                module: ModuleDigest {
                    file: format!("{name}.ko"),
                    sha256: sha256_file(&ko)?,
                    size,
                },
                fixes: vec![Fix {
                    cve: format!("CVE-2099-{:04}", 1000 + level),
                    severity: Severity::High,
                    cvss: Some(7.0),
                    summary: format!("klive test fix at level {level}"),
                    reference: None,
                }],
            };
            fs::write(
                self.manifest_path(*level),
                serde_json::to_vec_pretty(&manifest)?,
            )?;
        }
        Ok(())
    }

    fn admin_call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<http::Answer> {
        http::call(
            &format!("127.0.0.1:{}", self.admin_port),
            method,
            path,
            Some(&self.admin_token),
            body,
        )
    }

    fn host(&self, id: &str) -> Result<HostInfo> {
        let a = self.admin_call("GET", &format!("/api/v1/hosts/{id}"), None)?;
        if a.status != 200 {
            bail!("GET /api/v1/hosts/{id}: HTTP {}: {}", a.status, a.text());
        }
        Ok(serde_json::from_slice(&a.body)?)
    }

    /// Handles a console line; a `KLIVE-STEP` line is carried out and answered.
    pub fn on_line(&mut self, line: &str) {
        let Some(at) = line.find("KLIVE-STEP ") else {
            return;
        };
        let words: Vec<&str> = line[at + "KLIVE-STEP ".len()..]
            .split_whitespace()
            .collect();
        let Some((n, step)) = words.split_first() else {
            return;
        };
        let answer = match self.step(step) {
            Ok(()) => format!("done {n}\n"),
            Err(e) => format!("failed {n}: {}\n", format!("{e:#}").replace('\n', " ")),
        };
        eprintln!(
            "xtask: fleet step {n} {}: {}",
            step.join(" "),
            answer.trim()
        );
        let ack = self.ack_file();
        let tmp = ack.with_extension("tmp");
        if fs::write(&tmp, &answer)
            .and_then(|()| fs::rename(&tmp, &ack))
            .is_err()
        {
            eprintln!("xtask: cannot write {}", ack.display());
        }
    }

    fn step(&mut self, step: &[&str]) -> Result<()> {
        // A release change made by the CLI (another process than the serving server) reaches
        // the server's check-in decisions within its release cache's age limit (1 s,
        // `domain::checkin::release_cache::MAX_AGE`), as for a change made on another replica.
        // The step answers once that has passed, so the guest's next check-in sees it.
        fn settle<T>(_: T) {
            std::thread::sleep(std::time::Duration::from_millis(1200));
        }
        let level = |i: usize| -> Result<u32> {
            step.get(i)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("step {step:?} needs a level"))
        };
        match step.first().copied() {
            Some("ping") => Ok(()),
            Some("publish") => {
                let l = level(1)?;
                let manifest = self.manifest_path(l);
                let module = self.module_path(l)?;
                self.cli(&[
                    "release",
                    "add",
                    "--manifest",
                    &manifest.to_string_lossy(),
                    "--module",
                    &module.to_string_lossy(),
                    "--as",
                    "alice",
                ])
                .map(settle)
            }
            // Bob, an approver who did not publish: effective at once (in the database).
            Some("promote") => {
                let l = level(1)?.to_string();
                self.cli(&[
                    "promote",
                    &self.build_id,
                    &l,
                    "--to",
                    "stable",
                    "--as",
                    "bob",
                ])
                .map(settle)
            }
            Some("withdraw") => {
                let l = level(1)?.to_string();
                self.cli(&[
                    "withdraw",
                    &self.build_id,
                    &l,
                    "--reason",
                    "regression seen in canary",
                    "--as",
                    "alice",
                ])
                .map(settle)
            }
            Some("policy") => {
                let (Some(id), Some(channel)) = (step.get(1), step.get(2)) else {
                    bail!("policy needs a host id and a channel");
                };
                let body = serde_json::to_vec(&HostPolicy {
                    channel: (*channel).to_owned(),
                    pinned_level: None,
                    update_delay_secs: 0,
                })?;
                let a =
                    self.admin_call("PUT", &format!("/api/v1/hosts/{id}/policy"), Some(&body))?;
                if a.status != 200 {
                    bail!("PUT policy: HTTP {}: {}", a.status, a.text());
                }
                Ok(())
            }
            // kill -9, as a crash or an abrupt restart would.
            Some("stop-server") => {
                if let Some(mut child) = self.https.take() {
                    server::kill(&mut child);
                }
                if TcpStream::connect(("127.0.0.1", self.https_port)).is_ok() {
                    bail!("the server still answers after kill");
                }
                Ok(())
            }
            // The relay carrying the next download kills the server (kill -9) once it has
            // passed this many bytes from it: inside the module's body (the test modules
            // are ~270 KB; check-in and metadata are a few KB).
            Some("kill-during-download") => {
                let pid = self
                    .https
                    .as_ref()
                    .map(Child::id)
                    .context("the server is not running")?;
                fs::write(self.kill_file(), format!("65536 {pid}\n"))?;
                Ok(())
            }
            // The armed relay fired: the server died mid-download.
            Some("expect-killed") => {
                if !self.kill_file().with_extension("done").exists() {
                    bail!("no relay killed the server during a download");
                }
                let mut child = self.https.take().context("the server was not running")?;
                match child.try_wait()? {
                    Some(_) => Ok(()),
                    None => {
                        server::kill(&mut child);
                        bail!("the server was still running after the relay's kill")
                    }
                }
            }
            Some("start-server") => self.start_https(),
            Some("tamper") => {
                let sha = sha256_file(&self.module_path(level(1)?)?)?;
                let blob = self.data.join(format!("blobs/sha256/{}/{sha}", &sha[..2]));
                let mut bytes =
                    fs::read(&blob).with_context(|| format!("reading {}", blob.display()))?;
                let i = bytes.len() / 2;
                bytes[i] ^= 0xff;
                fs::write(&blob, bytes)?;
                Ok(())
            }
            // expect HOST LEVEL|none [CHANNEL] [error]: what the server's API says.
            Some("expect") => {
                let Some(id) = step.get(1) else {
                    bail!("expect needs a host id");
                };
                let h = self.host(id)?;
                let want = step.get(2).copied().unwrap_or("none");
                let got = h
                    .applied_level
                    .map_or("none".to_owned(), |l| l.get().to_string());
                if got != want {
                    bail!("the server's API shows level {got}, expected {want}");
                }
                if let Some(channel) = step.get(3).filter(|c| **c != "error")
                    && h.channel != *channel
                {
                    bail!(
                        "the server's API shows channel {}, expected {channel}",
                        h.channel
                    );
                }
                if step.contains(&"error") && h.last_error.is_none() {
                    bail!("the server recorded no update failure for the host");
                }
                if !step.contains(&"error") && h.last_error.is_some() {
                    bail!(
                        "the server recorded a failure: {}",
                        h.last_error.unwrap_or_default()
                    );
                }
                Ok(())
            }
            other => bail!("unknown step {other:?}"),
        }
    }
}
