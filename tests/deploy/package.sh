# Build the Debian package (deploy/release.sh deb) and prove it installs, runs and leaves
# cleanly in a clean Debian root (mmdebstrap bookworm: essential packages, systemd, procps):
#   - dpkg -i succeeds; every file is where the README says, with root ownership and the
#     right modes; the config is a conffile; the unit is enabled
#   - the unit runs as its own dynamic user with exactly the capabilities the README lists,
#     and the root's own `systemd-analyze verify` accepts it
#   - the installed binary keeps its symbol table (a backtrace names functions) and no
#     DWARF, runs `--version`, `check-config` on the installed config, `snapshot`, and, as
#     an unprivileged user with the installed config, serves /metrics
#   - dpkg -r leaves only the conffile; dpkg -P leaves the root as it was before the install
#
#   tests/deploy/package.sh
#
# The release binary is the one deploy/release.sh builds (shared with the image and the
# install test). The Debian root is made while the package is (it waits on the network) and
# cached as a tarball in $CACHE: a second run does not make it again. mmdebstrap, not
# debootstrap: measured here, 95 s against 176 s for the same root (apt's parallel
# downloads).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${TCPSTATE_TEST_CACHE:-/var/cache/tcpstate-test}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
t0=$(date +%s)
step() { echo "== [$(($(date +%s) - t0))s] $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "package.sh: must run as root" >&2; exit 1; }
. "$repo/tests/deploy/lib.sh"
install_missing mmdebstrap:mmdebstrap curl:curl unshare:util-linux dpkg-shlibdeps:dpkg-dev nm:binutils
mkdir -p "$CACHE"

work=$(mktemp -d)
daemon= bootstrap=
# unshare --fork ignores SIGTERM while it waits: stop its child (the exporter), then it.
stop_daemon() {
    pkill -TERM -P "$daemon" 2>/dev/null
    wait "$daemon" 2>/dev/null
    daemon=
}
cleanup() {
    [ -n "$daemon" ] && stop_daemon
    [ -n "$bootstrap" ] && kill "$bootstrap" 2>/dev/null && wait "$bootstrap" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# The clean root, made once and cached; in the background while the package is built.
tarball=$CACHE/debian-$SUITE-essential-systemd-procps.tar
partial=${tarball%.tar}.partial.tar   # mmdebstrap writes a tarball when the name ends in .tar
if [ ! -s "$tarball" ]; then
    step "mmdebstrap $SUITE essential + systemd, procps (in the background)"
    # What every Debian server that runs this unit has: systemd, and procps for /bin/kill
    # (the unit's ExecReload; the package depends on it).
    mmdebstrap --quiet --variant=essential --include=systemd,procps "$SUITE" "$partial" "$MIRROR" \
        > "$work/bootstrap.log" 2>&1 &
    bootstrap=$!
fi

step "deploy/release.sh deb"
"$repo/deploy/release.sh" deb
deb=$(ls -t "$repo"/target/debian/tcpstate-exporter_*.deb | head -1)
step "package: $(basename "$deb"), $(stat -c %s "$deb") bytes"

if [ -n "$bootstrap" ]; then
    wait "$bootstrap" || { tail -20 "$work/bootstrap.log" >&2; exit 1; }
    bootstrap=
    mv "$partial" "$tarball"
    step "root cached in $tarball"
fi
root=$work/root
mkdir -p "$root"
tar -C "$root" -xf "$tarball"

pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
check() { # check NAME COMMAND...: quiet on success, the output on failure
    local name=$1; shift
    if "$@" > "$work/out" 2>&1; then ok "$name"; else bad "$name"; sed 's/^/     /' "$work/out"; fi
}
# in_root COMMAND...: run inside the root, with its own /proc (private mount namespace:
# nothing is left mounted when it ends).
in_root() {
    unshare --mount --fork -- sh -c 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"' "$root" "$@"
}
# What the root holds, dpkg's own books and logs aside.
inventory() {
    (cd "$root" && find . -xdev \( -path ./var/lib/dpkg -o -path ./var/log -o -path ./proc \
        -o -path ./tmp -o -path ./run -o -path ./var/cache/debconf \) -prune -o -print | sort)
}
inventory > "$work/before"

cp "$deb" "$root/tmp/"
step "dpkg -i $(basename "$deb")"
check "dpkg -i installs it" in_root /usr/bin/dpkg -i "/tmp/$(basename "$deb")"

# Files, owners, modes.
unit=
for dir in usr/lib/systemd/system lib/systemd/system; do
    [ -f "$root/$dir/tcpstate-exporter.service" ] && unit=$dir/tcpstate-exporter.service
done
[ -n "$unit" ] && ok "unit installed as /$unit" || bad "no tcpstate-exporter.service in the root"
expect_file() { # expect_file PATH MODE
    local got
    got=$(stat -c '%a %U:%G' "$root/$1" 2>/dev/null || echo missing)
    [ "$got" = "$2 root:root" ] && ok "/$1 is $got" || bad "/$1 is $got, expected $2 root:root"
}
expect_file usr/bin/tcpstate-exporter 755
expect_file etc/tcpstate-exporter/tcpstate-exporter.toml 644
[ -n "$unit" ] && expect_file "$unit" 644
expect_file usr/share/tcpstate-exporter/dashboards/tcpstate-exporter.json 644
expect_file usr/share/tcpstate-exporter/dashboards/provisioning/dashboards/tcpstate-exporter.yml 644
expect_file usr/share/tcpstate-exporter/dashboards/provisioning/datasources/prometheus.yml 644
expect_file usr/share/tcpstate-exporter/prometheus/tcpstate-alerts.yml 644
expect_file usr/share/doc/tcpstate-exporter/README.md 644
expect_file usr/share/doc/tcpstate-exporter/runbook.md 644
expect_file usr/share/doc/tcpstate-exporter/copyright 644
expect_file usr/share/doc/tcpstate-exporter/examples/systemd/ebpf-events.conf 644
expect_file usr/share/doc/tcpstate-exporter/examples/systemd/namespaces-all.conf 644
check "shipped config and alert rules are the repository's" \
    cmp "$root/etc/tcpstate-exporter/tcpstate-exporter.toml" "$repo/config/tcpstate-exporter.toml"
check "shipped alert rules are the repository's" \
    cmp "$root/usr/share/tcpstate-exporter/prometheus/tcpstate-alerts.yml" "$repo/deploy/prometheus/tcpstate-alerts.yml"
conffiles=$(in_root /usr/bin/dpkg-query -W -f='${Conffiles}' tcpstate-exporter)
grep -q '^ /etc/tcpstate-exporter/tcpstate-exporter.toml ' <<<"$conffiles" \
    && ok "the config is a conffile" || bad "conffiles: '$conffiles'"
depends=$(dpkg-deb -f "$deb" Depends)
grep -q 'libc6' <<<"$depends" && ok "Depends: $depends" || bad "Depends: '$depends' (no libc6)"
[ -L "$root/etc/systemd/system/multi-user.target.wants/tcpstate-exporter.service" ] \
    && ok "the service is enabled (multi-user.target.wants)" || bad "the service is not enabled"

# The unit: its own user, exactly the README's capabilities, accepted by the root's systemd.
if [ -n "$unit" ]; then
    setting() { sed -n "s/^$1=//p" "$root/$unit"; }
    [ "$(setting DynamicUser)" = yes ] && [ "$(setting User)" = tcpstate-exporter ] \
        && ok "runs as its own dynamic user tcpstate-exporter" || bad "DynamicUser/User: $(setting DynamicUser)/$(setting User)"
    caps="CAP_DAC_READ_SEARCH CAP_SYS_PTRACE"
    [ "$(setting AmbientCapabilities)" = "$caps" ] && [ "$(setting CapabilityBoundingSet)" = "$caps" ] \
        && ok "capabilities: $caps" || bad "capabilities: $(setting AmbientCapabilities) / $(setting CapabilityBoundingSet)"
    for cap in $caps; do
        grep -q "^| .*\`$cap\`" "$repo/README.md" && ok "README's privileges table lists $cap" \
            || bad "README's privileges table does not list $cap"
    done
    grep -q '^ExecStart=/usr/bin/tcpstate-exporter ' "$root/$unit" \
        && ok "ExecStart is the packaged binary" || bad "ExecStart: $(setting ExecStart)"
    verify_quiet() { local out; out=$(in_root /usr/bin/systemd-analyze verify "/$unit" 2>&1); [ -z "$out" ] || { echo "$out"; return 1; }; }
    check "systemd-analyze verify (the root's systemd) accepts the unit" verify_quiet
fi

# The installed binary: symbols kept, DWARF dropped (Cargo.toml's release profile).
bin=$root/usr/bin/tcpstate-exporter
# (Output captured first: with pipefail, grep -q closing the pipe early fails the pipeline.)
symbols=$(nm --demangle "$bin" 2>&1 || true)
grep -q ' T tcpstate_exporter::sampling::sample_loop::SamplerThread::start$' <<<"$symbols" \
    && ok "the binary keeps its symbols (a backtrace names tcpstate_exporter::sampling::sample_loop::SamplerThread::start)" \
    || bad "no symbol tcpstate_exporter::sampling::sample_loop::SamplerThread::start in the installed binary"
sections=$(readelf -S "$bin" 2>&1 || true)
grep -q '\.symtab' <<<"$sections" && ! grep -q '\.debug_' <<<"$sections" \
    && ok "the binary has no DWARF ($(stat -c %s "$bin") bytes)" \
    || bad "the installed binary carries .debug_* sections (or no .symtab)"
version=$(in_root /usr/bin/tcpstate-exporter --version 2>&1 | head -1)
grep -q "^tcpstate-exporter, version $(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1) (revision: " <<<"$version" \
    && ok "--version: $version" || bad "--version: '$version'"
check "check-config accepts the installed config" \
    in_root /usr/bin/tcpstate-exporter check-config --config.file=/etc/tcpstate-exporter/tcpstate-exporter.toml
in_root /usr/bin/tcpstate-exporter snapshot > "$work/snapshot" 2>&1 && grep -q '^Sockets per state: ' "$work/snapshot" \
    && ok "snapshot runs" || { bad "snapshot"; sed 's/^/     /' "$work/snapshot"; }

port=$("${PYTHON:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# As the unit would run it: unprivileged, the installed config (the flag moves the port).
unshare --mount --fork -- sh -c 'mount -t proc proc "$0/proc" && exec chroot --userspec=65534:65534 "$0" "$@"' \
    "$root" /usr/bin/tcpstate-exporter --config.file=/etc/tcpstate-exporter/tcpstate-exporter.toml \
    --web.listen-address="127.0.0.1:$port" --sample.interval=1s > "$work/daemon.log" 2>&1 &
daemon=$!
body=
for _ in $(seq 60); do
    body=$(curl -fsS --max-time 2 "http://127.0.0.1:$port/metrics" 2>/dev/null || true)
    grep -q '^tcpstate_sockets{' <<<"$body" && break
    sleep 0.5
done
grep -q '^tcpstate_sockets{state="listen"}' <<<"$body" && grep -q '^tcpstate_build_info{' <<<"$body" \
    && ok "serves /metrics as nobody with the installed config" \
    || { bad "no tcpstate_sockets on /metrics"; sed 's/^/     /' "$work/daemon.log"; }
stop_daemon || true

# Removal. -r takes every shipped file but the conffile and keeps, as Debian's systemd
# helpers do, the unit's enablement state (masked meanwhile) so that a reinstall restores
# it; -P takes those too and leaves the root as it was.
step "dpkg -r, dpkg -P"
shipped=$(in_root /usr/bin/dpkg-query -L tcpstate-exporter)
check "dpkg -r removes it" in_root /usr/bin/dpkg -r tcpstate-exporter
still=$(while IFS= read -r path; do
    if [ -f "$root$path" ] && [ "$path" != /etc/tcpstate-exporter/tcpstate-exporter.toml ]; then
        echo "$path"
    fi
done <<<"$shipped")
[ -z "$still" ] && ok "after dpkg -r no shipped file is left but the conffile" \
    || bad "after dpkg -r still there: $still"
left=$(inventory | comm -13 "$work/before" - |
       grep -v -E '^\./etc/tcpstate-exporter(/tcpstate-exporter\.toml)?$|^\./etc/systemd/system/|^\./var/lib/systemd/deb-systemd-helper-' || true)
[ -z "$left" ] && ok "after dpkg -r only the conffile and the unit's enablement state are left" \
    || bad "after dpkg -r also left: $(tr '\n' ' ' <<<"$left")"
check "dpkg -P purges it" in_root /usr/bin/dpkg -P tcpstate-exporter
after=$(inventory | diff "$work/before" - || true)
[ -z "$after" ] && ok "after dpkg -P the root is as before the install" || bad "after dpkg -P: $after"

step "done"
echo "package: $pass passed, $fail failed ($(($(date +%s) - t0))s)"
[ "$fail" = 0 ]
