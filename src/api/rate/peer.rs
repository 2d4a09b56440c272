//! The failed-authentication guard, keyed by the TCP peer.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use super::RateLimits;

/// The middleware, with the limits as its state: a peer that has spent its failed
/// authentications gets 429 before any later layer (authentication included) sees the request,
/// and every 401 answered to a peer counts as one of its failures. `/v1/health/*` is never
/// limited, so that probes from a load balancer's address keep working while it is refused.
///
/// The peer is the [`ConnectInfo<SocketAddr>`] that [`crate::api::server`] puts in every request.
/// A router served without it (by an embedding program's own server) is not limited here.
pub async fn guard_peers(
    State(limits): State<RateLimits>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/v1/health/") {
        return next.run(request).await;
    }
    let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()
    else {
        return next.run(request).await;
    };
    let peer = peer.ip();
    if let Err(limited) = limits.check_peer(peer) {
        tracing::debug!(%peer, "peer over its failed authentications");
        return limited.response(request.uri().path());
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        limits.failed_auth(peer);
    }
    response
}

/// The bucket a peer address falls in: an IPv4 address (also when written IPv4-mapped), or an
/// IPv6 address's /64, since one host usually holds a whole /64 and could otherwise try from
/// 2^64 addresses.
pub(super) fn key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(net))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_share_their_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        assert_eq!(
            key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
