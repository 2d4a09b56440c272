//! The HTTP client of the operator commands (`keel outbox`, `dlq`, `replay`, `jobs`,
//! `principal`, `grant`, `audit`): they act only through keel's API, so every one of their actions passes the
//! same authorisation and writes the same audit row as any other client's. No operator command
//! opens the database.
//!
//! - The server: `--url` or `KEEL_URL`; by default the config's `listen` address, over HTTPS
//!   when the config sets `api.tls` (`http://127.0.0.1:8080` with the default config). An https
//!   URL is verified against the system's roots, or against `--ca-file` / `KEEL_CA_FILE` (a
//!   private CA).
//! - The credential: `KEEL_API_KEY` only, never a flag, so that it does not show in `ps` or in a
//!   shell's history. It is sent as `Authorization: Bearer`, marked sensitive.
//! - Failures ([`Error`]) carry keel's error code and message and say what to do next: which key
//!   to set (401), which grant to ask for (403), where the server should be (unreachable).
//! - Long jobs answer with NDJSON ([`Job`]): `started` with the job's id, `running` every few
//!   seconds (with its progress), then one `done` or `cancelled` line with the report, or
//!   `failed` or `interrupted`.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::config::Config;

/// A request that gets no answer within this time fails; long jobs are exempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What a request needs to be allowed, for the hints of a 401 or a 403: the action in grant
/// words, and the name it acts on when it has one (a group, a topic, a projection).
#[derive(Debug, Clone, Copy)]
pub struct Need<'a> {
    pub action: &'static str,
    pub resource: Option<&'a str>,
}

impl Need<'static> {
    /// An action on the whole system (the outbox, principals, the audit log).
    pub fn system(action: &'static str) -> Self {
        Self {
            action,
            resource: None,
        }
    }
}

impl<'a> Need<'a> {
    pub fn on(action: &'static str, resource: &'a str) -> Self {
        Self {
            action,
            resource: Some(resource),
        }
    }
}

/// Why an operator command's request failed. The message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach keel at {url} ({reason})\n  is `keel serve` running at {url}? set KEEL_URL (or --url) to its address{tls}")]
    Unreachable {
        url: String,
        reason: String,
        /// For an https URL: how to trust a private CA.
        tls: &'static str,
    },
    /// keel refused the request: `{"error": {"code", "message", "details"}}`.
    #[error("{}", api_message(.code, .message, .details, .hint))]
    Api {
        status: StatusCode,
        code: String,
        message: String,
        details: Value,
        hint: Option<String>,
    },
    /// The job ran and failed on the server.
    #[error("the job failed: {code}: {message}")]
    JobFailed { code: String, message: String },
    /// The job's stream ended before its final line: the server stopped or the connection broke.
    #[error("the connection to keel closed before the job's end ({reason}); it may still be running on the server: run the same command again to resume it or to see its result")]
    Cut { reason: String },
    #[error("--url {0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error("--ca-file {path}: {problem}")]
    BadCa { path: String, problem: String },
    #[error("unexpected reply from keel: {0}")]
    Protocol(String),
}

fn api_message(code: &str, message: &str, details: &Value, hint: &Option<String>) -> String {
    let mut text = format!("{code}: {message}");
    // The hint says in words what the details of a 401 or 403 say.
    let interesting = hint.is_none() && details.as_object().is_some_and(|d| !d.is_empty());
    if interesting {
        text.push_str(&format!(" {details}"));
    }
    if let Some(hint) = hint {
        text.push_str("\n  ");
        text.push_str(hint);
    }
    text
}

impl Error {
    /// keel's error code, for a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } | Self::JobFailed { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// keel's API as one operator sees it: an address and, usually, a key.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// The URL keel serves on with `config`: its `listen` address, with a wildcard address (which
/// listens on every interface) replaced by loopback; https when the API terminates TLS.
pub fn default_url(config: &Config) -> String {
    let mut addr: SocketAddr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let scheme = if config.api.tls.enabled() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

impl Client {
    /// A client for `url` (or the config's address) with the key in `KEEL_API_KEY`, if any,
    /// trusting `ca_file` for https.
    pub fn from_env(
        url: Option<&str>,
        ca_file: Option<&Path>,
        config: &Config,
    ) -> Result<Self, Error> {
        let key = std::env::var("KEEL_API_KEY")
            .ok()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());
        let url = url.map_or_else(|| default_url(config), str::to_owned);
        Self::new(&url, key, ca_file)
    }

    pub fn new(url: &str, key: Option<String>, ca_file: Option<&Path>) -> Result<Self, Error> {
        let base = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            .ok_or_else(|| Error::BadUrl(url.to_owned()))?;
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(path) = ca_file {
            let bad = |problem: String| Error::BadCa {
                path: path.display().to_string(),
                problem,
            };
            let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read the file: {e}")))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
            if roots.is_empty() {
                return Err(bad("holds no PEM certificate".into()));
            }
            // Only this CA: a private keel is not vouched for by the public roots.
            builder = builder.tls_built_in_root_certs(false);
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Error::Protocol(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self { http, base, key })
    }

    /// The URL of the path made of `segments`, each percent-encoded as one segment (a group or
    /// principal name can hold any character).
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, url);
        if let Some(key) = &self.key {
            if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {key}")) {
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
        }
        request
    }

    /// GET `segments` with `query`; the JSON answer.
    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        need: Need<'_>,
    ) -> Result<Value, Error> {
        let request = self.request(Method::GET, self.url(segments)).query(query);
        self.json(request, need).await
    }

    /// GET a health endpoint: its JSON answer and whether it said healthy (200) or not (503).
    /// Other refusals are errors, as for [`Client::get`].
    pub async fn get_health(&self, segments: &[&str]) -> Result<(bool, Value), Error> {
        let request = self
            .request(Method::GET, self.url(segments))
            .timeout(REQUEST_TIMEOUT);
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let healthy = match response.status() {
            StatusCode::OK => true,
            StatusCode::SERVICE_UNAVAILABLE => false,
            _ => return Err(self.refusal(response, Need::system("health")).await),
        };
        let body = response
            .json()
            .await
            .map_err(|e| Error::Protocol(format!("the answer is not JSON: {e}")))?;
        Ok((healthy, body))
    }

    /// POST `body` to `segments`; the JSON answer.
    pub async fn post(
        &self,
        segments: &[&str],
        body: &Value,
        need: Need<'_>,
    ) -> Result<Value, Error> {
        let request = self.request(Method::POST, self.url(segments)).json(body);
        self.json(request, need).await
    }

    pub async fn delete(&self, segments: &[&str], need: Need<'_>) -> Result<Value, Error> {
        let request = self.request(Method::DELETE, self.url(segments));
        self.json(request, need).await
    }

    async fn json(&self, request: reqwest::RequestBuilder, need: Need<'_>) -> Result<Value, Error> {
        let response = self.send(request.timeout(REQUEST_TIMEOUT), need).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::Protocol(format!("the answer broke off: {e}")))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Protocol(format!("the answer is not JSON: {e}")))
    }

    /// Sends `request`; a success, or the refusal as [`Error::Api`] with its hint.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        need: Need<'_>,
    ) -> Result<reqwest::Response, Error> {
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.refusal(response, need).await)
    }

    fn unreachable(&self, err: &reqwest::Error) -> Error {
        let reason = if err.is_connect() {
            "connection failed"
        } else if err.is_timeout() {
            "no answer in time"
        } else {
            "request failed"
        };
        // The innermost cause is the one that explains (connection refused, no such host).
        let detail = std::iter::successors(std::error::Error::source(err), |e| e.source())
            .last()
            .map(|cause| format!(": {cause}"))
            .unwrap_or_default();
        let tls = if self.base.scheme() == "https" {
            "; if its certificate comes from a private CA, set KEEL_CA_FILE (or --ca-file) to that CA"
        } else {
            ""
        };
        Error::Unreachable {
            url: self.base.as_str().trim_end_matches('/').to_owned(),
            reason: format!("{reason}{detail}"),
            tls,
        }
    }

    async fn refusal(&self, response: reqwest::Response, need: Need<'_>) -> Error {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = response
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let error = &body["error"];
        let code = error["code"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("http_{}", status.as_u16()));
        let message = error["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        let details = error["details"].clone();
        let hint = self.hint(status, &code, &details, need, retry_after.as_deref());
        Error::Api {
            status,
            code,
            message,
            details,
            hint,
        }
    }

    /// What the operator can do about a refusal.
    fn hint(
        &self,
        status: StatusCode,
        code: &str,
        details: &Value,
        need: Need<'_>,
        retry_after: Option<&str>,
    ) -> Option<String> {
        let allowed = match need.resource {
            Some(r) => format!("{} on {r}", need.action),
            None => need.action.to_owned(),
        };
        match status {
            StatusCode::UNAUTHORIZED => Some(match (&self.key, code) {
                (None, _) => format!(
                    "KEEL_API_KEY is not set: set it to a key of a principal allowed {allowed}"
                ),
                (Some(_), "token_expired") => format!(
                    "the token in KEEL_API_KEY has expired: set KEEL_API_KEY to a fresh credential of a principal allowed {allowed}"
                ),
                (Some(_), _) => format!(
                    "the key in KEEL_API_KEY is not accepted (unknown, revoked or expired, or its principal is disabled): set KEEL_API_KEY to a key of a principal allowed {allowed}"
                ),
            }),
            StatusCode::FORBIDDEN => {
                let action = details["action"].as_str().unwrap_or(need.action);
                // The name comes from the command: a 403 says nothing about the resource.
                let resource = need.resource.filter(|_| action == need.action);
                let on = resource.map(|r| format!(" on {r}")).unwrap_or_default();
                let flag = resource
                    .map(|r| format!(" --resource {r}"))
                    .unwrap_or_default();
                Some(format!(
                    "this key's principal lacks the grant {action}{on}; ask an admin: keel grant add PRINCIPAL {action}{flag}"
                ))
            }
            StatusCode::TOO_MANY_REQUESTS => Some(match retry_after {
                Some(s) => format!("rate limited: retry in {s} s"),
                None => "rate limited: retry later".to_owned(),
            }),
            _ => None,
        }
    }

    /// Starts the long job at `segments` with `body` and returns its stream of lines. A refusal
    /// before the start is an ordinary [`Error::Api`].
    pub async fn job(&self, segments: &[&str], body: &Value, need: Need<'_>) -> Result<Job, Error> {
        // No overall timeout: a job may run for hours; the server writes a line every few seconds.
        let request = self.request(Method::POST, self.url(segments)).json(body);
        let response = self.send(request, need).await?;
        let ndjson = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/x-ndjson"));
        if !ndjson {
            return Err(Error::Protocol(
                "a job's answer must be application/x-ndjson".into(),
            ));
        }
        Ok(Job {
            response,
            buffer: Vec::new(),
            finished: false,
        })
    }
}

/// One line of a job's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// The job's id (`keel jobs show ID`).
    Started { job: String },
    Running {
        elapsed_s: f64,
        done: u64,
        total: Option<u64>,
        rate: Option<f64>,
    },
    /// The job's report; the last line. A cancelled job's report says so.
    Done(Value),
}

/// A running job's answer, line by line.
#[derive(Debug)]
pub struct Job {
    response: reqwest::Response,
    buffer: Vec<u8>,
    finished: bool,
}

impl Job {
    /// The next line; `Ok(None)` after the final one. A `failed` line is [`Error::JobFailed`];
    /// a stream that ends without a final line is [`Error::Cut`].
    pub async fn next(&mut self) -> Result<Option<Line>, Error> {
        if self.finished {
            return Ok(None);
        }
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return self.parse(&line).map(Some);
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) if !self.buffer.iter().all(u8::is_ascii_whitespace) => {
                    // A last line without its newline.
                    let line = std::mem::take(&mut self.buffer);
                    return self.parse(&line).map(Some);
                }
                Ok(None) => {
                    return Err(Error::Cut {
                        reason: "the stream ended".into(),
                    })
                }
                Err(e) => {
                    return Err(Error::Cut {
                        reason: format!("the stream broke: {e}"),
                    })
                }
            }
        }
    }

    fn parse(&mut self, line: &[u8]) -> Result<Line, Error> {
        let value: Value = serde_json::from_slice(line)
            .map_err(|e| Error::Protocol(format!("a job line is not JSON: {e}")))?;
        match value["state"].as_str() {
            Some("started") => Ok(Line::Started {
                job: value["job"].as_str().unwrap_or_default().to_owned(),
            }),
            Some("running") => Ok(Line::Running {
                elapsed_s: value["elapsed_s"].as_f64().unwrap_or_default(),
                done: value["done"].as_u64().unwrap_or_default(),
                total: value["total"].as_u64(),
                rate: value["rate"].as_f64(),
            }),
            Some("done" | "cancelled") => {
                self.finished = true;
                Ok(Line::Done(value["report"].clone()))
            }
            Some("failed" | "interrupted") => {
                self.finished = true;
                let error = &value["error"];
                Err(Error::JobFailed {
                    code: error["code"].as_str().unwrap_or("failed").to_owned(),
                    message: error["message"].as_str().unwrap_or_default().to_owned(),
                })
            }
            _ => Err(Error::Protocol(format!("unknown job line {value}"))),
        }
    }
}

/// The array under `field` of an answer.
pub fn list(answer: &Value, field: &str) -> anyhow::Result<Vec<Value>> {
    answer[field]
        .as_array()
        .cloned()
        .with_context(|| format!("unexpected reply from keel: no {field:?} list"))
}

/// `values` as rows of `T`, for a table.
pub fn rows<T: serde::de::DeserializeOwned>(values: &[Value]) -> anyhow::Result<Vec<T>> {
    values
        .iter()
        .map(|v| T::deserialize(v).context("unexpected reply from keel"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded_and_a_base_path_is_kept() {
        let client = Client::new("http://127.0.0.1:8080/keel/", None, None).unwrap();
        assert_eq!(
            client.url(&["v1", "dlq", "a/b c", "retry"]).as_str(),
            "http://127.0.0.1:8080/keel/v1/dlq/a%2Fb%20c/retry"
        );
        assert!(Client::new("127.0.0.1:8080", None, None).is_err());
        assert!(Client::new("ftp://x", None, None).is_err());
    }

    #[test]
    fn the_default_url_is_the_listen_address_on_loopback() {
        let mut config = Config::default();
        assert_eq!(default_url(&config), "http://127.0.0.1:8080");
        config.listen = ([0, 0, 0, 0], 9000).into();
        assert_eq!(default_url(&config), "http://127.0.0.1:9000");
        config.api.tls.cert_file = Some("c.pem".into());
        assert_eq!(default_url(&config), "https://127.0.0.1:9000");
    }

    #[test]
    fn the_debug_form_hides_the_key() {
        let client = Client::new("http://x", Some("keel_secret".into()), None).unwrap();
        assert!(!format!("{client:?}").contains("keel_secret"));
    }
}
