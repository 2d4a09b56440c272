//! Before a stack creates anything, every image must already be on the engine.
//!
//! testcontainers pulls an image when creating a container answers 404. On a machine with no
//! registry that pull fails late and says little, and on one with a registry it silently
//! fetches something other than what the caller built. So the testkit inspects each image first
//! and refuses with the command that builds it; it never pulls.

use testcontainers::bollard::errors::Error as EngineError;
use testcontainers::core::client::docker_client_instance;

use crate::error::MissingImage;
use crate::images::{hint, Images};
use crate::{Error, Result};

/// Checks that the engine answers and has every image of `images`. Nothing is created.
pub async fn check(images: &Images) -> Result<()> {
    let engine = docker_client_instance()
        .await
        .map_err(|e| Error::NoEngine {
            detail: e.to_string(),
        })?;
    engine.ping().await.map_err(|e| Error::NoEngine {
        detail: e.to_string(),
    })?;

    let mut missing = Vec::new();
    for (variable, image) in images.each() {
        match engine.inspect_image(image).await {
            Ok(_) => {}
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => missing.push(MissingImage {
                image: image.to_string(),
                variable,
                hint: hint(variable, image),
            }),
            Err(e) => {
                return Err(Error::NoEngine {
                    detail: format!("inspecting image {image}: {e}"),
                })
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingImages(missing))
    }
}
