//! [`KeelStack`]: one keel with its own PostgreSQL, Redis and broker, each in a container on a
//! network of the stack's own, removed when the stack is dropped.
//!
//! Start-up order: preflight (every image present, or fail before creating anything), then
//! PostgreSQL, Redis and the broker at once, each until its own readiness, then keel in the
//! broker's network namespace ([`crate::containers`] says why), until `GET /v1/health/ready`
//! answers 200. keel migrates its database and loads its event catalog itself on start.

use std::time::{Duration, Instant};

use testcontainers::core::IntoContainerPort;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

use crate::containers::{self, Names, KEEL_PORT};
use crate::credentials::{random_hex, Credentials};
use crate::{preflight, reaper, Error, Images, Result};

/// How long each container may take to become ready, unless the builder says otherwise. Generous,
/// because test machines are often loaded.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(180);

/// How often keel's readiness is asked while it starts.
const READY_POLL: Duration = Duration::from_millis(250);

/// Where a test reaches a stack. Every address is on 127.0.0.1.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// keel's HTTP API, `http://127.0.0.1:<port>` (no trailing slash).
    pub http_url: String,
    /// keel's schema registry in the Confluent dialect: `http_url` + `/registry`.
    pub registry_url: String,
    /// The broker's bootstrap address, `127.0.0.1:<port>`; it is also the address it advertises.
    pub kafka_bootstrap: String,
    /// `redis://127.0.0.1:<port>`.
    pub redis_url: String,
    /// `postgres://keel:<password>@127.0.0.1:<port>/keel`: keel's own database.
    pub database_url: String,
    /// An admin API key (`keel_<id>_<secret>`) for `Authorization: Bearer`, or as HTTP Basic
    /// (`<id>:<secret>`) under `/registry`.
    pub api_key: String,
}

/// The key and the database password are left out, so that endpoints can be logged.
impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("http_url", &self.http_url)
            .field("registry_url", &self.registry_url)
            .field("kafka_bootstrap", &self.kafka_bootstrap)
            .field("redis_url", &self.redis_url)
            .field("database_url", &"postgres://keel:***@...")
            .field("api_key", &"***")
            .finish()
    }
}

/// A running stack. Dropping it removes its containers and then its network.
pub struct KeelStack {
    endpoints: Endpoints,
    images: Images,
    // Fields drop in declaration order: keel first, since it lives in the broker's network
    // namespace; the network goes with the last container that uses it.
    keel: ContainerAsync<GenericImage>,
    broker: ContainerAsync<GenericImage>,
    redis: ContainerAsync<GenericImage>,
    postgres: ContainerAsync<GenericImage>,
}

impl KeelStack {
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The images this stack runs.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// Container ids, for a test that wants to look inside (`docker logs`, `docker exec`):
    /// keel, broker, Redis, PostgreSQL.
    pub fn container_ids(&self) -> [&str; 4] {
        [
            self.keel.id(),
            self.broker.id(),
            self.redis.id(),
            self.postgres.id(),
        ]
    }
}

/// How to start a stack; [`Builder::start`] does it.
#[derive(Debug, Clone)]
pub struct Builder {
    images: Option<Images>,
    startup_timeout: Duration,
    keel_env: Vec<(String, String)>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            images: None,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            keel_env: Vec::new(),
        }
    }
}

impl Builder {
    /// The images to run; by default [`Images::from_env`].
    pub fn images(mut self, images: Images) -> Self {
        self.images = Some(images);
        self
    }

    /// How long each container may take to become ready (default three minutes).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// An extra environment variable for keel (any `KEEL_*` setting), applied after the
    /// testkit's own, so it can override them.
    pub fn keel_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.keel_env.push((name.into(), value.into()));
        self
    }

    /// Starts the stack and waits until keel is ready.
    pub async fn start(self) -> Result<KeelStack> {
        let images = match self.images {
            Some(images) => images,
            None => Images::from_env()?,
        };
        preflight::check(&images).await?;
        // Best effort: a stack that cannot reap still starts, and a real engine problem shows in
        // the next call.
        let _ = reaper::reap().await;

        let stack_id = random_hex(4);
        let names = Names::new(&stack_id);
        let credentials = Credentials::generate();
        let broker_port = containers::free_port()?;
        let timeout = self.startup_timeout;

        let (postgres, redis, broker) = tokio::try_join!(
            async {
                owned(
                    containers::postgres(&images, &names, &credentials, timeout),
                    &stack_id,
                )
                .start()
                .await
                .map_err(Error::container(format!(
                    "starting PostgreSQL ({})",
                    images.postgres
                )))
            },
            async {
                owned(containers::redis(&images, &names, timeout), &stack_id)
                    .start()
                    .await
                    .map_err(Error::container(format!(
                        "starting Redis ({})",
                        images.redis
                    )))
            },
            async {
                owned(
                    containers::broker(&images, &names, broker_port, timeout),
                    &stack_id,
                )
                .start()
                .await
                .map_err(Error::container(format!(
                    "starting the broker ({}) on 127.0.0.1:{broker_port}",
                    images.broker
                )))
            },
        )?;

        let keel = owned(
            containers::keel(
                &images,
                &names,
                &credentials,
                broker.id(),
                broker_port,
                &self.keel_env,
            ),
            &stack_id,
        )
        .start()
        .await
        .map_err(Error::container(format!("starting keel ({})", images.keel)))?;

        let http_url = format!(
            "http://127.0.0.1:{}",
            published(&broker, KEEL_PORT, "keel").await?
        );
        let endpoints = Endpoints {
            registry_url: format!("{http_url}/registry"),
            kafka_bootstrap: format!("127.0.0.1:{broker_port}"),
            redis_url: format!(
                "redis://127.0.0.1:{}",
                published(&redis, 6379, "Redis").await?
            ),
            database_url: format!(
                "postgres://keel:{}@127.0.0.1:{}/keel",
                credentials.database_password,
                published(&postgres, 5432, "PostgreSQL").await?
            ),
            api_key: credentials.admin_key.clone(),
            http_url,
        };
        wait_ready(&keel, &images.keel, &endpoints.http_url, timeout).await?;

        Ok(KeelStack {
            endpoints,
            images,
            keel,
            broker,
            redis,
            postgres,
        })
    }
}

/// `request` labelled with its stack and this test process, so that [`reaper::reap`] can remove
/// it if this process is killed before it drops the stack.
fn owned(request: ContainerRequest<GenericImage>, stack: &str) -> ContainerRequest<GenericImage> {
    let request = request.with_label(reaper::STACK, stack);
    match reaper::this_process() {
        Some(owner) => request.with_label(reaper::OWNER, owner),
        None => request,
    }
}

/// The host port (on 127.0.0.1) a container's `port` is published on.
async fn published(container: &ContainerAsync<GenericImage>, port: u16, what: &str) -> Result<u16> {
    container
        .get_host_port_ipv4(port.tcp())
        .await
        .map_err(Error::container(format!("reading {what}'s published port")))
}

/// Polls keel's readiness until it answers 200, keel's container exits, or `timeout` passes;
/// the last two fail with the end of keel's log, which says why.
async fn wait_ready(
    keel: &ContainerAsync<GenericImage>,
    image: &str,
    http_url: &str,
    timeout: Duration,
) -> Result<()> {
    let url = format!("{http_url}/v1/health/ready");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Config(format!("cannot build an HTTP client: {e}")))?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status();
                format!("{status}: {}", response.text().await.unwrap_or_default())
            }
            Err(e) => e.to_string(),
        };
        let running = keel.is_running().await.unwrap_or(false);
        if !running || Instant::now() >= deadline {
            let why = if running {
                format!("no 200 from {url} within {timeout:?}; last answer: {last}")
            } else {
                "its container exited".to_string()
            };
            return Err(Error::NotReady {
                what: format!("keel ({image})"),
                detail: format!("{why}; the end of its log:\n{}", log_tail(keel).await),
            });
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// The last lines of a container's stdout and stderr.
async fn log_tail(container: &ContainerAsync<GenericImage>) -> String {
    const LINES: usize = 30;
    let mut out = String::new();
    for (stream, bytes) in [
        ("stdout", container.stdout_to_vec().await),
        ("stderr", container.stderr_to_vec().await),
    ] {
        let text = match bytes {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read: {e})"),
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LINES)..];
        out.push_str(&format!("--- {stream}\n{}\n", tail.join("\n")));
    }
    out
}
