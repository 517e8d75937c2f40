# tcpstate-exporter image: build with the Rust toolchain, ship only the binary on Debian slim.
#
#   podman build -t tcpstate-exporter .      (or docker build)
#
# Privileges are the runtime's business, not the image's: as the image's non-root user the
# exporter counts every socket of its network namespace (sock_diag needs no capability);
# naming other users' processes needs CAP_DAC_READ_SEARCH + CAP_SYS_PTRACE, and
# namespaces = "all" adds CAP_SYS_ADMIN and the host's PID namespace. See
# deploy/kubernetes/daemonset.yaml for the why of each.

FROM docker.io/library/rust:1.95-slim-bookworm AS builder
# clang and libbpf's headers compile the eBPF program of the default `events` feature
# (build.rs, bpf/). Versions follow the base image's Debian suite.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang libbpf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Cargo loads every workspace member (tools/*) and target (benches/) to resolve the
# workspace; only the exporter is built.
COPY Cargo.toml Cargo.lock build.rs ./
COPY bpf ./bpf
COPY benches ./benches
COPY src ./src
COPY tools ./tools
# Registry and target caches survive between builds, so a source change rebuilds one crate.
# The binary is copied out of the cache mount in the same step: the mount is not in the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tcpstate-exporter \
    && install -D -m 0755 target/release/tcpstate-exporter /out/tcpstate-exporter

FROM docker.io/library/debian:bookworm-slim
COPY --from=builder /out/tcpstate-exporter /usr/local/bin/tcpstate-exporter
# nobody:nogroup. Kubernetes overrides this with uid 0 plus a few capabilities, because
# added capabilities do not reach a non-root process there (see the DaemonSet).
USER 65534:65534
EXPOSE 9815
ENTRYPOINT ["/usr/local/bin/tcpstate-exporter"]
