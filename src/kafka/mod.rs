//! The Kafka client layer shared by everything that talks to a broker: the producer settings and
//! the one way to hand a record to librdkafka ([`producer`]), and topic creation ([`admin`]).
//! No keel semantics live here: what a record holds is [`crate::wire`]'s, where it goes is the
//! relay's and the consumer runtime's.

pub mod admin;
pub mod producer;

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;

pub use admin::Topics;
pub use producer::{enqueue, producer_config};

/// The settings of `properties` that say how to reach and authenticate to the cluster
/// (`security.*`, `ssl.*`, `sasl.*`), for clients (admin, consumers of a producer's config) that
/// must connect as the producer does but take none of its producing settings.
pub fn connection_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in connection_settings(properties) {
        c.set(k, v);
    }
    c
}

/// The connection and authentication settings of `properties`, alone (see
/// [`connection_config`]).
pub fn connection_settings(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .filter(|(k, _)| {
            k.starts_with("security.") || k.starts_with("ssl.") || k.starts_with("sasl.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
