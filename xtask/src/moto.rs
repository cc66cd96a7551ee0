//! A throwaway S3 endpoint on loopback for the server's S3 blob test: moto's server (PyPI
//! `moto[server]`, installed once into a virtualenv under `target/moto-venv`) on a free
//! port, a bucket, `cargo test -p klive-server --test s3`, then the server is stopped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::vm::http;

const BUCKET: &str = "klive-test";

/// moto's server, killed on drop.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the server's S3 blob test against a fresh moto server.
pub fn test_server(root: &Path) -> Result<()> {
    let venv = root.join("target/moto-venv");
    let bin = venv.join("bin/moto_server");
    if !bin.exists() {
        eprintln!(
            "xtask: installing moto[server] from PyPI into {}",
            venv.display()
        );
        let mut mk = Command::new("python3");
        mk.args(["-m", "venv"]).arg(&venv);
        crate::run(mk).context("creating a Python virtualenv failed: install python3-venv")?;
        let mut pip = Command::new(venv.join("bin/pip"));
        pip.args(["install", "--quiet", "moto[server]"]);
        crate::run(pip).context("pip install moto[server] failed")?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .context("finding a free loopback port")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(root.join("target/moto.log"))?;
    let _moto = Moto(
        Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("moto_server did not listen on {addr}; see target/moto.log");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let created = http::call(&addr, "PUT", &format!("/{BUCKET}"), None, None)?;
    if created.status != 200 {
        bail!(
            "creating the bucket on moto: HTTP {}: {}",
            created.status,
            created.text()
        );
    }
    eprintln!("xtask: == cargo test -p klive-server --test s3 against moto at {addr}");
    let mut cmd = crate::cargo(&["test", "-p", "klive-server", "--test", "s3"]);
    cmd.env("KLIVE_TEST_S3_URL", format!("s3://{BUCKET}"))
        .env("AWS_ENDPOINT", format!("http://{addr}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test");
    crate::run(cmd).context("klive-server S3 blob test against moto failed")
}
