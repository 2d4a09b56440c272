//! The testkit's errors. Each says what to do next: start the engine, build an image, or read
//! the container's log that is quoted.

use std::fmt;

/// A missing image and the command that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingImage {
    /// The image reference as configured (`keel-local/keel:dev`).
    pub image: String,
    /// The variable it came from (`KEEL_IMAGE`).
    pub variable: &'static str,
    /// What builds or fetches it.
    pub hint: String,
}

impl fmt::Display for MissingImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.image, self.variable, self.hint)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container engine answered.
    #[error(
        "no container engine answers ({detail}): start one with keel's `scripts/engine` \
         (`scripts/engine --install` installs Debian's docker.io), or point DOCKER_HOST at one"
    )]
    NoEngine { detail: String },

    /// Images the engine does not have; nothing was created and nothing pulled.
    #[error("missing container images, none pulled: {}", list(.0))]
    MissingImages(Vec<MissingImage>),

    /// A configuration value the testkit cannot use.
    #[error("{0}")]
    Config(String),

    /// The engine refused or failed an operation on a container.
    #[error("{what}: {source}")]
    Container {
        what: String,
        #[source]
        source: testcontainers::TestcontainersError,
    },

    /// A container started but did not become ready in time, or exited.
    #[error("{what} did not become ready: {detail}")]
    NotReady { what: String, detail: String },
}

fn list(missing: &[MissingImage]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn container(
        what: impl Into<String>,
    ) -> impl FnOnce(testcontainers::TestcontainersError) -> Self {
        let what = what.into();
        move |source| Self::Container { what, source }
    }
}
