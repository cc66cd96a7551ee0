//! `serve`: the API, the dashboard and the metrics over HTTPS (or plain HTTP), until SIGINT or
//! SIGTERM.

use std::net::SocketAddr;

use anyhow::{Context, Result};

use klive_server::Service;
use klive_server::trust::tls::{self, TlsFiles};

use super::Ctx;

/// `serve`: HTTPS with DATA/tls/server.pem when it exists, unless `plain_http`.
pub async fn serve(ctx: Ctx, listen: SocketAddr, plain_http: bool) -> Result<()> {
    let files = TlsFiles::new(&ctx.data);
    let files = (!plain_http && files.exist()).then_some(files);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}: is another server running there?"))?;
    if !ctx.service.has_signer() {
        tracing::warn!("no TUF keys: agents cannot verify releases; run `klive-server keys init`");
    }
    ctx.service
        .tuf_refresh(false)
        .await
        .context("signing TUF metadata")?;
    spawn_tuf_refresher(ctx.service.clone());
    // The API under /api/v1, the dashboard under /ui/ and Prometheus at /metrics.
    let dashboard = klive_server::http::dashboard::Dashboard::new(ctx.service.clone(), ctx.data);
    let router = klive_server::http::api::router(ctx.service).merge(
        klive_server::http::dashboard::dashboard_router(dashboard.over_https(files.is_some())),
    );
    match files {
        Some(files) => {
            let config = tls::server_config(&files.cert, &files.key)?;
            let listener =
                tls::TlsListener::new(listener, config).context("starting the TLS listener")?;
            tracing::info!(%listen, cert = %files.cert.display(), "klive-server listening (https)");
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .context("serving HTTPS")?;
        }
        None => {
            tracing::warn!(%listen, "serving plain HTTP: run `klive-server tls init` for HTTPS");
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .context("serving HTTP")?;
        }
    }
    Ok(())
}

/// Re-signs the TUF timestamps every 10 minutes, so agents never see an expired one.
fn spawn_tuf_refresher(refresher: Service) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            tick.tick().await;
            match refresher.tuf_refresh(false).await {
                Ok(done) if !done.is_empty() => tracing::info!(?done, "re-signed TUF timestamps"),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "re-signing TUF metadata failed; agents will refuse expired timestamps")
                }
            }
        }
    });
}

/// Resolves on SIGINT or SIGTERM, so systemd and Ctrl-C stop the server cleanly.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stop the server with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
