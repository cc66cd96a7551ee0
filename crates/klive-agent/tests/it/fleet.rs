//! The agent against a real klive-server over HTTPS on loopback (in-process, its own CA and
//! TUF keys), with the temp-dir fake kernel: register, check, update through every channel
//! move, and the refusals of the trust chain. A tampering network sits between agent and
//! server where a test needs one. Invariant checked throughout: no byte reaches
//! `load_module` unless it is the published, verified module.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use klive_agent::fleet::Fleet;
use klive_agent::ops::Options;
use klive_agent::transport::{
    Connector, Http, NetError, Request, Response, ServerTrust, UreqConnector,
};
use klive_format::api::{EnrollTokenRequest, HostPolicy, PromoteRequest, Role};
use klive_format::{BuildId, PatchLevel};
use klive_server::Service;
use klive_server::domain::AuthUser;
use klive_testkit::agent::{self, FAKE_BUILD_ID, FAKE_RELEASE, FAKE_VERMAGIC};
use klive_testkit::elf::ModuleBuilder;

const OTHER_BUILD: &str = "ffffeeeeddddccccbbbbaaaa9999888877776666";

fn sha(bytes: &[u8]) -> String {
    klive_format::digest::sha256_hex(bytes)
}

// ---------------------------------------------------------------------------------------------
// The server

struct Server {
    rt: tokio::runtime::Runtime,
    service: Service,
    data: PathBuf,
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
    admin: AuthUser,
    alice: AuthUser,
    bob: AuthUser,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (service, admin, alice, bob) = rt.block_on(async {
            klive_server::trust::tuf::init_keys(&data, 1, 1, 365)
                .await
                .unwrap();
            let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
            klive_server::trust::tls::init(&data, &names, 30).unwrap();
            let s = klive_server::open(&data, None).await.unwrap();
            s.tuf_refresh(true).await.unwrap();
            s.users()
                .add_user(None, "admin", Role::Admin)
                .await
                .unwrap();
            let admin = s.users().user_by_name("admin").await.unwrap();
            for (name, role) in [("alice", Role::Publisher), ("bob", Role::Approver)] {
                s.users().add_user(Some(&admin), name, role).await.unwrap();
            }
            let alice = s.users().user_by_name("alice").await.unwrap();
            let bob = s.users().user_by_name("bob").await.unwrap();
            (s, admin, alice, bob)
        });
        let mut server = Server {
            rt,
            service,
            data,
            port: 0,
            task: None,
            admin,
            alice,
            bob,
            _dir: dir,
        };
        server.listen();
        server
    }

    /// Serves HTTPS on the port it had (or a new one the first time).
    fn listen(&mut self) {
        let files = klive_server::trust::tls::TlsFiles::new(&self.data);
        let service = self.service.clone();
        let port = self.port;
        let (task, port) = self.rt.block_on(async move {
            // The stopped listener's accept task may hold the port a little longer.
            let mut tries = 0;
            let tcp = loop {
                match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(tcp) => break tcp,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("binding 127.0.0.1:{port}: {e}"),
                }
            };
            let port = tcp.local_addr().unwrap().port();
            let config = klive_server::trust::tls::server_config(&files.cert, &files.key).unwrap();
            let listener = klive_server::trust::tls::TlsListener::new(tcp, config).unwrap();
            let router = klive_server::http::api::router(service);
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            (task, port)
        });
        self.port = port;
        self.task = Some(task);
    }

    /// Stops serving: connections are refused until [`Server::listen`].
    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = self.rt.block_on(t);
        }
        // The TLS listener's accept task holds the socket; give it a moment to drop.
        std::thread::sleep(Duration::from_millis(100));
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.data.join("tls/ca.pem")
    }

    fn root(&self) -> PathBuf {
        self.data.join("tuf/root.json")
    }

    fn root_sha256(&self) -> String {
        sha(&std::fs::read(self.root()).unwrap())
    }

    /// Waits for one call into the service, which must succeed.
    fn run<T, E: std::fmt::Debug>(&self, call: impl Future<Output = Result<T, E>>) -> T {
        self.rt.block_on(call).unwrap()
    }

    fn token(&self, channel: &str) -> String {
        let request = EnrollTokenRequest {
            channel: channel.into(),
            expires_in_secs: 600,
            max_uses: 5,
        };
        self.run(
            self.service
                .enrollment()
                .create_enroll_token(&self.admin, &request),
        )
        .token
    }

    fn publish(&self, level: u32, module: &[u8]) {
        self.publish_for(FAKE_RELEASE, level, module);
    }

    /// Publishes `module` with a manifest naming kernel `release` (the server checks the
    /// module's vermagic against it; the build-id decides which hosts get it).
    fn publish_for(&self, release: &str, level: u32, module: &[u8]) {
        let name = format!("klive_test_l{level}");
        let manifest = klive_testkit::elf::manifest(FAKE_BUILD_ID, release, level, &name, module);
        let module = Bytes::copy_from_slice(module);
        self.run(
            self.service
                .releases()
                .publish_with_module(&self.alice, manifest, module),
        );
    }

    fn promote(&self, level: u32) {
        let to = PromoteRequest {
            to: "stable".into(),
            emergency: false,
            reason: None,
        };
        let (build, level) = fake_release(level);
        self.run(
            self.service
                .promotions()
                .promote(&self.bob, &build, level, &to),
        );
    }

    fn withdraw(&self, level: u32) {
        let (build, level) = fake_release(level);
        self.run(
            self.service
                .releases()
                .withdraw(&self.alice, &build, level, "regression"),
        );
    }

    fn host(&self, id: &str) -> klive_format::api::HostInfo {
        self.run(self.service.hosts().get(&self.admin, id))
    }

    fn blob_path(&self, module: &[u8]) -> PathBuf {
        let d = sha(module);
        self.data.join(format!("blobs/sha256/{}/{d}", &d[..2]))
    }
}

fn build(b: &str) -> BuildId {
    b.parse().unwrap()
}

/// The build and level of a release for the fake kernel.
fn fake_release(level: u32) -> (BuildId, PatchLevel) {
    (build(FAKE_BUILD_ID), PatchLevel::new(level).unwrap())
}

fn module_for(level: u32, build_id: &str, vermagic: &str) -> Vec<u8> {
    ModuleBuilder::klive(&format!("klive_test_l{level}"), level, build_id)
        .fixes(&["CVE-2024-26581"])
        .vermagic(vermagic)
        .build()
}

fn module(level: u32) -> Vec<u8> {
    module_for(level, FAKE_BUILD_ID, FAKE_VERMAGIC)
}

// ---------------------------------------------------------------------------------------------
// A network that can tamper with answers

#[derive(Debug, Clone)]
enum Tamper {
    /// Flip one byte of every answer whose URL contains this.
    Flip(&'static str),
    /// Answer URLs ending with this with these bytes.
    Replace(&'static str, Vec<u8>),
    /// Rewrite the JSON text of URLs containing this (from, to).
    Rewrite(&'static str, String, String),
    /// The first N requests whose URL contains this get no answer (connection dropped).
    Drop(&'static str, usize),
}

#[derive(Debug, Clone, Default)]
struct Net {
    rules: Arc<Mutex<Vec<Tamper>>>,
}

impl Net {
    fn set(&self, rules: Vec<Tamper>) {
        *self.rules.lock().unwrap() = rules;
    }
}

#[derive(Debug)]
struct TamperingHttp {
    inner: Arc<dyn Http>,
    rules: Arc<Mutex<Vec<Tamper>>>,
}

impl Connector for Net {
    fn connect(&self, trust: ServerTrust<'_>) -> Result<Arc<dyn Http>, NetError> {
        Ok(Arc::new(TamperingHttp {
            inner: UreqConnector::default().connect(trust)?,
            rules: Arc::clone(&self.rules),
        }))
    }
}

impl Http for TamperingHttp {
    fn request(&self, req: Request<'_>) -> Result<Response, NetError> {
        {
            let mut rules = self.rules.lock().unwrap();
            for rule in rules.iter_mut() {
                if let Tamper::Drop(part, n) = rule
                    && *n > 0
                    && req.url.contains(*part)
                {
                    *n -= 1;
                    return Err(NetError::Unreachable {
                        url: req.url.into(),
                        detail: "connection reset (test)".into(),
                    });
                }
            }
        }
        let mut r = self.inner.request(req)?;
        for rule in self.rules.lock().unwrap().iter() {
            match rule {
                Tamper::Flip(part) if req.url.contains(part) && !r.body.is_empty() => {
                    let i = r.body.len() / 2;
                    r.body[i] ^= 0x01;
                }
                Tamper::Replace(part, bytes) if req.url.ends_with(part) => r.body = bytes.clone(),
                Tamper::Rewrite(part, from, to) if req.url.contains(part) => {
                    let text = String::from_utf8_lossy(&r.body).replace(from.as_str(), to);
                    r.body = text.into_bytes();
                }
                _ => {}
            }
        }
        Ok(r)
    }
}

// ---------------------------------------------------------------------------------------------
// A host

/// A host with the fake kernel behind the tampering network.
type Host = agent::Host<Net>;

fn host() -> Host {
    Host::with_net(Net::default())
}

/// A started server and a new host registered on its canary channel, with the host's id.
fn server_and_canary_host() -> (Server, Host, String) {
    let s = Server::start();
    let h = host();
    let id = h.register(&s, "canary");
    (s, h, id)
}

/// What the fleet tests do with a host beyond the common harness.
trait FleetHost {
    fn register(&self, s: &Server, channel: &str) -> String;

    /// `klive register` with `token` at `s`, trusting the CA certificate `ca` and pinning the
    /// TUF root with `pin` (`--root-sha256 HEX` or `--root FILE`).
    fn register_with(
        &self,
        s: &Server,
        token: &str,
        ca: &std::path::Path,
        pin: [&str; 2],
    ) -> (i32, String, String);
}

impl FleetHost for Host {
    fn register(&self, s: &Server, channel: &str) -> String {
        let token = s.token(channel);
        let (code, v) = self.json(&[
            "register",
            &s.url(),
            "--token",
            &token,
            "--ca",
            s.ca().to_str().unwrap(),
            "--root-sha256",
            &s.root_sha256(),
        ]);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["channel"], channel);
        v["host_id"].as_str().unwrap().to_owned()
    }

    fn register_with(
        &self,
        s: &Server,
        token: &str,
        ca: &std::path::Path,
        pin: [&str; 2],
    ) -> (i32, String, String) {
        self.klive(&[
            "register",
            &s.url(),
            "--token",
            token,
            "--ca",
            ca.to_str().unwrap(),
            pin[0],
            pin[1],
        ])
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn channels_promotion_replace_withdrawal_and_revert() {
    let s = Server::start();
    let canary = host();
    let stable = host();
    let canary_id = canary.register(&s, "canary");
    // The second host pins the root by file instead of by digest.
    let token = stable_token(&s);
    let (code, out, err) =
        stable.register_with(&s, &token, &s.ca(), ["--root", s.root().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("channel stable"), "{out}");

    // Nothing published: nothing to do.
    assert_eq!(canary.klive(&["check"]).0, 0);
    let (code, v) = canary.json(&["update"]);
    assert_eq!((code, v["result"].as_str()), (0, Some("up-to-date")), "{v}");
    assert!(canary.loads().is_empty());

    // Level 1 in canary: the canary host sees it and applies it; stable does not.
    let l1 = module(1);
    s.publish(1, &l1);
    let (code, v) = canary.json(&["check"]);
    assert_eq!(code, 2, "{v}");
    assert_eq!(v["target"]["level"], 1);
    let (code, v) = canary.json(&["status"]);
    assert_eq!(code, 2, "status exits 2 while an update is available: {v}");
    assert_eq!(v["fleet"]["update_available"], true);
    assert_eq!(v["fleet"]["channel"], "canary");
    let (code, v) = canary.json(&["update"]);
    assert_eq!((code, v["result"].as_str()), (0, Some("applied")), "{v}");
    assert_eq!(canary.level(), Some(1));
    canary.assert_last_load_is(&l1);
    let (code, v) = canary.json(&["status"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["fleet"]["update_available"], false);
    assert!(v["fleet"]["last_checkin_at"].is_string());
    let info = s.host(&canary_id);
    assert_eq!(info.applied_level.map(PatchLevel::get), Some(1));
    assert_eq!(info.last_error, None);
    assert_eq!(stable.klive(&["check"]).0, 0);

    // Promotion by an approver who did not publish: the stable host gets it.
    s.promote(1);
    let (code, v) = stable.json(&["update"]);
    assert_eq!((code, v["result"].as_str()), (0, Some("applied")), "{v}");
    stable.assert_last_load_is(&l1);

    // Level 2 everywhere: an atomic replace of level 1.
    let l2 = module(2);
    s.publish(2, &l2);
    s.promote(2);
    for h in [&canary, &stable] {
        let (code, v) = h.json(&["update"]);
        assert_eq!((code, v["result"].as_str()), (0, Some("applied")), "{v}");
        assert!(v["message"].as_str().unwrap().contains("replaced"), "{v}");
        assert_eq!(h.level(), Some(2));
        assert_eq!(h.kernel.loaded_modules(), vec!["klive_test_l2".to_owned()]);
        h.assert_last_load_is(&l2);
    }

    // Level 2 withdrawn: back to level 1 (the cumulative module replaces level 2).
    s.withdraw(2);
    let (code, v) = canary.json(&["update"]);
    assert_eq!((code, v["result"].as_str()), (0, Some("applied")), "{v}");
    assert_eq!(canary.level(), Some(1));
    canary.assert_last_load_is(&l1);
    assert_eq!(
        s.host(&canary_id).applied_level.map(PatchLevel::get),
        Some(1)
    );

    // Level 1 withdrawn too: the server asks for a revert.
    s.withdraw(1);
    let (code, v) = canary.json(&["update"]);
    assert_eq!((code, v["result"].as_str()), (0, Some("reverted")), "{v}");
    assert_eq!(canary.level(), None);
    assert!(canary.kernel.loaded_modules().is_empty());
    assert_eq!(s.host(&canary_id).applied_level, None);
    assert_eq!(canary.klive(&["status"]).0, 1);

    // An admin moves the stable host to canary: it follows the new channel.
    let stable_id = s.host_ids().into_iter().find(|h| *h != canary_id).unwrap();
    s.run(s.service.hosts().set_host_policy(
        &s.admin,
        &stable_id,
        &HostPolicy {
            channel: "canary".into(),
            pinned_level: None,
            update_delay_secs: 0,
        },
    ));
    let l3 = module(3);
    s.publish(3, &l3);
    let (code, v) = stable.json(&["update"]);
    assert_eq!((code, v["result"].as_str()), (0, Some("applied")), "{v}");
    assert_eq!(v["channel"], "canary");
    stable.assert_last_load_is(&l3);
}

fn stable_token(s: &Server) -> String {
    s.token("stable")
}

impl Server {
    fn host_ids(&self) -> Vec<String> {
        self.rt
            .block_on(self.service.hosts().list(&self.admin, &Default::default()))
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect()
    }
}

/// Runs `klive update` and checks it was refused with nothing loaded.
fn assert_refused(h: &Host, what: &str, want_in_message: &str) -> String {
    let before = h.loads().len();
    let (code, out, err) = h.klive(&["update"]);
    assert_ne!(code, 0, "{what}: {out}");
    assert!(
        err.to_lowercase().contains(want_in_message),
        "{what}: expected {want_in_message:?} in: {err}"
    );
    assert!(
        err.contains("nothing was loaded") || code == 6,
        "{what}: {err}"
    );
    assert_eq!(
        h.loads().len(),
        before,
        "{what}: a module reached the kernel"
    );
    err
}

#[test]
fn tampering_rollback_freeze_and_other_builds_are_refused() {
    let (s, h, id) = server_and_canary_host();
    let l1 = module(1);
    s.publish(1, &l1);

    // Tampered in transit: the module, the manifest, each metadata role.
    h.net.set(vec![Tamper::Flip(".ko")]);
    assert_refused(&h, "flipped module byte", "hash");
    h.net.set(vec![Tamper::Flip(".manifest.json")]);
    assert_refused(&h, "flipped manifest byte", "nothing was loaded");
    for role in ["timestamp.json", "snapshot.json", "targets.json"] {
        h.net.set(vec![Tamper::Flip(role)]);
        assert_refused(&h, role, "nothing was loaded");
    }
    // The failure went to the server in the report check-in.
    h.net.set(vec![]);
    let reported = s.host(&id).last_error.unwrap_or_default();
    assert!(reported.contains("nothing was loaded"), "{reported}");

    // A check-in answer naming another kernel build is refused before any download.
    h.net.set(vec![Tamper::Rewrite(
        "/checkin",
        FAKE_BUILD_ID.into(),
        OTHER_BUILD.into(),
    )]);
    let err = assert_refused(&h, "target for another build", "another kernel build");
    assert!(err.contains("mix-and-match"), "{err}");

    // A check-in answer whose digest disagrees with the signed metadata.
    h.net
        .set(vec![Tamper::Rewrite("/checkin", sha(&l1), "0".repeat(64))]);
    assert_refused(&h, "check-in digest", "signed release");

    // The module blob changed on the server's disk: the server refuses to serve it, the
    // agent refuses what it cannot verify, the host stays where it is.
    h.net.set(vec![]);
    let blob = s.blob_path(&l1);
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    bad[10] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    let err = assert_refused(&h, "blob tampered on the server's disk", "blob_corrupt");
    assert!(err.contains("does not match its digest"), "{err}");
    assert_eq!(h.level(), None);
    std::fs::write(&blob, &good).unwrap();

    // Now apply it for real, then rollback: an older timestamp than the one seen is refused.
    let old_timestamp = fetch_timestamp(&s, &h);
    s.publish(2, &module(2));
    let (code, v) = h.json(&["update"]);
    assert_eq!((code, v["result"].as_str()), (0, Some("applied")), "{v}");
    assert_eq!(h.level(), Some(2));
    s.withdraw(2);
    h.net
        .set(vec![Tamper::Replace("timestamp.json", old_timestamp)]);
    assert_refused(&h, "rollback", "version");
    assert_eq!(h.level(), Some(2), "the host stays at its level");

    // Freeze: a timestamp that expired is refused.
    h.net.set(vec![]);
    s.service.clock().advance_secs(-3 * 86400);
    s.run(s.service.tuf_refresh(true));
    s.service.clock().advance_secs(3 * 86400);
    let err = assert_refused(&h, "expired timestamp", "expired");
    assert!(err.contains("stale"), "{err}");
    s.run(s.service.tuf_refresh(true));
    let (code, v) = h.json(&["update"]);
    assert_eq!((code, v["result"].as_str()), (0, Some("applied")), "{v}");
    assert_eq!(h.level(), Some(1));
}

fn fetch_timestamp(s: &Server, h: &Host) -> Vec<u8> {
    let reg: klive_format::api::FleetRegistration =
        serde_json::from_slice(&std::fs::read(h.state.join("fleet/registration.json")).unwrap())
            .unwrap();
    let http = UreqConnector::default()
        .connect(ServerTrust {
            ca_pem: reg.ca_pem.as_deref(),
        })
        .unwrap();
    let r = http
        .request(Request {
            method: klive_agent::transport::Method::Get,
            url: &format!("{}/api/v1/tuf/canary/metadata/timestamp.json", s.url()),
            bearer: Some(&reg.credential),
            body: None,
        })
        .unwrap();
    assert_eq!(r.status, 200);
    r.body
}

#[test]
fn a_module_for_another_kernel_release_is_refused_by_the_agent_core() {
    let (s, h, _) = server_and_canary_host();
    // Tagged for this build, but built for another kernel release (and published as such:
    // the server refuses a vermagic its manifest does not name, and offers by build-id):
    // TUF verifies it, the agent core refuses it before the kernel sees it.
    let ko = module_for(1, FAKE_BUILD_ID, "6.1.0-99-amd64 SMP preempt mod_unload ");
    s.publish_for("6.1.0-99-amd64", 1, &ko);
    assert_refused(
        &h,
        "vermagic of another release",
        "built for kernel 6.1.0-99-amd64",
    );
}

#[test]
fn another_ca_and_a_wrong_root_are_refused_at_registration() {
    let s = Server::start();
    let h = host();
    let other = tempfile::tempdir().unwrap();
    let names = ["localhost".to_owned()];
    let files = klive_server::trust::tls::init(other.path(), &names, 30).unwrap();
    let token = s.token("canary");
    let (code, _, err) = h.register_with(
        &s,
        &token,
        &files.ca_cert,
        ["--root-sha256", &s.root_sha256()],
    );
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("certificate"), "{err}");
    assert!(!h.state.join("fleet/registration.json").exists());

    let (code, _, err) = h.register_with(&s, &token, &s.ca(), ["--root-sha256", &"ab".repeat(32)]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("fingerprint"), "{err}");

    // Plain http is refused unless asked for.
    let (code, _, err) = h.klive(&[
        "register",
        &format!("http://127.0.0.1:{}", s.port),
        "--token",
        &token,
        "--root-sha256",
        &s.root_sha256(),
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("plain HTTP"), "{err}");

    // Not registered: fleet commands say how to register.
    let (code, _, err) = h.klive(&["check"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("klive register"), "{err}");

    // A registered host whose credential is revoked is told to register again.
    let id = h.register(&s, "canary");
    s.run(s.service.hosts().revoke_host(&s.admin, &id));
    let (code, _, err) = h.klive(&["check"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("register it again"), "{err}");
}

#[test]
fn update_retries_while_the_server_restarts_and_an_interrupted_download() {
    let (mut s, h, _) = server_and_canary_host();
    let l1 = module(1);
    s.publish(1, &l1);

    // The connection drops during the module download: retried, then applied.
    h.net.set(vec![Tamper::Drop("/targets/", 1)]);
    let (code, out, err) = h.klive(&["update", "--retry-for", "20"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("retrying"), "{err}");
    h.assert_last_load_is(&l1);

    // The server is down: a plain update fails at once, with a hint.
    h.net.set(vec![]);
    s.publish(2, &module(2));
    s.stop();
    let (code, _, err) = h.klive(&["update"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    // ... and an update with a retry window succeeds once the server is back.
    let (code, out, err) = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(2500));
            s.listen();
        });
        h.klive(&["update", "--retry-for", "30"])
    });
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("retrying"), "{err}");
    assert_eq!(h.level(), Some(2));
}

#[test]
fn daemon_backs_off_while_the_server_is_down_and_stops_on_request() {
    let (mut s, h, _) = server_and_canary_host();
    let l1 = module(1);
    s.publish(1, &l1);
    s.stop();
    let stop = AtomicBool::new(false);
    let lines: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        // Bring the server back after two failed attempts.
        let server = scope.spawn(|| {
            let mut waited = 0;
            while lines.lock().unwrap().len() < 2 && waited < 300 {
                std::thread::sleep(Duration::from_millis(50));
                waited += 1;
            }
            s.listen();
            let mut waited = 0;
            while !lines.lock().unwrap().iter().any(|l| l.contains("applied")) && waited < 600 {
                std::thread::sleep(Duration::from_millis(50));
                waited += 1;
            }
            stop.store(true, Ordering::SeqCst);
        });
        let fleet = Fleet::new(&h.kernel, &h.state, Options::default(), &h.net);
        let mut log = |l: &str| lines.lock().unwrap().push(l.to_owned());
        fleet
            .daemon_with_backoff(
                &stop,
                Some(Duration::from_secs(3600)),
                Duration::from_millis(200),
                &mut log,
            )
            .unwrap();
        server.join().unwrap();
    });
    let lines = lines.into_inner().unwrap();
    assert!(lines[0].contains("retrying in"), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("applied")), "{lines:?}");
    assert!(lines.last().unwrap().contains("stopping"), "{lines:?}");
    h.assert_last_load_is(&l1);
}

#[test]
fn air_gapped_bundle_is_verified_against_the_pinned_root() {
    let s = Server::start();
    let online = host();
    online.register(&s, "canary");
    let l1 = module(1);
    let l2 = module(2);
    s.publish(1, &l1);
    s.publish(2, &l2);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let (code, out, err) = online.klive(&["bundle", bundle.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("4 target(s)"), "{out}");

    // An unregistered host needs a root to verify with.
    let offline = host();
    let (code, _, err) = offline.klive(&["apply", bundle.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--root"), "{err}");

    // A tampered bundle is refused.
    let targets = bundle.join("targets");
    let ko = std::fs::read_dir(&targets)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().ends_with("-2.ko"))
        .unwrap();
    let good = std::fs::read(&ko).unwrap();
    let mut bad = good.clone();
    bad[5] ^= 1;
    std::fs::write(&ko, &bad).unwrap();
    let root = s.root();
    let (code, _, err) = offline.klive(&[
        "apply",
        bundle.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(offline.loads().is_empty(), "{err}");
    std::fs::write(&ko, &good).unwrap();

    // Intact: the highest level for this kernel, or the one asked for. A plain-named copy
    // of a target (`{name}` instead of `{sha256}.{name}`) verifies the same way.
    let plain = targets.join(
        ko.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .split_once('.')
            .unwrap()
            .1,
    );
    std::fs::rename(&ko, &plain).unwrap();
    let (code, v) = offline.json(&[
        "apply",
        bundle.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["level"], 2);
    offline.assert_last_load_is(&l2);
    let (code, v) = offline.json(&[
        "apply",
        bundle.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--level",
        "1",
    ]);
    assert_eq!(code, 0, "{v}");
    offline.assert_last_load_is(&l1);

    // A bundle signed under another root is refused.
    let other = tempfile::tempdir().unwrap();
    s.run(klive_server::trust::tuf::init_keys(other.path(), 1, 1, 365));
    let (code, _, err) = offline.klive(&[
        "apply",
        bundle.to_str().unwrap(),
        "--root",
        other.path().join("tuf/root.json").to_str().unwrap(),
    ]);
    assert_eq!(code, 4, "{err}");
    assert_eq!(offline.loads().len(), 2);
}

#[test]
fn the_agent_follows_a_root_rotation_and_refuses_retired_keys() {
    let (mut s, h, _) = server_and_canary_host();
    let (l1, l2, l3) = (module(1), module(2), module(3));
    s.publish(1, &l1);
    assert_eq!(h.klive(&["update"]).0, 0);
    assert_eq!(h.level(), Some(1));

    // The operator signs root 2 with new online keys and restarts the server.
    let retired = klive_server::trust::tuf::Signer::load(&s.data).unwrap();
    let done =
        s.rt.block_on(klive_server::trust::tuf::rotate(
            &s.data,
            &[s.data.join("keys/offline/root-1.pk8")],
            true,
            365,
        ))
        .unwrap();
    assert_eq!(done.version, 2);
    let restart = |s: &mut Server, signer| {
        s.stop();
        s.service = s.service.clone().with_signer(signer);
        s.run(s.service.tuf_refresh(true));
        s.listen();
    };
    let current = klive_server::trust::tuf::Signer::load(&s.data).unwrap();
    restart(&mut s, current);
    s.publish(2, &l2);
    // Still pinned to root 1, the agent walks to root 2 and keeps it.
    let (code, out, err) = h.klive(&["update"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(h.level(), Some(2));
    h.assert_last_load_is(&l2);
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.state.join("tuf/.root.json")).unwrap()).unwrap();
    assert_eq!(kept["signed"]["version"], 2);

    // A replica still running with the retired keys: its metadata is refused.
    restart(&mut s, retired);
    s.publish(3, &l3);
    assert_refused(
        &h,
        "metadata signed by retired keys",
        "not signed by the keys",
    );
    assert_eq!(h.level(), Some(2));

    // Back on the current keys: a bundle carries the root chain, so an air-gapped host
    // that only knows root 1 verifies it.
    let current = klive_server::trust::tuf::Signer::load(&s.data).unwrap();
    restart(&mut s, current);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let (code, out, err) = h.klive(&["bundle", bundle.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(bundle.join("metadata/2.root.json").is_file());
    let offline = host();
    let (code, v) = offline.json(&[
        "apply",
        bundle.to_str().unwrap(),
        "--root",
        s.root().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["level"], 3);
    offline.assert_last_load_is(&l3);
}
