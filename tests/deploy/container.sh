#!/bin/bash
# Build the Dockerfile with podman on this machine and prove the image works: it serves
# /metrics with tcpstate_sockets, counts a CLOSE_WAIT made in its network namespace, runs as
# the image's non-root user without any capability, and accepts the Kubernetes ConfigMap.
#
#   tests/deploy/container.sh
#
# Base images cannot be pulled here, so this script makes them under the names the
# Dockerfile uses (and only this script knows about this machine):
#   debian:bookworm-slim     a debootstrap minbase rootfs
#   rust:1.95-slim-bookworm  the same plus gcc, and the host's Rust toolchain
# The debootstrap tarballs are cached in $CACHE (second run: no debootstrap); the images
# and podman's build cache persist (second run: no image import, cargo rebuilds nothing).
# Machine details supplied here, never in the Dockerfile: runtime runc, ulimits root cannot
# raise, the host's CA certificates (TLS inside the build goes through an intercepting CA)
# and host networking for the build.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${TCPSTATE_TEST_CACHE:-/var/cache/tcpstate-test}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
FINAL_IMAGE=docker.io/library/debian:bookworm-slim
BUILDER_IMAGE=docker.io/library/rust:1.95-slim-bookworm
IMAGE=localhost/tcpstate-exporter:test
LIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
RUN=(podman run --runtime runc "${LIMITS[@]}")
t0=$(date +%s)
step() { echo "== [$(($(date +%s) - t0))s] $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "container.sh: must run as root" >&2; exit 1; }
for pair in podman:podman buildah:buildah runc:runc debootstrap:debootstrap curl:curl; do
    command -v "${pair%%:*}" >/dev/null || need="${need:-} ${pair#*:}"
done
if [ -n "${need:-}" ]; then
    step "installing$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
mkdir -p "$CACHE"

work=$(mktemp -d)
containers=() holders=()
cleanup() {
    for h in "${holders[@]}"; do kill "$h" 2>/dev/null || true; done
    for c in "${containers[@]}"; do podman rm -f --time 2 "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# debootstrap SUITE into a cached tarball: rootfs_tarball NAME EXTRA_PACKAGES
rootfs_tarball() {
    local name=$1 include=$2 tarball=$CACHE/$1.tar
    if [ ! -s "$tarball" ]; then
        step "debootstrap $name ${include:+(+$include)}"
        local dir=$work/$name
        debootstrap --variant=minbase ${include:+--include="$include"} "$SUITE" "$dir" "$MIRROR" \
            > "$work/$name.log" 2>&1 || { tail -20 "$work/$name.log" >&2; exit 1; }
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
            "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/locale/*
        tar -C "$dir" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$dir"
    fi
    echo "$tarball"
}

# The final stage's base.
final_tar=$(rootfs_tarball debian-$SUITE-slim "")
if ! podman image exists "$FINAL_IMAGE"; then
    step "importing $FINAL_IMAGE"
    podman import --change 'CMD ["bash"]' "$final_tar" "$FINAL_IMAGE" >/dev/null
fi

# The builder: Debian + gcc + the host's toolchain, laid out like the official rust image
# (CARGO_HOME=/usr/local/cargo, toolchain under RUSTUP_HOME=/usr/local/rustup). Rebuilt when
# the host's rustc changes.
sysroot=$(rustc --print sysroot)
rustc_version=$(rustc -V)
if [ "$(podman image inspect --format '{{index .Config.Labels "host-rustc"}}' "$BUILDER_IMAGE" 2>/dev/null)" != "$rustc_version" ]; then
    build_tar=$(rootfs_tarball debian-$SUITE-rustbuild gcc,libc6-dev,ca-certificates)
    step "importing $BUILDER_IMAGE from $sysroot ($rustc_version)"
    root=$work/builder-root
    mkdir -p "$root"
    tar -C "$root" -xf "$build_tar"
    tc=$root/usr/local/rustup/toolchains/$(basename "$sysroot")
    mkdir -p "$tc/bin" "$root/usr/local/cargo/bin"
    cp -a "$sysroot/lib" "$tc/"
    for tool in cargo rustc rustdoc; do
        cp -a "$sysroot/bin/$tool" "$tc/bin/"
        ln -s "../../rustup/toolchains/$(basename "$sysroot")/bin/$tool" "$root/usr/local/cargo/bin/$tool"
    done
    tar -C "$root" -c . | podman import \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change "LABEL host-rustc=\"$rustc_version\"" \
        - "$BUILDER_IMAGE" >/dev/null
    rm -rf "$root"
fi

# CA bundle for TLS inside the build: the builder's own plus the host's local CAs.
ca_bundle=$work/ca-certificates.crt
cat /etc/ssl/certs/ca-certificates.crt > "$ca_bundle"
for crt in /usr/local/share/ca-certificates/*.crt; do [ -r "$crt" ] && cat "$crt" >> "$ca_bundle"; done

step "podman build $IMAGE"
podman build --pull=never --runtime runc "${LIMITS[@]}" --network host \
    --volume "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro" \
    --tag "$IMAGE" --file "$repo/Dockerfile" "$repo"
step "image size: $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"

pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }

# Only the exporter binary was added on top of the final base.
layers=$(podman history --format '{{.CreatedBy}}' "$IMAGE" | grep -c 'COPY' || true)
[ "$layers" = 1 ] && ok "final image adds one COPY (the binary)" || bad "final image has $layers COPY layers"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[ "$user" = 65534:65534 ] && ok "image user is $user" || bad "image user is '$user'"

free_port() { "${PYTHON:-/usr/bin/python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# run_exporter NAME PODMAN_ARGS... : start the image, publish 9815 on a free loopback port,
# print the port. It runs in $(...), so the caller records NAME for cleanup.
run_exporter() {
    local name=$1; shift
    local port; port=$(free_port)
    "${RUN[@]}" -d --name "$name" --read-only --publish "127.0.0.1:$port:9815" "$@" \
        "$IMAGE" --sample.interval=1s >/dev/null
    echo "$port"
}

# scrape PORT: the /metrics body once the exporter answers with a sample (up to 30 s).
scrape() {
    local body
    for _ in $(seq 60); do
        body=$(curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null || true)
        if grep -q '^tcpstate_sockets{' <<<"$body"; then printf '%s\n' "$body"; return 0; fi
        sleep 0.5
    done
    printf '%s\n' "$body"
    return 1
}

# 1. As root with the attribution capabilities, read-only, no privilege escalation; a
#    CLOSE_WAIT made in the container's network namespace must be counted.
name=tcpstate-test-root-$$
containers+=("$name")
port=$(run_exporter "$name" --user 0 --cap-drop ALL --cap-add DAC_READ_SEARCH,SYS_PTRACE \
    --security-opt no-new-privileges)
if body=$(scrape "$port"); then
    ok "root+caps: /metrics serves tcpstate_sockets"
else
    bad "root+caps: no tcpstate_sockets in /metrics (waiting for the exporter's /metrics?)"
    podman logs "$name" 2>&1 | tail -20
fi
pid=$(podman inspect --format '{{.State.Pid}}' "$name")
# The holder forks into the background (stdio detached, so this script does not wait on
# it), keeps the connection in CLOSE_WAIT, and is killed at exit.
holder=$(nsenter -t "$pid" -n "${PYTHON:-/usr/bin/python3}" -c '
import os, socket, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); a, _ = l.accept(); a.close()
child = os.fork()
if child == 0:
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2): os.dup2(null, fd)
    time.sleep(120); os._exit(0)
print(child)')
holders+=("$holder")
for _ in $(seq 40); do
    cw=$(curl -fsS --max-time 2 "http://127.0.0.1:$port/metrics" 2>/dev/null |
         sed -n 's/^tcpstate_sockets{state="close_wait"} \([0-9.e+]*\)$/\1/p' || true)
    [ "${cw:-0}" != 0 ] && break
    sleep 0.5
done
[ "${cw:-0}" = 1 ] && ok "root+caps: counts the CLOSE_WAIT in its namespace (close_wait=$cw)" \
    || bad "root+caps: tcpstate_sockets{state=\"close_wait\"} is '${cw:-absent}', expected 1"

# 2. As the image's own user with no capability at all: sock_diag still works.
name=tcpstate-test-nobody-$$
containers+=("$name")
port=$(run_exporter "$name" --cap-drop ALL --security-opt no-new-privileges)
if scrape "$port" >/dev/null; then
    ok "nobody, no caps: /metrics serves tcpstate_sockets"
else
    bad "nobody, no caps: no tcpstate_sockets in /metrics"
    podman logs "$name" 2>&1 | tail -20
fi
[ "$(podman top "$name" capeff | tail -1 | tr -d ' ')" = none ] \
    && ok "nobody, no caps: effective capabilities are none" \
    || bad "nobody, no caps: effective capabilities $(podman top "$name" capeff | tail -1)"

# 3. The Kubernetes ConfigMap's config is accepted by the binary in the image.
sed -n '/tcpstate-exporter.toml: |/,$p' "$repo/deploy/kubernetes/configmap.yaml" | tail -n +2 |
    sed 's/^    //' > "$work/configmap.toml"
chmod 644 "$work/configmap.toml"
if out=$("${RUN[@]}" --rm --read-only --volume "$work/configmap.toml:/etc/tcpstate-exporter/tcpstate-exporter.toml:ro" \
        "$IMAGE" check-config --config.file=/etc/tcpstate-exporter/tcpstate-exporter.toml 2>&1); then
    ok "check-config accepts the ConfigMap's tcpstate-exporter.toml"
else
    bad "check-config rejects the ConfigMap's tcpstate-exporter.toml: $out"
fi

step "done"
echo "container: $pass passed, $fail failed ($(($(date +%s) - t0))s)"
[ "$fail" = 0 ]
