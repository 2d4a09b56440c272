//! The container requests of one stack, and how the containers reach each other.
//!
//! # The broker's one advertised listener
//!
//! A Kafka client bootstraps from any address but then connects to the address the broker
//! *advertises*, so that address must work for both of the broker's clients: the test process
//! on the host and keel in its container. nisshi has exactly one listener and one advertised
//! address, so the usual pair (an internal and an external listener) is not available.
//!
//! The testkit therefore picks a free host port `P` and
//! - runs the broker listening on `P` inside its container, published as `127.0.0.1:P -> P`,
//!   advertising `127.0.0.1:P`: from the host that is the published port;
//! - runs keel in the **broker container's network namespace** (`network_mode =
//!   container:<broker id>`), where `127.0.0.1:P` is the broker itself.
//!
//! Since keel has no network of its own, its port 8080 is published on the broker container
//! (declared when the broker is created), and keel reaches PostgreSQL and Redis by their
//! container names because the broker's namespace is attached to the stack's network. Redpanda
//! is configured the same way (one listener on `P`), although it could have two.
//!
//! Picking `P` has a small race: the port is free when chosen and bound by the engine a moment
//! later; another process taking it in between makes the broker's start fail with a clear error.
//!
//! Every published port is bound to 127.0.0.1, never to every interface (testcontainers' own
//! bindings have no host address, which the engine reads as 0.0.0.0).

use std::time::Duration;

use testcontainers::bollard::models::HostConfig;
use testcontainers::core::{ContainerPort, IntoContainerPort, WaitFor};
use testcontainers::{ContainerRequest, CopyTargetOptions, GenericImage, Healthcheck, ImageExt};

use crate::credentials::Credentials;
use crate::images::{split, BrokerFlavor, Images};
use crate::Result;

/// Port keel listens on in its image (`KEEL_LISTEN=0.0.0.0:8080`).
pub const KEEL_PORT: u16 = 8080;
/// Where the bootstrap admin key is written in the keel container.
pub const BOOTSTRAP_KEY_PATH: &str = "/etc/keel-testkit/bootstrap.key";

const DATABASE: &str = "keel";
const DATABASE_USER: &str = "keel";

/// Names of one stack's network and containers; unique per stack, so stacks of parallel test
/// binaries never meet.
#[derive(Debug, Clone)]
pub struct Names {
    pub network: String,
    pub postgres: String,
    pub redis: String,
    pub broker: String,
    pub keel: String,
}

impl Names {
    pub fn new(stack_id: &str) -> Self {
        let name = |role: &str| format!("keel-testkit-{stack_id}-{role}");
        Self {
            network: name("net"),
            postgres: name("postgres"),
            redis: name("redis"),
            broker: name("broker"),
            keel: name("keel"),
        }
    }
}

/// A free TCP port on 127.0.0.1 for the broker's listener (see the module doc for the race).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| crate::Error::Config(format!("no free port on 127.0.0.1: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| crate::Error::Config(format!("no free port on 127.0.0.1: {e}")))
}

/// Binds every published port of a container to 127.0.0.1.
fn loopback_only(config: &mut HostConfig) {
    for bindings in config
        .port_bindings
        .iter_mut()
        .flat_map(|map| map.values_mut())
    {
        for binding in bindings.iter_mut().flatten() {
            binding.host_ip = Some("127.0.0.1".to_string());
        }
    }
}

fn image(reference: &str, ready: WaitFor) -> GenericImage {
    let (name, tag) = split(reference);
    GenericImage::new(name, tag).with_wait_for(ready)
}

/// A health check every second, so readiness is seen within a second of it happening.
fn health(test: &[&str]) -> Healthcheck {
    Healthcheck::cmd(test.iter().copied())
        .with_interval(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(3))
        .with_retries(120)
}

/// PostgreSQL, with a fresh `keel` database and user; ready when `pg_isready` answers over TCP
/// (the official image's init server listens on the socket only, so it never counts).
pub fn postgres(
    images: &Images,
    names: &Names,
    credentials: &Credentials,
    timeout: Duration,
) -> ContainerRequest<GenericImage> {
    image(&images.postgres, WaitFor::healthcheck())
        .with_network(&names.network)
        .with_container_name(&names.postgres)
        .with_env_var("POSTGRES_USER", DATABASE_USER)
        .with_env_var("POSTGRES_PASSWORD", &credentials.database_password)
        .with_env_var("POSTGRES_DB", DATABASE)
        .with_health_check(health(&[
            "pg_isready",
            "-h",
            "127.0.0.1",
            "-U",
            DATABASE_USER,
            "-d",
            DATABASE,
        ]))
        .with_mapped_port(0, 5432.tcp())
        .with_host_config_modifier(loopback_only)
        .with_startup_timeout(timeout)
}

/// Redis; ready when `redis-cli ping` answers.
pub fn redis(images: &Images, names: &Names, timeout: Duration) -> ContainerRequest<GenericImage> {
    image(&images.redis, WaitFor::healthcheck())
        .with_network(&names.network)
        .with_container_name(&names.redis)
        .with_health_check(health(&["redis-cli", "ping"]))
        .with_mapped_port(0, 6379.tcp())
        .with_host_config_modifier(loopback_only)
        .with_startup_timeout(timeout)
}

/// The broker, listening on and advertising `127.0.0.1:port`, and publishing keel's port too
/// (keel runs in this container's network namespace).
pub fn broker(
    images: &Images,
    names: &Names,
    port: u16,
    timeout: Duration,
) -> ContainerRequest<GenericImage> {
    let request = match images.broker_flavor {
        // The image's own health check probes 9092; this one probes the port it was given.
        BrokerFlavor::Nisshi => image(&images.broker, WaitFor::healthcheck())
            .with_env_var("LISTENER_URL", format!("tcp://0.0.0.0:{port}"))
            .with_env_var("ADVERTISED_LISTENER_URL", format!("tcp://127.0.0.1:{port}"))
            .with_health_check(health(&[
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/127.0.0.1/{port}"),
            ])),
        // From Redpanda's documentation (`redpanda start`, dev-container mode); untested here.
        BrokerFlavor::Redpanda => image(
            &images.broker,
            WaitFor::message_on_either_std("Successfully started Redpanda!"),
        )
        .with_cmd([
            "redpanda".to_string(),
            "start".to_string(),
            "--mode".to_string(),
            "dev-container".to_string(),
            "--smp".to_string(),
            "1".to_string(),
            "--kafka-addr".to_string(),
            format!("0.0.0.0:{port}"),
            "--advertise-kafka-addr".to_string(),
            format!("127.0.0.1:{port}"),
        ]),
    };
    request
        .with_network(&names.network)
        .with_container_name(&names.broker)
        .with_mapped_port(port, ContainerPort::Tcp(port))
        .with_mapped_port(0, KEEL_PORT.tcp())
        .with_host_config_modifier(loopback_only)
        .with_startup_timeout(timeout)
}

/// keel (`serve --relay --projections`) in the broker container's network namespace, with the
/// stack's credentials; `extra_env` comes last, so a test can override any `KEEL_*` setting.
/// Readiness is polled by the stack over HTTP, since keel publishes no port of its own.
pub fn keel(
    images: &Images,
    names: &Names,
    credentials: &Credentials,
    broker_id: &str,
    broker_port: u16,
    extra_env: &[(String, String)],
) -> ContainerRequest<GenericImage> {
    let database_url = format!(
        "postgres://{DATABASE_USER}:{}@{}:5432/{DATABASE}",
        credentials.database_password, names.postgres
    );
    let network_mode = format!("container:{broker_id}");
    let mut request = image(&images.keel, WaitFor::Nothing)
        .with_container_name(&names.keel)
        .with_cmd(["serve", "--relay", "--projections"])
        .with_env_var("KEEL_DATABASE_URL", database_url)
        .with_env_var("KEEL_REDIS_URL", format!("redis://{}:6379", names.redis))
        .with_env_var("KEEL_KAFKA_BROKERS", format!("127.0.0.1:{broker_port}"))
        .with_env_var("KEEL_AUTH__KEY_SECRET", &credentials.key_secret)
        .with_env_var("KEEL_AUTH__BOOTSTRAP_KEY_FILE", BOOTSTRAP_KEY_PATH)
        .with_copy_to(
            CopyTargetOptions::new(BOOTSTRAP_KEY_PATH).with_mode(0o444),
            format!("{}\n", credentials.admin_key).into_bytes(),
        )
        // Not `with_network`: testcontainers would try to create a network named
        // `container:<id>`. The engine refuses any published or exposed port in this mode, and
        // testcontainers publishes all ports unless told otherwise.
        .with_host_config_modifier(move |config| {
            config.network_mode = Some(network_mode.clone());
            config.publish_all_ports = Some(false);
            config.port_bindings = None;
        });
    for (name, value) in extra_env {
        request = request.with_env_var(name, value);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use testcontainers::bollard::models::PortBinding;

    #[test]
    fn published_ports_are_bound_to_loopback() {
        let mut config = HostConfig {
            port_bindings: Some(HashMap::from([(
                "5432/tcp".to_string(),
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: Some("0".into()),
                }]),
            )])),
            ..Default::default()
        };
        loopback_only(&mut config);
        let binding = &config.port_bindings.unwrap()["5432/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("0"));
    }
}
