# syntax=docker/dockerfile:1
# bouncer's container image: docker build -t bouncer:0.1.0 .
#
# The build stage compiles bouncer with librdkafka built from source
# (rdkafka's cmake-build feature), linking OpenSSL, libcurl and zlib
# dynamically; the runtime stage holds only those libraries, CA
# certificates and the binary. Both stages are Debian 12 (bookworm), so the
# libraries the binary was linked against are the ones it runs with.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake pkg-config libssl-dev zlib1g-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Cargo.toml names the benches, so they must be present for the manifest to load.
COPY Cargo.toml Cargo.lock ./
# .cargo/config.toml builds jemalloc's defaults into the binary (two arenas,
# one background thread that returns freed memory): jemalloc would otherwise
# size its arenas by the node's CPUs, not the container's limit.
COPY .cargo .cargo
COPY src src
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/bouncer /out/bouncer

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libssl3 libcurl4 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/bouncer /usr/local/bin/bouncer
# The repository's example rules, for a smoke test that needs no Kafka:
#   docker run --rm IMAGE demo --rules /usr/share/bouncer/examples/rules
# Deliberately not under a default path: deployments set rules_dir to their
# own rules (the Helm chart does). Nothing sets BOUNCER_* variables here,
# since they would override the mounted configuration file.
COPY rules /usr/share/bouncer/examples/rules
# A numeric non-root user, as Kubernetes' runAsNonRoot can verify it; no
# shell is needed at run time (exec-form ENTRYPOINT).
USER 65532:65532
EXPOSE 9464
# `run` expects the configuration mounted at /etc/bouncer/bouncer.toml, or
# other arguments: docker run IMAGE run --config /path, check DIR, eval ….
ENTRYPOINT ["/usr/local/bin/bouncer"]
CMD ["run", "--config", "/etc/bouncer/bouncer.toml"]
