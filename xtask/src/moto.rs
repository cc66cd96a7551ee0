//! A throwaway S3 endpoint on loopback for the server's tests: moto's server (PyPI
//! `moto[server]`, installed once into a virtualenv under `target/moto-venv`) on a free
//! port with one bucket, stopped when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const BUCKET: &str = "klive-test";

/// moto's server, killed on drop.
pub struct Moto {
    child: Child,
    addr: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh moto server on a free loopback port with an empty bucket, stopped on drop.
pub fn start(root: &Path) -> Result<Moto> {
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
    let moto = Moto {
        child: Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
        addr: format!("127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(&moto.addr).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "moto_server did not listen on {}; see target/moto.log",
                moto.addr
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://{}/{BUCKET}", moto.addr);
    ureq::put(&url)
        .send_empty()
        .with_context(|| format!("creating the bucket on moto: PUT {url}"))?;
    Ok(moto)
}

impl Moto {
    /// The environment that points klive-server's S3 blob store at this bucket.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KLIVE_TEST_S3_URL", format!("s3://{BUCKET}")),
            ("AWS_ENDPOINT", format!("http://{}", self.addr)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }
}
