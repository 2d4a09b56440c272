//! The HTTP server under every keel listener (`keel serve`'s API and `keel relay`'s status
//! endpoints): an accept loop over the caller's listener, with hyper's HTTP/1.1 connections.
//!
//! Not `axum::serve`: it builds hyper's connections without a timer, which turns hyper's header
//! read timeout off (slowloris stays open), and it has no connection limit. Here:
//!
//! - **Header read timeout** (`api.header_read_timeout_ms`): a connection that has not sent a
//!   whole request head this long after it opened, or after its previous response, is closed
//!   without a reply. Idle keep-alive connections are closed by the same timer.
//! - **Header count** (`api.max_headers`): a request with more headers gets 431 from hyper itself,
//!   as does a request head larger than hyper's read buffer (about 400 KiB).
//! - **Connection limit** (`api.max_connections`; the open ones are the gauge
//!   `keel_http_connections_open`): at the limit the loop stops accepting, so new connections
//!   **wait** in the kernel's listen backlog (they are not refused) and are accepted as open ones
//!   close; once the backlog is full too, the kernel ignores new attempts and clients retry them. Idle connections close at the header read timeout, so each idle one
//!   holds a place for at most that long. The limit bounds keel's memory and file descriptors;
//!   a client that keeps reopening connections can still fill it (limits per peer are not here).
//! - **Shutdown**: stop accepting, ask every connection to finish (idle ones close at once,
//!   requests in flight are answered), and return once all of them have closed.
//!
//! - **Peer address**: every request carries its connection's TCP peer as
//!   [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo), as `axum::serve` with connect info
//!   would put it; the failed-authentication limit is keyed by it (`api::rate`).
//!
//! HTTP/1.1 only, as keel served before: the builder is told so (`http1_only`), which also skips
//! the protocol sniffing that would read the first bytes of a connection with no timer running.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::config::ApiConfig;
use crate::shutdown::Shutdown;

/// What the server enforces on connections; from [`ApiConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_headers: usize,
    pub max_connections: u32,
}

impl From<&ApiConfig> for Limits {
    fn from(api: &ApiConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(api.header_read_timeout_ms),
            max_headers: api.max_headers,
            max_connections: api.max_connections,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is triggered, then drains (see the module
/// docs). Accept errors are logged and retried, never returned: a full file table must not stop
/// the server for good.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: Shutdown) {
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers);
    let builder = Arc::new(builder);
    // One permit per open connection; getting all of them back means every connection closed.
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    let stopped = shutdown.wait();
    tokio::pin!(stopped);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
            _ = &mut stopped => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e, &shutdown).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let (builder, router, shutdown) = (builder.clone(), router.clone(), shutdown.clone());
        let place = Place::take(permit);
        tokio::spawn(async move {
            connection(&builder, stream, peer, router, shutdown).await;
            drop(place);
        });
    }
    drop(listener);
    // Every connection holds a permit until it has closed; all of them back means all drained.
    let _all = permits
        .acquire_many(limits.max_connections)
        .await
        .expect("the connection semaphore is never closed");
}

/// An open connection's place under the limit, counted in the open-connections gauge. Given back
/// on drop, also when the connection's task is dropped unfinished.
struct Place {
    _permit: OwnedSemaphorePermit,
}

impl Place {
    fn take(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(crate::metrics::HTTP_CONNECTIONS).increment(1.0);
        Self { _permit: permit }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::HTTP_CONNECTIONS).decrement(1.0);
    }
}

/// One connection, until the client closes it, a limit closes it, or shutdown has let its
/// request in flight finish.
async fn connection(
    builder: &Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    shutdown: Shutdown,
) {
    // Small responses go out at once rather than after Nagle's delay, as with `axum::serve`.
    let _ = stream.set_nodelay(true);
    let service = router.map_request(move |mut request: Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Clients that go away, header timeouts and malformed requests end up here; they are the
        // client's doing, so not worth more than debug.
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

/// After a failed accept: errors of the one connection are skipped; others (such as running
/// out of file descriptors) are logged and the loop pauses a second, as `axum::serve` does, so
/// that it does not spin while the condition lasts.
async fn accept_failed(error: std::io::Error, shutdown: &Shutdown) {
    use std::io::ErrorKind as K;
    if matches!(
        error.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %error, "cannot accept a connection; retrying in 1 s");
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        _ = shutdown.wait() => {}
    }
}
