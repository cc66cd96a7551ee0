//! HTTPS: a self-signed CA and server certificate for a first install (`klive-server tls init`),
//! and a TLS listener for `axum::serve`. Agents pin the CA (`DATA/tls/ca.pem`), so a server
//! presenting any other certificate is refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::error::Error;

/// Files under `DATA/tls/`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    /// Only needed to issue new server certificates: keep it offline.
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn new(data: &Path) -> TlsFiles {
        let dir = data.join("tls");
        TlsFiles {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    pub fn exist(&self) -> bool {
        self.cert.exists() && self.key.exists()
    }
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{what}: {e}"))
}

fn validity(days: i64) -> Result<(time::OffsetDateTime, time::OffsetDateTime), Error> {
    let now = jiff::Timestamp::now().as_second();
    let at = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|e| tls_error("computing certificate validity", e))
    };
    Ok((at(now - 3600)?, at(now + days * 86400)?))
}

/// Creates a CA and a server certificate for `names` (DNS names or IP addresses) signed by it.
/// Refuses to overwrite existing files.
pub fn init(data: &Path, names: &[String], days: i64) -> Result<TlsFiles, Error> {
    let files = TlsFiles::new(data);
    if files.ca_cert.exists() || files.exist() {
        return Err(Error::Config(format!(
            "{} exists already; tls init never overwrites certificates",
            files.ca_cert.display()
        )));
    }
    if names.is_empty() {
        return Err(Error::Config(
            "give at least one --name the agents use to reach the server".into(),
        ));
    }
    let mut ca = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| tls_error("preparing the CA", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "klive-server CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (ca.not_before, ca.not_after) = validity(10 * 365)?;
    let ca_key = KeyPair::generate().map_err(|e| tls_error("generating the CA key", e))?;
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| tls_error("signing the CA", e))?;

    let mut server = CertificateParams::new(names.to_vec())
        .map_err(|e| tls_error("a --name is not a DNS name or IP address", e))?;
    server
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    server.use_authority_key_identifier_extension = true;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    (server.not_before, server.not_after) = validity(days)?;
    let server_key = KeyPair::generate().map_err(|e| tls_error("generating the server key", e))?;
    let ca_pem_key = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(|e| tls_error("signing the server certificate", e))?;

    let dir = files.cert.parent().unwrap_or(data);
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    write(&files.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write(&files.ca_key, ca_pem_key.as_bytes(), 0o600)?;
    write(&files.cert, server_cert.pem().as_bytes(), 0o644)?;
    write(&files.key, server_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(files)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)
}

/// A rustls server configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Error> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error(&format!("reading {}", cert.display()), e))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_error(&format!("reading {}", key.display()), e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("configuring TLS", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error("the server certificate and key do not match", e))?;
    Ok(Arc::new(config))
}

/// Accepts TCP connections and completes TLS handshakes in their own tasks, so a slow or
/// broken client never holds up the others; `axum::serve` takes finished streams.
#[derive(Debug)]
pub struct TlsListener {
    streams: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, streams) = mpsc::channel(256);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                // Stop accepting (and free the port) as soon as the server drops the listener.
                let accepted = tokio::select! {
                    () = tx.closed() => break,
                    accepted = tcp.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { streams, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.streams.recv().await {
            Some(s) => s,
            // The accept loop only ends when this listener is gone; wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
