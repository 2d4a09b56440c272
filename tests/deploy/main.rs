//! Tests of the deployment files: `docker-compose.yml`, `deploy/k8s` and the offline checks in
//! `deploy/ci` that guard them (`files`, no engine or cluster needed), and docker-compose.yml run
//! on a real container engine (`compose`).

mod compose;
mod files;
mod support;
