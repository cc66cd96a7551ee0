//! A throwaway PostgreSQL cluster on loopback for the server's tests: Debian's `postgresql`
//! package, `initdb` into a temporary directory, started on a free port, stopped and removed
//! when done (also when the tests fail). It accepts TLS connections only (a certificate made
//! for it with `openssl`), and the URL the tests get verifies that certificate, so every
//! server test on PostgreSQL runs over TLS, as a remote database would be used.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::deps;

pub(crate) struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    url: String,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    pub(crate) fn start() -> Result<Cluster> {
        deps::ensure_apt(&["postgresql", "openssl"])?;
        let bin = pg_bin_dir()?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("klive-pg-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing a stale {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // From here on, Drop stops the server and removes the directory.
        let mut cluster = Cluster {
            bin,
            dir,
            url: String::new(),
            port: 0,
            as_postgres,
        };
        if as_postgres {
            // initdb refuses to run as root; the cluster belongs to the `postgres` user.
            let mut chown = Command::new("chown");
            chown.args(["postgres:postgres"]).arg(&cluster.dir);
            crate::run(chown)?;
        }
        let data = cluster.dir.join("data");
        let mut initdb = cluster.pg("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "klive", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(std::process::Stdio::null());
        crate::run(initdb).context("initdb of the test cluster failed")?;
        let (cert, key) = cluster.make_certificate()?;
        // TLS only: no plain TCP connection is accepted.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .context("writing pg_hba.conf")?;
        let port = free_port()?;
        let mut start = cluster.pg("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200 -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cluster.dir.display(),
                cert.display(),
                key.display()
            ))
            .args(["-w", "-t", "60", "start"])
            .stdout(std::process::Stdio::null());
        if let Err(e) = crate::run(start) {
            let log = std::fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default();
            bail!("starting the test PostgreSQL failed: {e:#}\n{log}");
        }
        cluster.port = port;
        cluster.url = format!(
            "postgres://klive@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            cluster.dir.join("ca.crt").display()
        );
        Ok(cluster)
    }

    /// A throwaway CA (`ca.crt`, which the tests trust) and a server certificate for
    /// 127.0.0.1 signed by it, readable by the server only. Returns (certificate, key).
    fn make_certificate(&self) -> Result<(PathBuf, PathBuf)> {
        let (ca, ca_key) = (self.dir.join("ca.crt"), self.dir.join("ca.key"));
        let (cert, key) = (self.dir.join("server.crt"), self.dir.join("server.key"));
        let req = |subject: &str| {
            let mut c = Command::new("openssl");
            c.args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", subject])
            .stderr(std::process::Stdio::null());
            c
        };
        let mut make_ca = req("/CN=klive test CA");
        make_ca.arg("-keyout").arg(&ca_key).arg("-out").arg(&ca);
        crate::run(make_ca).context("making the test cluster's CA with openssl")?;
        let mut make_cert = req("/CN=127.0.0.1");
        make_cert
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert);
        crate::run(make_cert).context("making the test cluster's certificate with openssl")?;
        if self.as_postgres {
            let mut chown = Command::new("chown");
            chown.args(["postgres:postgres"]).arg(&cert).arg(&key);
            crate::run(chown)?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {}", key.display()))?;
        }
        Ok((cert, key))
    }

    /// The cluster refuses a plain connection and accepts a verified TLS one (psql).
    pub(crate) fn check_tls_only(&self) -> Result<()> {
        let psql = |mode: &str| {
            let mut c = Command::new(self.bin.join("psql"));
            c.arg(format!(
                "postgresql://klive@127.0.0.1:{}/postgres?{mode}",
                self.port
            ))
            .args([
                "-X",
                "-q",
                "-t",
                "-c",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ]);
            c.output()
        };
        let plain = psql("sslmode=disable").context("running psql")?;
        if plain.status.success() {
            bail!("the test PostgreSQL accepted a connection without TLS");
        }
        let ca = self.dir.join("ca.crt");
        let tls = psql(&format!("sslmode=verify-full&sslrootcert={}", ca.display()))
            .context("running psql")?;
        let answer = String::from_utf8_lossy(&tls.stdout);
        if !tls.status.success() || answer.trim() != "t" {
            bail!(
                "a verified TLS connection to the test PostgreSQL failed: {}{}",
                answer,
                String::from_utf8_lossy(&tls.stderr)
            );
        }
        Ok(())
    }

    /// `postgres://klive@127.0.0.1:PORT/postgres?sslmode=verify-full&sslrootcert=...`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// A PostgreSQL tool, run as `postgres` when we are root.
    fn pg(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if data.join("postmaster.pid").exists() {
            let mut stop = self.pg("pg_ctl");
            stop.arg("-D")
                .arg(&data)
                .args(["-m", "fast", "-w", "stop"])
                .stdout(std::process::Stdio::null());
            if let Err(e) = crate::run(stop) {
                eprintln!("xtask: stopping the test PostgreSQL failed: {e:#}");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("xtask: removing {} failed: {e}", self.dir.display());
        }
    }
}

/// The newest `/usr/lib/postgresql/N/bin`.
fn pg_bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| format!("reading {}: is postgresql installed?", root.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no /usr/lib/postgresql/N/bin/initdb found; install Debian's postgresql")
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Installs and starts a real cluster: run with `cargo test -p xtask -- --ignored`.
    #[test]
    #[ignore = "installs postgresql and starts a server"]
    fn cluster_serves_on_loopback_and_is_removed() {
        let cluster = Cluster::start().unwrap();
        let dir = cluster.dir.clone();
        let port = cluster.port.to_string();
        let mut ready = Command::new(cluster.bin.join("pg_isready"));
        ready.args(["-h", "127.0.0.1", "-p", &port]);
        crate::run(ready).unwrap();
        cluster.check_tls_only().unwrap();
        drop(cluster);
        assert!(!dir.exists());
    }
}
