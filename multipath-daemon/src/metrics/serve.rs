//! `GET /metrics` over HTTP (axum on the daemon's tokio runtime).
//!
//! Each scrape asks `source` for a fresh [`Snapshot`] and renders it on a blocking
//! thread, so neither the render nor a slow client holds up the daemon's loop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{Snapshot, render};
use crate::{ebpf::Watcher, model::Conn};

/// The Content-Type of the Prometheus text format the scrape returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How long a scrape waits for the daemon's snapshot before answering 503.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot listen for metrics on {addr}: {source}; start mpathd daemon with --metrics ADDR on a free address, or --metrics off"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving metrics on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

type Source = Arc<dyn Fn() -> BoxFuture<'static, Option<Snapshot>> + Send + Sync>;

/// A bound metrics listener, not yet serving: binding first lets the daemon report a
/// taken address at start-up.
pub struct Server {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// Binds `addr` (port 0: any free port, see [`Server::local_addr`]).
    pub fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let bind = |e| MetricsError::Bind { addr, source: e };
        let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        Ok(Self { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the future is dropped (or the listener fails). Each scrape calls
    /// `source`; `None` (the daemon is going away) answers 503.
    pub async fn run(
        self,
        source: impl Fn() -> BoxFuture<'static, Option<Snapshot>> + Send + Sync + 'static,
    ) -> Result<(), MetricsError> {
        let addr = self.addr;
        let serve_err = |source| MetricsError::Serve { addr, source };
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(serve_err)?;
        let source: Source = Arc::new(source);
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/", get(index))
            .with_state(source);
        axum::serve(listener, app).await.map_err(serve_err)
    }
}

/// Binds `addr` and serves `GET /metrics` until dropped; each scrape calls `source` for a
/// snapshot.
pub async fn serve(
    addr: SocketAddr,
    source: impl Fn() -> BoxFuture<'static, Option<Snapshot>> + Send + Sync + 'static,
) -> Result<(), MetricsError> {
    Server::bind(addr)?.run(source).await
}

/// A scrape's request to the daemon's loop, which answers with its part of the snapshot
/// (paths, maps, counters) and the probes' watcher; the watcher's counters are then read
/// off the loop.
pub struct Request {
    reply: oneshot::Sender<(Snapshot, Option<Watcher>)>,
}

impl Request {
    /// Answers the scrape. `snapshot.readings` and `snapshot.watcher` are filled from
    /// `watcher` afterwards, off the loop.
    pub fn answer(self, snapshot: Snapshot, watcher: Option<Watcher>) {
        // The scrape may have given up meanwhile: nothing to do then.
        let _ = self.reply.send((snapshot, watcher));
    }
}

/// Binds `addr` and serves in a task on the current runtime; each scrape arrives on the
/// receiver as a [`Request`] for the loop to answer. Returns the bound address (port 0
/// picks one). Scrapes get 503 once the receiver is dropped; the server ends with the
/// runtime.
pub fn start(addr: SocketAddr) -> Result<(SocketAddr, mpsc::Receiver<Request>), MetricsError> {
    let server = Server::bind(addr)?;
    let bound = server.local_addr();
    // A few scrapes may wait at once (several Prometheus servers); more wait in HTTP.
    let (tx, rx) = mpsc::channel::<Request>(8);
    tokio::spawn(async move {
        let r = server
            .run(move || {
                let tx = tx.clone();
                Box::pin(async move {
                    let (reply, answer) = oneshot::channel();
                    tx.send(Request { reply }).await.ok()?;
                    let (mut snap, watcher) = answer.await.ok()?;
                    if let Some(w) = watcher {
                        snap.readings = w.readings().await;
                        snap.watcher = Some(w.stats());
                        let conns: Vec<Conn> = snap
                            .readings
                            .iter()
                            .filter_map(|r| r.conn.map(|(c, _)| c))
                            .collect();
                        snap.tcp_lost = tokio::task::spawn_blocking(move || tcp_lost(&conns))
                            .await
                            .unwrap_or_default();
                    }
                    Some(snap)
                })
            })
            .await;
        if let Err(e) = r {
            tracing::error!("{e}; metrics are no longer served");
        }
    });
    tracing::info!(address = %bound, "serving metrics on http://{bound}/metrics");
    Ok((bound, rx))
}

async fn metrics(State(source): State<Source>) -> Response {
    let snap = match tokio::time::timeout(SNAPSHOT_TIMEOUT, source()).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "mpathd is stopping: no metrics\n",
            )
                .into_response();
        }
        Err(_) => {
            tracing::warn!(
                "metrics: the daemon's loop gave no snapshot within {} s",
                SNAPSHOT_TIMEOUT.as_secs()
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "mpathd's loop did not answer in time: see the daemon's log\n",
            )
                .into_response();
        }
    };
    match tokio::task::spawn_blocking(move || render(snap)).await {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn index() -> &'static str {
    "mpathd: metrics are on /metrics\n"
}

/// Each connection's lost segments, over sock_diag. A connection gone meanwhile, or a
/// kernel without sock_diag for TCP, leaves its series out: the daemon warns once about
/// the latter where it reads the same counters for the health engine.
fn tcp_lost(conns: &[Conn]) -> std::collections::BTreeMap<Conn, u64> {
    let Ok(rs) = crate::sockdiag::tcp_counters(conns) else {
        return Default::default();
    };
    conns
        .iter()
        .zip(rs)
        .filter_map(|(c, r)| Some((*c, u64::from(r.ok()?.lost()))))
        .collect()
}
