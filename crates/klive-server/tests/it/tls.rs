//! HTTPS with the certificates `tls init` makes: a client pinning the CA talks to the server;
//! a client pinning another CA, or expecting another name, refuses it.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use klive_server::trust::tls::{TlsListener, init, server_config};

use crate::common::Fixture;

fn client(ca: &Path) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn get_health(port: u16, ca: &Path, name: &str) -> Result<String, std::io::Error> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = client(ca).connect(name, tcp).await?;
    tls.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_clients_that_pin_its_ca_and_no_others() {
    let fx = Fixture::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let files = init(dir.path(), &names, 30).unwrap();
    assert!(
        init(dir.path(), &names, 30).is_err(),
        "tls init never overwrites"
    );

    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listener = TlsListener::new(tcp, server_config(&files.cert, &files.key).unwrap()).unwrap();
    let server = tokio::spawn(
        axum::serve(
            listener,
            klive_server::http::api::router(fx.service.clone()),
        )
        .into_future(),
    );

    // A client that never finishes its handshake does not hold up the others.
    let _stalled = TcpStream::connect(("127.0.0.1", port)).await.unwrap();

    for name in ["localhost", "127.0.0.1"] {
        let reply = get_health(port, &files.ca_cert, name).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains(r#"{"status":"ok"}"#), "{reply}");
    }

    let err = get_health(port, &files.ca_cert, "evil.example")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("certificate"),
        "another name is refused: {err}"
    );

    let other = tempfile::tempdir().unwrap();
    let other_files = init(other.path(), &names, 30).unwrap();
    let err = get_health(port, &other_files.ca_cert, "localhost")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("certificate"),
        "another CA is refused: {err}"
    );
    server.abort();
}
