#!/bin/bash
# Build the image with podman on this machine and prove it works: at most 20 MB, one layer
# (the binary and the glibc files it links, on scratch), it serves /metrics with
# tcpstate_sockets, counts a CLOSE_WAIT made in its network namespace, runs as the image's
# non-root user without any capability, and accepts the Kubernetes ConfigMap.
#
#   tests/deploy/container.sh
#
# `deploy/release.sh image`, as the README says: the release build the suite shares (with
# the package and the install test), staged and built FROM scratch, so nothing is pulled
# and no base image is made. Machine details supplied here, never in the
# Dockerfile: runtime runc and ulimits root cannot raise.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
IMAGE=localhost/tcpstate-exporter:$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1)
MAX_IMAGE_BYTES=$((20 * 1000 * 1000))
LIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
RUN=(podman run --runtime runc "${LIMITS[@]}")
t0=$(date +%s)
step() { echo "== [$(($(date +%s) - t0))s] $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "container.sh: must run as root" >&2; exit 1; }
. "$repo/tests/deploy/lib.sh"
install_missing podman:podman buildah:buildah runc:runc curl:curl nsenter:util-linux

work=$(mktemp -d)
containers=() holders=()
cleanup() {
    for h in "${holders[@]}"; do kill "$h" 2>/dev/null || true; done
    for c in "${containers[@]}"; do podman rm -f --time 2 "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# The README's command; the image it replaces is removed, so runs do not pile up images.
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
step "deploy/release.sh image"
TCPSTATE_BUILD_FLAGS="--pull=never --runtime runc" "$repo/deploy/release.sh" image
current=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
step "image size: $size bytes"

pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }

[ "$size" -le "$MAX_IMAGE_BYTES" ] && ok "image is $size bytes (at most $MAX_IMAGE_BYTES)" \
    || bad "image is $size bytes, more than $MAX_IMAGE_BYTES"
# One layer: the staged root (binary and the glibc it links) on scratch.
layers=$(podman inspect --format '{{len .RootFS.Layers}}' "$IMAGE")
[ "$layers" = 1 ] && ok "one layer on scratch" || bad "the image has $layers layers"
if out=$("${RUN[@]}" --rm "$IMAGE" --version 2>&1) && grep -q '^tcpstate-exporter, version ' <<<"$out"; then
    ok "the image runs --version: $(head -1 <<<"$out")"
else
    bad "--version in the image: $out"
fi
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
# it), keeps the connection in CLOSE_WAIT, and is killed at exit. It prints its pid and
# its listener's port: the CLOSE_WAIT is the outbound group on that port. Not the
# namespace's total: curl closes first, so the exporter's end of a scrape can be in
# CLOSE_WAIT too when a sample is taken.
read -r holder lport < <(nsenter -t "$pid" -n "${PYTHON:-/usr/bin/python3}" -c '
import os, socket, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); a, _ = l.accept(); a.close()
child = os.fork()
if child == 0:
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2): os.dup2(null, fd)
    time.sleep(120); os._exit(0)
print(child, l.getsockname()[1])')
holders+=("$holder")
group="tcpstate_connections{direction=\"outbound\",port=\"$lport\",state=\"close_wait\"}"
for _ in $(seq 40); do
    cw=$(curl -fsS --max-time 2 "http://127.0.0.1:$port/metrics" 2>/dev/null |
         awk -v port="port=\"$lport\"" '/^tcpstate_connections\{/ && /direction="outbound"/ &&
             /state="close_wait"/ && index($0, port) { print $NF }' || true)
    [ "${cw:-0}" != 0 ] && break
    sleep 0.5
done
[ "${cw:-0}" = 1 ] && ok "root+caps: counts the CLOSE_WAIT in its namespace ($group $cw)" \
    || bad "root+caps: $group is '${cw:-absent}', expected 1"

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
