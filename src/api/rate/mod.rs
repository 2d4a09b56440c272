//! Rate limits: requests and events per second per principal, and failed authentications per
//! peer address (`api.rate_limit.*`). Over a limit, a request gets 429 `rate_limited` with a
//! `retry-after` header in whole seconds.
//!
//! - **Per process.** Each keel process keeps its own buckets, in memory: N replicas behind a load
//!   balancer allow up to N times the configured rates, and a restart refills every bucket.
//! - **Per principal**, not per key: a principal's keys share its buckets, so rotating keys does
//!   not reset them. [`RateLimits::check_request`] is called once per authenticated request and
//!   [`RateLimits::check_events`] once per append, charged the append's number of events.
//!   `api.rate_limit.event_burst` is at least `api.max_batch_events` (the config says so), so every
//!   append the API accepts can pass from a full bucket.
//! - **Per peer** for failed authentications: [`guard_peers`], a middleware on every route but
//!   `/v1/health/*`, refuses a peer that has used up its failures before anything else looks at
//!   the request, and counts each 401 it lets through. The peer is the TCP peer address the server
//!   records ([`axum::extract::ConnectInfo`]), never a forwarding header, which any client can
//!   write; an IPv6 peer is keyed by its /64, the block one host usually has.
//! - **Bounded memory**: see [`keyed`]; idle keys are dropped, and each limiter tracks at most
//!   [`MAX_KEYS`] keys.
//!
//! Refusals are counted in `keel_rate_limited_total{limit}`, `limit` one of [`Limit`]'s labels.

mod keyed;
mod peer;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use crate::config::RateLimitConfig;
use crate::registry;
use keyed::Keyed;
pub use peer::guard_peers;

/// Most keys each limiter tracks at once: about 100 bytes each, so a few MiB at most.
pub const MAX_KEYS: usize = 65_536;

/// Which limit refused a request; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Events,
    FailedAuth,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Events => "events",
            Self::FailedAuth => "failed_auth",
        }
    }
}

/// A refusal: the limit, and how long until the same request would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited ({}): retry after {retry_after:?}", limit.as_str())]
pub struct Limited {
    pub limit: Limit,
    pub retry_after: Duration,
}

impl Limited {
    /// `retry_after` in whole seconds, rounded up and at least 1, as the `retry-after` header
    /// says it.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// The 429 for a request to `path`, in the dialect of the API that path belongs to.
    pub fn response(self, path: &str) -> Response {
        if registry::api::owns(path) {
            let error = ApiError::from(self);
            let mut response =
                registry::api::Refusal::rate_limited(error.message, error.details).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, self.retry_after_secs().into());
            return response;
        }
        self.into_response()
    }
}

impl From<Limited> for ApiError {
    fn from(limited: Limited) -> Self {
        let secs = limited.retry_after_secs();
        let what = match limited.limit {
            Limit::Requests => "too many requests from this principal",
            Limit::Events => "too many events from this principal",
            Limit::FailedAuth => "too many failed authentications from this address",
        };
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("{what}; retry after {secs} s"),
        )
        .with_details(json!({"limit": limited.limit.as_str(), "retry_after_seconds": secs}))
        .with_retry_after(secs)
    }
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// The three limiters. Cheap to clone: clones share the buckets.
#[derive(Clone)]
pub struct RateLimits {
    inner: Arc<Limiters>,
}

struct Limiters {
    requests: Option<Keyed<String>>,
    events: Option<Keyed<String>>,
    failed_auth: Option<Keyed<IpAddr>>,
}

impl RateLimits {
    /// The limits `config` sets; a rate of 0 turns that limit off.
    pub fn new(config: &RateLimitConfig) -> Self {
        let second = Duration::from_secs(1);
        let per_minute = config.failed_auth_per_minute;
        Self {
            inner: Arc::new(Limiters {
                requests: limiter(config.requests_per_second, config.request_burst, second),
                events: limiter(config.events_per_second, config.event_burst, second),
                // The budget of a minute, all at once or spread out.
                failed_auth: limiter(per_minute, per_minute, Duration::from_secs(60)),
            }),
        }
    }

    /// Charges one request to `principal` (its name: the same for all its keys).
    pub fn check_request(&self, principal: &str) -> Result<(), Limited> {
        charge(&self.inner.requests, principal, 1, Limit::Requests)
    }

    /// Charges an append of `events` events to `principal`. An append larger than the burst
    /// (only possible from library code; the API's batches fit it) passes from a full bucket only,
    /// and the principal then waits for the excess.
    pub fn check_events(&self, principal: &str, events: u32) -> Result<(), Limited> {
        charge(&self.inner.events, principal, events, Limit::Events)
    }

    /// Whether `peer` may still try to authenticate. Takes nothing: only failures cost.
    pub fn check_peer(&self, peer: IpAddr) -> Result<(), Limited> {
        let Some(limiter) = &self.inner.failed_auth else {
            return Ok(());
        };
        let peer = peer::key(peer);
        limiter
            .peek(&peer, 1, limiter.now())
            .map_err(|wait| refused(Limit::FailedAuth, wait))
    }

    /// Records a failed authentication from `peer`. Once its budget is spent, [`Self::check_peer`]
    /// refuses it until the budget refills; failures past that are not counted again.
    pub fn failed_auth(&self, peer: IpAddr) {
        if let Some(limiter) = &self.inner.failed_auth {
            let _spent = limiter.check(&peer::key(peer), 1, limiter.now());
        }
    }
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |l: bool| if l { "on" } else { "off" };
        f.debug_struct("RateLimits")
            .field("requests", &on(self.inner.requests.is_some()))
            .field("events", &on(self.inner.events.is_some()))
            .field("failed_auth", &on(self.inner.failed_auth.is_some()))
            .finish()
    }
}

/// `rate` per `period` with `burst`, or none for a rate of 0.
fn limiter<K: std::hash::Hash + Eq>(rate: u32, burst: u32, period: Duration) -> Option<Keyed<K>> {
    (rate > 0).then(|| Keyed::new(rate, period, burst.max(1), MAX_KEYS))
}

fn charge(
    limiter: &Option<Keyed<String>>,
    principal: &str,
    cost: u32,
    limit: Limit,
) -> Result<(), Limited> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter
        .check(principal, cost, limiter.now())
        .map_err(|wait| refused(limit, wait))
}

fn refused(limit: Limit, retry_after: Duration) -> Limited {
    metrics::counter!(crate::metrics::RATE_LIMITED, "limit" => limit.as_str()).increment(1);
    Limited { limit, retry_after }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rps: u32, burst: u32, eps: u32, event_burst: u32, failures: u32) -> RateLimits {
        RateLimits::new(&RateLimitConfig {
            requests_per_second: rps,
            request_burst: burst,
            events_per_second: eps,
            event_burst,
            failed_auth_per_minute: failures,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_principal_over_its_request_rate_is_refused_then_allowed_again_and_others_are_not() {
        let limits = limits(2, 3, 0, 0, 0);
        for _ in 0..3 {
            limits.check_request("alice").unwrap();
        }
        let refused = limits.check_request("alice").unwrap_err();
        assert_eq!(refused.limit, Limit::Requests);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.retry_after_secs(), 1);
        limits.check_request("bob").unwrap();

        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(limits.check_request("alice").is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        limits.check_request("alice").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_charged_by_count() {
        let limits = limits(0, 0, 100, 100, 0);
        limits.check_events("alice", 60).unwrap();
        let refused = limits.check_events("alice", 60).unwrap_err();
        assert_eq!(refused.limit, Limit::Events);
        assert_eq!(refused.retry_after, Duration::from_millis(200));
        limits.check_events("alice", 40).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        limits.check_events("alice", 100).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_is_refused_after_its_failures_until_the_minute_refills_them() {
        let limits = limits(0, 0, 0, 0, 3);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            limits.check_peer(peer).unwrap();
            limits.failed_auth(peer);
        }
        let refused = limits.check_peer(peer).unwrap_err();
        assert_eq!(refused.limit, Limit::FailedAuth);
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        limits.check_peer("192.0.2.8".parse().unwrap()).unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        limits.check_peer(peer).unwrap();
    }

    #[test]
    fn zero_turns_each_limit_off() {
        let limits = limits(0, 0, 0, 0, 0);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..10_000 {
            limits.check_request("alice").unwrap();
            limits.check_events("alice", 1_000).unwrap();
            limits.failed_auth(peer);
            limits.check_peer(peer).unwrap();
        }
    }

    #[test]
    fn the_config_defaults_are_on_and_far_above_what_a_test_sends() {
        let limits = RateLimits::new(&RateLimitConfig::default());
        for _ in 0..10_000 {
            limits.check_request("alice").unwrap();
        }
        limits.check_events("alice", 1_000).unwrap();
        assert_eq!(
            format!("{limits:?}"),
            "RateLimits { requests: \"on\", events: \"on\", failed_auth: \"on\" }"
        );
    }

    #[tokio::test]
    async fn a_refusal_is_a_429_with_retry_after_in_whole_seconds_in_either_dialect() {
        let limited = Limited {
            limit: Limit::Events,
            retry_after: Duration::from_millis(1_200),
        };
        for path in ["/v1/aggregates/a/b/events", "/registry/subjects"] {
            let response = limited.response(path);
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()["retry-after"], "2", "{path}");
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
            assert_eq!(body["error"]["details"]["limit"], "events", "{body}");
            assert_eq!(body["error"]["details"]["retry_after_seconds"], 2);
            if path.starts_with("/registry") {
                assert_eq!(body["error_code"], 429, "{body}");
            }
        }
        let short = Limited {
            limit: Limit::Requests,
            retry_after: Duration::from_millis(3),
        };
        assert_eq!(short.into_response().headers()["retry-after"], "1");
    }
}
