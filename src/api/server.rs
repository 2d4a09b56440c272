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
//! HTTP/1.1 only, as keel served before: the builder is told so (`http1_only`), which also skips
//! the protocol sniffing that would read the first bytes of a connection with no timer running.
//!
//! [`serve_tls`] is the same server over TLS (see [`super::tls`]). The limits hold there too: a
//! connection takes its place under the limit before its handshake, the handshake must finish
//! within the header read timeout (so a client that opens a connection and sends nothing, or
//! sends plain HTTP, is closed as on the plain port; plain HTTP fails at its first byte), and the
//! request head then gets the header read timeout of its own.
//!
//! Every request carries its peer's address as [`axum::extract::ConnectInfo`]`<SocketAddr>` in
//! its extensions, and over TLS a verified client certificate's identity as [`PeerCertificate`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use super::tls::ServerTls;
use crate::config::ApiConfig;
use crate::shutdown::Shutdown;

/// The identity in the client certificate a TLS connection presented and the server verified
/// against `api.tls.client_ca_file`, in each request's extensions (`Extension<PeerCertificate>`);
/// absent when the client sent none. For the authentication layer to map to a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's common name (CN); empty if it has none.
    pub subject: String,
    /// The DNS names and URIs among its subject alternative names, in certificate order.
    pub sans: Vec<String>,
}

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
    run(listener, router, limits, None, shutdown).await
}

/// [`serve`] over TLS: each connection is accepted with `tls`'s configuration as it is at that
/// moment (see [`ServerTls::reload`]).
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Arc<ServerTls>,
    shutdown: Shutdown,
) {
    run(listener, router, limits, Some(tls), shutdown).await
}

async fn run(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<ServerTls>>,
    shutdown: Shutdown,
) {
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
        // Small responses go out at once rather than after Nagle's delay, as with `axum::serve`.
        let _ = stream.set_nodelay(true);
        let (builder, router, shutdown) = (builder.clone(), router.clone(), shutdown.clone());
        let place = Place::take(permit);
        // Taken now, so that a reload after this accept does not change this connection.
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            match acceptor {
                None => connection(&builder, stream, peer, None, router, shutdown).await,
                Some(acceptor) => {
                    let handshake = limits.header_read_timeout;
                    tls_connection(
                        &builder, acceptor, stream, peer, handshake, router, shutdown,
                    )
                    .await
                }
            }
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

/// A TLS connection: the handshake, within `handshake_timeout`, then [`connection`] with the
/// client certificate's identity. A failed handshake (plain HTTP, an untrusted client certificate,
/// an old TLS version) closes it.
async fn tls_connection(
    builder: &Builder<TokioExecutor>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    handshake_timeout: Duration,
    router: Router,
    shutdown: Shutdown,
) {
    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        done = handshake => done,
        _ = shutdown.wait() => return,
    };
    match stream {
        Ok(Ok(stream)) => {
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| super::tls::peer_certificate(leaf));
            connection(builder, stream, peer, cert, router, shutdown).await
        }
        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "tls handshake failed"),
        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
    }
}

/// One connection, until the client closes it, a limit closes it, or shutdown has let its
/// request in flight finish. The peer's address and certificate go into every request's
/// extensions.
async fn connection<S>(
    builder: &Builder<TokioExecutor>,
    stream: S,
    peer: SocketAddr,
    cert: Option<PeerCertificate>,
    router: Router,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut request: axum::http::Request<_>| {
        let extensions = request.extensions_mut();
        extensions.insert(ConnectInfo(peer));
        if let Some(cert) = &cert {
            extensions.insert(cert.clone());
        }
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
