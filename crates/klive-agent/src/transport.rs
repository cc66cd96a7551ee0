//! HTTP to the klive server, and the `tough` transports the TUF client fetches through.
//!
//! The agent speaks HTTPS with ureq and rustls (aws-lc-rs), trusting only the CA pinned at
//! registration, never the system store. [`Http`] is a small trait so tests can put a
//! tampering network between the agent and a real server. The kernel crate never does
//! network I/O: everything network-facing is here.

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use klive_format::api::ErrorBody;
use tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// Largest response the agent reads: a module upload's limit on the server.
pub const MAX_BODY: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// One request to the server.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: Method,
    pub url: &'a str,
    /// `Authorization: Bearer <bearer>`.
    pub bearer: Option<&'a str>,
    /// JSON body of a POST.
    pub body: Option<&'a [u8]>,
}

/// Any HTTP answer (the status is not an error at this level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    /// No answer: connection refused, reset, timed out, DNS. Worth retrying.
    #[error("cannot reach {url}: {detail}; check the network and that the klive server runs")]
    Unreachable { url: String, detail: String },
    /// The TLS handshake failed: the server's certificate does not chain to the pinned CA
    /// or names another host. Retrying does not help.
    #[error(
        "the TLS connection to {url} failed: {detail}; the server's certificate must be issued by the CA pinned at `klive register` (--ca) for the name in the URL"
    )]
    Tls { url: String, detail: String },
    #[error("the answer from {url} is larger than {limit} bytes; refusing to read it")]
    TooLarge { url: String, limit: u64 },
    #[error("{0}")]
    Config(String),
}

impl NetError {
    /// A later attempt may succeed (the server is down or restarting).
    pub fn is_transient(&self) -> bool {
        matches!(self, NetError::Unreachable { .. })
    }
}

/// The agent's HTTP client.
pub trait Http: Debug + Send + Sync {
    fn request(&self, req: Request<'_>) -> Result<Response, NetError>;
}

/// What a client needs to know about the server.
#[derive(Debug, Clone, Copy)]
pub struct ServerTrust<'a> {
    /// PEM of the pinned CA; `None` for plain HTTP.
    pub ca_pem: Option<&'a str>,
}

/// Makes clients; the CLI uses [`UreqConnector`], tests wrap it to tamper with answers.
pub trait Connector: Debug {
    fn connect(&self, trust: ServerTrust<'_>) -> Result<Arc<dyn Http>, NetError>;
}

/// ureq with rustls (aws-lc-rs) and only the pinned CA as trust anchor.
#[derive(Debug, Clone)]
pub struct UreqConnector {
    pub timeout: Duration,
}

impl Default for UreqConnector {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
        }
    }
}

impl Connector for UreqConnector {
    fn connect(&self, trust: ServerTrust<'_>) -> Result<Arc<dyn Http>, NetError> {
        let mut roots = Vec::new();
        if let Some(pem) = trust.ca_pem {
            for item in ureq::tls::parse_pem(pem.as_bytes()) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => roots.push(c),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(NetError::Config(format!(
                            "the pinned CA is not valid PEM ({e}); register again with the server's ca.pem"
                        )));
                    }
                }
            }
            if roots.is_empty() {
                return Err(NetError::Config(
                    "the pinned CA holds no certificate; register again with the server's ca.pem"
                        .into(),
                ));
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        // Always specific roots: an empty list (plain HTTP) makes every HTTPS URL fail
        // instead of falling back to a system store the agent must not trust.
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
            .unversioned_rustls_crypto_provider(provider)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(self.timeout))
            .user_agent(format!("klive/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Arc::new(UreqHttp { agent }))
    }
}

struct UreqHttp {
    agent: ureq::Agent,
}

impl Debug for UreqHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UreqHttp")
    }
}

impl Http for UreqHttp {
    fn request(&self, req: Request<'_>) -> Result<Response, NetError> {
        let auth = req.bearer.map(|b| format!("Bearer {b}"));
        let result = match req.method {
            Method::Get => {
                let mut r = self.agent.get(req.url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            Method::Post => {
                let mut r = self
                    .agent
                    .post(req.url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(req.body.unwrap_or_default())
            }
        };
        let mut response = result.map_err(|e| classify(req.url, e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(limit) => NetError::TooLarge {
                    url: req.url.to_owned(),
                    limit,
                },
                e => classify(req.url, e),
            })?;
        Ok(Response { status, body })
    }
}

fn classify(url: &str, e: ureq::Error) -> NetError {
    let url = url.to_owned();
    match e {
        ureq::Error::Rustls(e) => NetError::Tls {
            url,
            detail: e.to_string(),
        },
        ureq::Error::Io(ref io) if tls_io_error(io) => NetError::Tls {
            url,
            detail: e.to_string(),
        },
        ureq::Error::BadUri(_) | ureq::Error::RequireHttpsOnly(_) => {
            NetError::Config(format!("{url} is not a usable server URL ({e})"))
        }
        e => NetError::Unreachable {
            url,
            detail: e.to_string(),
        },
    }
}

/// rustls reports certificate failures through `io::Error` wrapping its own error.
fn tls_io_error(io: &std::io::Error) -> bool {
    io.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// The TUF client's transport to a channel's repository on the server: the host's bearer
/// credential on every request, 404 as "file not found" (TUF's end of the root chain).
#[derive(Debug, Clone)]
pub struct ServerTransport {
    pub http: Arc<dyn Http>,
    pub bearer: String,
}

#[tough::async_trait]
impl Transport for ServerTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        // Blocking inside the future is deliberate: the agent drives tough on a
        // current-thread runtime that runs nothing else, so there is nobody to starve.
        let response = self
            .http
            .request(Request {
                method: Method::Get,
                url: url.as_str(),
                bearer: Some(&self.bearer),
                body: None,
            })
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, &url, e))?;
        match response.status {
            200 => Ok(one_chunk(response.body)),
            404 => Err(TransportError::new(TransportErrorKind::FileNotFound, &url)),
            other => {
                let detail = match serde_json::from_slice::<ErrorBody>(&response.body) {
                    Ok(b) => format!(
                        "the server answered HTTP {other} ({}: {})",
                        b.error.code, b.error.message
                    ),
                    Err(_) => format!("the server answered HTTP {other}"),
                };
                Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    &url,
                    detail,
                ))
            }
        }
    }
}

/// A release bundle on disk (`DIR/metadata/`, `DIR/targets/`). A target may be stored
/// under its consistent-snapshot name (`{sha256}.{name}`, as exported) or under its plain
/// name (`{name}`, e.g. a manifest and module copied by hand); either way tough checks its
/// length and hashes against the signed metadata.
#[derive(Debug, Clone)]
pub struct BundleTransport {
    pub targets_dir: PathBuf,
}

#[tough::async_trait]
impl Transport for BundleTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let path = url
            .to_file_path()
            .map_err(|()| TransportError::new(TransportErrorKind::UnsupportedUrlScheme, &url))?;
        let mut candidates = vec![path.clone()];
        if path.parent() == Some(self.targets_dir.as_path())
            && let Some(plain) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split_once('.'))
                .filter(|(sha, _)| sha.len() == 64)
                .map(|(_, name)| self.targets_dir.join(name))
        {
            candidates.push(plain);
        }
        for candidate in candidates {
            match std::fs::metadata(&candidate) {
                Ok(m) if m.len() > MAX_BODY => {
                    return Err(TransportError::new_with_cause(
                        TransportErrorKind::Other,
                        &url,
                        format!("{} is larger than {MAX_BODY} bytes", candidate.display()),
                    ));
                }
                Ok(_) => {}
                Err(_) => continue,
            }
            return std::fs::read(&candidate)
                .map(one_chunk)
                .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, &url, e));
        }
        Err(TransportError::new(TransportErrorKind::FileNotFound, &url))
    }
}

fn one_chunk(body: Vec<u8>) -> TransportStream {
    let item: Result<bytes::Bytes, TransportError> = Ok(body.into());
    Box::pin(futures_util::stream::iter([item]))
}
