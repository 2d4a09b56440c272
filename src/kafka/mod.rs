//! The Kafka client layer shared by everything that talks to a broker: the producer settings and
//! the one way to hand a record to librdkafka ([`producer`]), topic creation ([`admin`]), and the
//! partition the producer gives a key ([`partitioner`]).
//! No keel semantics live here: what a record holds is [`crate::wire`]'s, where it goes is the
//! relay's and the consumer runtime's.

pub mod admin;
pub mod partitioner;
pub mod producer;

use std::collections::BTreeMap;

use rdkafka::config::{ClientConfig, FromClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, KafkaResult};

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

/// Whether a librdkafka setting holds a secret (a password, a client secret, a private key, an
/// OAuth bearer config), by its name: such values are never logged or shown.
pub fn is_secret_setting(key: &str) -> bool {
    const SECRET: [&str; 6] = [
        "password",
        "passphrase",
        "secret",
        "key.pem",
        "private.key",
        "oauthbearer.config",
    ];
    let key = key.to_ascii_lowercase();
    SECRET.iter().any(|s| key.contains(s))
}

/// `config.create()`, with secret values removed from the error: rdkafka's error for a
/// setting librdkafka refuses quotes the value it was given. Every Kafka client keel makes is
/// made through this or [`create_with_context`] (`tests/api/architecture.rs` checks).
pub fn create<T: FromClientConfig>(config: &ClientConfig) -> KafkaResult<T> {
    config.create().map_err(|e| without_secrets(e, config))
}

/// `config.create_with_context(context)`, with secret values removed from the error.
pub fn create_with_context<C, T>(config: &ClientConfig, context: C) -> KafkaResult<T>
where
    C: rdkafka::ClientContext,
    T: FromClientConfigAndContext<C>,
{
    config
        .create_with_context(context)
        .map_err(|e| without_secrets(e, config))
}

fn without_secrets(error: KafkaError, config: &ClientConfig) -> KafkaError {
    let secrets: Vec<&str> = config
        .config_map()
        .into_iter()
        .filter(|(k, v)| is_secret_setting(k) && !v.is_empty())
        .map(|(_, v)| v)
        .collect();
    let clean = |text: String| secrets.iter().fold(text, |t, s| t.replace(s, "***"));
    match error {
        KafkaError::ClientConfig(result, description, key, value) => {
            let value = if is_secret_setting(&key) {
                "***".to_owned()
            } else {
                clean(value)
            };
            KafkaError::ClientConfig(result, clean(description), key, value)
        }
        KafkaError::ClientCreation(text) => KafkaError::ClientCreation(clean(text)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::producer::BaseProducer;

    use super::*;

    #[test]
    fn a_refused_secret_setting_is_reported_without_its_value() {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("sasl.password", "s3cret-pw")
            // Refused by a librdkafka without libcurl, or (if it has it) as an unknown setting.
            .set("sasl.oauthbearer.client.secret.nope", "s3cret-oauth");
        let err = create::<BaseProducer>(&config).err().expect("refused");
        let shown = format!("{err} {err:?}");
        assert!(
            shown.contains("sasl.oauthbearer.client.secret.nope"),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn secret_settings_are_known_by_name() {
        for secret in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.assertion.private.key.pem",
        ] {
            assert!(is_secret_setting(secret), "{secret}");
        }
        for plain in ["sasl.username", "security.protocol", "ssl.ca.location"] {
            assert!(!is_secret_setting(plain), "{plain}");
        }
    }
}
