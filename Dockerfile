# keel's image: one binary, one role per container (serve, relay, project, migrate), non-root,
# checked by its own binary (no curl in the image).
#
#   docker build -t keel:0.1.0 .            multi-stage, from the official Rust image
#   scripts/images                          the local image (target `local`): the same runtime
#                                           stage, on a debootstrap base, with a binary built
#                                           on the host copied in (no registry needed)
#
# The stages are ordered so that the classic builder, which builds every stage up to --target,
# never needs the Rust image for `--target local`.

ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1.88-bookworm

# The runtime both images share: the libraries keel links (`ldd`: OpenSSL and zlib, for
# librdkafka), the CA roots for TLS, the event catalog, and the user.
FROM ${RUNTIME_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 keel \
 && useradd --system --uid 10001 --gid keel --home-dir /var/lib/keel --create-home \
      --shell /usr/sbin/nologin keel
COPY schemas/ /usr/share/keel/schemas/
# In a container keel listens on every interface; the API on 8080, `keel relay`'s health and
# metrics on 9464, `keel project`'s on 9465. Logs are JSON lines for the collector.
ENV KEEL_LISTEN=0.0.0.0:8080 \
    KEEL_RELAY__LISTEN=0.0.0.0:9464 \
    KEEL_PROJECTIONS__LISTEN=0.0.0.0:9465 \
    KEEL_SCHEMAS_DIR=/usr/share/keel/schemas \
    KEEL_LOG_FORMAT=json
WORKDIR /var/lib/keel
EXPOSE 8080 9464 9465
# `keel serve`'s readiness; the relay and projection roles are checked on their own ports
# (docker-compose.yml and deploy/k8s set that per role).
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
  CMD ["keel", "health", "--ready", "--url", "http://127.0.0.1:8080"]
ENTRYPOINT ["keel"]
CMD ["serve"]

# The local image: a binary built on the host (scripts/images strips and stages it in bin/).
FROM runtime AS local
COPY bin/keel /usr/local/bin/keel
USER 10001:10001

# The build for users.
FROM ${RUST_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin keel \
 && install -m 755 target/release/keel /usr/local/bin/keel

FROM runtime AS release
COPY --from=build /usr/local/bin/keel /usr/local/bin/keel
USER 10001:10001
