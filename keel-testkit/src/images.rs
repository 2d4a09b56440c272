//! Which image each container of a stack runs. The variables are the ones keel's compose file
//! reads, so one `eval "$(scripts/images)"` points both at the same images:
//!
//! | variable | default | role |
//! |---|---|---|
//! | `KEEL_IMAGE` | `keel:0.1.0` (`docker build -t keel:0.1.0 .` in keel's repository) | keel |
//! | `KEEL_POSTGRES_IMAGE` | `postgres:16` | PostgreSQL (honours `POSTGRES_USER/PASSWORD/DB`) |
//! | `KEEL_REDIS_IMAGE` | `redis:7` | Redis |
//! | `KEEL_BROKER_IMAGE` | `redpandadata/redpanda:v24.2.7` | the Kafka-protocol broker |
//! | `KEEL_BROKER_FLAVOR` | from the broker image's name | `redpanda` or `nisshi` |
//!
//! An empty variable counts as unset.

use crate::{Error, Result};

pub const DEFAULT_KEEL: &str = "keel:0.1.0";
pub const DEFAULT_POSTGRES: &str = "postgres:16";
pub const DEFAULT_REDIS: &str = "redis:7";
pub const DEFAULT_BROKER: &str = "redpandadata/redpanda:v24.2.7";

/// The broker implementations the testkit knows how to configure; they differ only in how they
/// are told their listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerFlavor {
    /// Redpanda in dev-container mode. Written from Redpanda's documentation; not run here (no
    /// registry to fetch its image from).
    Redpanda,
    /// nisshi, the broker keel's own tests use (`keel-local/nisshi` from `scripts/images`).
    Nisshi,
}

impl BrokerFlavor {
    /// `nisshi` when the image's name says so, else Redpanda.
    pub fn guess(image: &str) -> Self {
        if image.contains("nisshi") {
            Self::Nisshi
        } else {
            Self::Redpanda
        }
    }

    fn parse(value: &str) -> Result<Self> {
        match value {
            "redpanda" => Ok(Self::Redpanda),
            "nisshi" => Ok(Self::Nisshi),
            other => Err(Error::Config(format!(
                "KEEL_BROKER_FLAVOR is {other:?}: use `redpanda` or `nisshi`"
            ))),
        }
    }
}

/// The four images of a stack, and the broker's flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub keel: String,
    pub postgres: String,
    pub redis: String,
    pub broker: String,
    pub broker_flavor: BrokerFlavor,
}

impl Images {
    /// The images named by the `KEEL_*_IMAGE` variables, with the defaults above.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`Images::from_env`], reading variables through `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str, default: &str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        let broker = get("KEEL_BROKER_IMAGE", DEFAULT_BROKER);
        let broker_flavor = match lookup("KEEL_BROKER_FLAVOR").filter(|v| !v.trim().is_empty()) {
            Some(flavor) => BrokerFlavor::parse(flavor.trim())?,
            None => BrokerFlavor::guess(&broker),
        };
        Ok(Self {
            keel: get("KEEL_IMAGE", DEFAULT_KEEL),
            postgres: get("KEEL_POSTGRES_IMAGE", DEFAULT_POSTGRES),
            redis: get("KEEL_REDIS_IMAGE", DEFAULT_REDIS),
            broker,
            broker_flavor,
        })
    }

    /// Each image with the variable that names it, in start-up order.
    pub fn each(&self) -> [(&'static str, &str); 4] {
        [
            ("KEEL_POSTGRES_IMAGE", &self.postgres),
            ("KEEL_REDIS_IMAGE", &self.redis),
            ("KEEL_BROKER_IMAGE", &self.broker),
            ("KEEL_IMAGE", &self.keel),
        ]
    }
}

/// What makes `image` when the engine lacks it. The testkit never pulls, so even a registry
/// image is the caller's to fetch.
pub fn hint(variable: &str, image: &str) -> String {
    if image.starts_with("keel-local/") {
        "build the local images with keel's `scripts/images` (it prints the KEEL_*_IMAGE \
         variables to export)"
            .to_string()
    } else if variable == "KEEL_IMAGE" {
        format!(
            "build it in keel's repository with `docker build -t {image} .`, or build the local \
             images with `scripts/images` and export the variables it prints"
        )
    } else {
        format!(
            "fetch it yourself (`docker pull {image}`), or build the local images with keel's \
             `scripts/images` and export the variables it prints"
        )
    }
}

/// `name:tag` split the way the engine reads it: the tag is after the last `:` that follows the
/// last `/` (a registry's port is not a tag); no tag means `latest`.
pub(crate) fn split(image: &str) -> (&str, &str) {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(colon) => (&image[..slash + colon], &image[slash + colon + 1..]),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn images(vars: &[(&str, &str)]) -> Result<Images> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Images::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_are_the_released_images_with_redpanda() {
        let images = images(&[]).unwrap();
        assert_eq!(images.keel, "keel:0.1.0");
        assert_eq!(images.postgres, "postgres:16");
        assert_eq!(images.redis, "redis:7");
        assert_eq!(images.broker, "redpandadata/redpanda:v24.2.7");
        assert_eq!(images.broker_flavor, BrokerFlavor::Redpanda);
    }

    #[test]
    fn a_nisshi_image_is_the_nisshi_flavour_unless_the_variable_says_otherwise() {
        let local = images(&[("KEEL_BROKER_IMAGE", "keel-local/nisshi:0.8.1")]).unwrap();
        assert_eq!(local.broker_flavor, BrokerFlavor::Nisshi);
        let forced = images(&[
            ("KEEL_BROKER_IMAGE", "keel-local/nisshi:0.8.1"),
            ("KEEL_BROKER_FLAVOR", "redpanda"),
        ])
        .unwrap();
        assert_eq!(forced.broker_flavor, BrokerFlavor::Redpanda);
        let err = images(&[("KEEL_BROKER_FLAVOR", "kafka")]).unwrap_err();
        assert!(err.to_string().contains("`redpanda` or `nisshi`"), "{err}");
    }

    #[test]
    fn an_empty_variable_counts_as_unset() {
        assert_eq!(images(&[("KEEL_IMAGE", " ")]).unwrap().keel, "keel:0.1.0");
    }

    #[test]
    fn tags_split_after_the_last_slash_only() {
        assert_eq!(split("keel-local/keel:dev"), ("keel-local/keel", "dev"));
        assert_eq!(split("redis"), ("redis", "latest"));
        assert_eq!(
            split("registry:5000/redis"),
            ("registry:5000/redis", "latest")
        );
        assert_eq!(split("registry:5000/redis:7"), ("registry:5000/redis", "7"));
    }

    #[test]
    fn hints_name_the_command_that_makes_the_image() {
        assert!(hint("KEEL_IMAGE", "keel-local/keel:dev").contains("scripts/images"));
        assert!(hint("KEEL_IMAGE", "keel:0.1.0").contains("docker build -t keel:0.1.0 ."));
        assert!(hint("KEEL_REDIS_IMAGE", "redis:7").contains("docker pull redis:7"));
    }
}
