//! The deployment files, checked for real: docker-compose.yml run on a container engine.

mod compose;
mod support;
