//! The daemon's HTTP server: `GET /health`, `GET /metrics`, plus extra
//! routes (the Twenty webhook receiver) merged in.
//!
//! Loopback only by default: binding any other address needs
//! [`ServerConfig::allow_remote`], because `/metrics` and the webhook
//! receiver are not meant to face a network without a proxy in front.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::metrics::{render_prometheus, OpsHandle, PROMETHEUS_CONTENT_TYPE};

/// The default listen address: loopback, port 9464.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

/// Where the server listens. Deserializable, so the CLI can embed it in its
/// configuration (`[server] listen = "127.0.0.1:9464"`, `allow_remote = false`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port; port 0 picks a free one (see [`ServerHandle::local_addr`]).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Allow a non-loopback address (0.0.0.0, a LAN address). Off by default.
    #[serde(default)]
    pub allow_remote: bool,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN,
            allow_remote: false,
        }
    }
}

impl ServerConfig {
    /// Loopback (127.0.0.1) on `port`.
    pub fn loopback(port: u16) -> Self {
        ServerConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            allow_remote: false,
        }
    }
}

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to listen on {addr}: it is not a loopback address, and /metrics and the webhook receiver should not face a network unprotected; use 127.0.0.1 or ::1, or set allow_remote = true in [server] if a proxy or firewall protects it")]
    NotLoopback { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server on {addr} failed: {message}")]
    Server { addr: SocketAddr, message: String },
}

/// A running server. [`ServerHandle::shutdown`] stops it gracefully
/// (requests in flight finish); dropping the handle stops it too.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl ServerHandle {
    /// The address actually bound (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets requests in flight finish, and
    /// waits for the server task.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let addr = self.addr;
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServeError::Server {
                    addr,
                    message: e.to_string(),
                }),
                Err(e) => Err(ServeError::Server {
                    addr,
                    message: format!("server task ended abnormally: {e}"),
                }),
            },
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn health(State(ops): State<OpsHandle>) -> Response {
    let snap = ops.snapshot();
    let status = crate::health::HealthStatus::evaluate(&snap, &ops.health_thresholds());
    let code =
        StatusCode::from_u16(status.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (code, Json(status.to_json(&snap))).into_response()
}

async fn metrics(State(ops): State<OpsHandle>) -> Response {
    let text = render_prometheus(&ops.snapshot());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        text,
    )
        .into_response()
}

/// The `/health` and `/metrics` routes over `ops`, without a listener (to
/// nest into another router or to test with `tower::ServiceExt`).
pub fn router(ops: OpsHandle) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

/// Binds `config.listen` and serves `/health`, `/metrics` and `extra`'s
/// routes (pass `Router::new()` for none) until the handle is shut down or
/// dropped. `extra` must not route `/health` or `/metrics` itself (axum
/// refuses overlapping routes with a panic). A non-loopback address is refused unless `config.allow_remote`.
/// Must be called inside a tokio runtime; the server runs as a task.
pub async fn serve(
    config: &ServerConfig,
    ops: OpsHandle,
    extra: Router,
) -> Result<ServerHandle, ServeError> {
    let addr = config.listen;
    if !addr.ip().is_loopback() && !config.allow_remote {
        return Err(ServeError::NotLoopback { addr });
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let app = router(ops).merge(extra);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // A send or a dropped sender both mean "stop".
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(addr = %bound, "HTTP server listening (/health, /metrics)");
    Ok(ServerHandle {
        addr: bound,
        stop: Some(stop),
        task: Some(task),
    })
}
