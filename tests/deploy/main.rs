//! Tests of the deployment files: `docker-compose.yml`, `deploy/k8s` and the offline checks in
//! `deploy/ci` that guard them. None needs a Docker engine or a cluster.

mod files;
