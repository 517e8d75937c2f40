#!/bin/bash
# Follow README.md's install-from-source steps verbatim in a fresh clone, as a new user
# would: the block after the marker `<!-- install: from source -->` is run line by line
# with bash in the clone, then the block after `<!-- install: run -->` (each command with
# a time limit: the daemon's block is run until it answers, then stopped). Checks that the
# binary lands on root's PATH, that `--version` names the clone's commit, that `snapshot`
# works and that the daemon serves /metrics on :9815 from the README's words alone.
#
#   tests/deploy/install.sh
#
# The clone is of the committed HEAD (uncommitted changes are not in it). It runs in a
# private mount namespace with an overlay on /usr/local, so what the README installs there
# disappears afterwards, and with CARGO_TARGET_DIR set to a copy of the release build
# deploy/release.sh made, so that only the exporter itself is compiled again (its path
# changed), not its 127 dependencies. A copy, not the checkout's own target/: cargo names
# a workspace member's artifacts by its path within the workspace, so the clone's build
# and the checkout's would replace each other's and each rebuild the exporter after the
# other.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
t0=$(date +%s)
step() { echo "== [$(($(date +%s) - t0))s] $*" >&2; }
[ "$(id -u)" = 0 ] || { echo "install.sh: must run as root" >&2; exit 1; }
. "$repo/tests/deploy/lib.sh"
install_missing curl:curl ip:iproute2 git:git

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }

# block MARKER: the fenced block that follows the marker line in README.md.
block() {
    awk -v marker="<!-- install: $1 -->" '
        $0 == marker { found = 1; next }
        found && /^```/ { if (inside) exit; inside = 1; next }
        inside { print }' "$work/clone/README.md"
}

step "git clone $repo"
git clone --quiet "$repo" "$work/clone"
head=$(git -C "$work/clone" rev-parse HEAD)
block "from source" > "$work/install.sh"
block "run" > "$work/run.sh"
[ -s "$work/install.sh" ] && ok "README has the install block: $(grep -v '^#' "$work/install.sh" | tr '\n' ';')" \
    || { bad "no '<!-- install: from source -->' block in README.md"; exit 1; }
[ -s "$work/run.sh" ] && ok "README has the run block" || { bad "no '<!-- install: run -->' block"; exit 1; }

# Inside: overlay /usr/local, then the README's commands in the clone.
cat > "$work/inside.sh" <<'EOF'
set -uo pipefail
work=$1
mkdir -p "$work/upper" "$work/ovl"
mount -t overlay overlay -o "lowerdir=/usr/local,upperdir=$work/upper,workdir=$work/ovl" /usr/local || exit 90
cd "$work/clone"
echo "--- install block"
bash -ex "$work/install.sh" || exit 91
echo "--- which: $(command -v tcpstate-exporter)"
tcpstate-exporter --version > "$work/version" 2>&1 || exit 92
echo "--- run block, in a private network namespace (its own :9815)"
exec unshare --net --fork bash "$work/runner.sh" "$work"
EOF
cat > "$work/runner.sh" <<'EOF'
set -uo pipefail
work=$1
ip link set lo up || exit 93
cd "$work/clone"
# Each line in turn; a line that does not end by itself (the daemon) is given until it
# serves /metrics, then stopped.
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    echo "+ $line"
    bash -c "$line" > "$work/line.out" 2>&1 &
    pid=$!
    for _ in $(seq 240); do
        kill -0 "$pid" 2>/dev/null || break
        body=$(curl -fsS --max-time 2 http://localhost:9815/metrics 2>/dev/null)
        if grep -q '^tcpstate_sockets{' <<<"$body"; then
            echo "served" > "$work/served"
            kill "$pid"
            break
        fi
        sleep 0.5
    done
    wait "$pid"; rc=$?
    cat "$work/line.out"
    case "$line" in *snapshot*) [ "$rc" = 0 ] && grep -q '^Sockets per state: ' "$work/line.out" && echo ok > "$work/snapshot" ;; esac
done < "$work/run.sh"
EOF
shared=${CARGO_TARGET_DIR:-$repo/target}
[ -d "$shared/release" ] || { bad "no release build in $shared (deploy/release.sh binary)"; exit 1; }
mkdir -p "$work/target"
cp -a "$shared/release" "$work/target/"
local_before=$(ls -A /usr/local/bin)
step "README steps in a private mount namespace"
set +e
CARGO_TARGET_DIR=$work/target unshare --mount --fork bash "$work/inside.sh" "$work" > "$work/log" 2>&1
rc=$?
set -e
case $rc in
    0) ok "the README's install and run blocks ran" ;;
    90) bad "cannot overlay /usr/local" ;;
    93) bad "cannot bring up loopback in a private network namespace" ;;
    91) bad "the README's install block failed" ;;
    92) bad "tcpstate-exporter is not on PATH after the install block" ;;
    *) bad "the steps failed ($rc)" ;;
esac
[ "$rc" = 0 ] || sed 's/^/     /' "$work/log" | tail -40

[ -x "$work/upper/bin/tcpstate-exporter" ] && ok "installed as /usr/local/bin/tcpstate-exporter" \
    || bad "nothing installed in /usr/local/bin"
grep -q "^tcpstate-exporter, version .* (revision: $head)" "$work/version" 2>/dev/null \
    && ok "--version names the clone's commit: $(head -1 "$work/version")" \
    || bad "--version: $(cat "$work/version" 2>/dev/null)"
[ -f "$work/snapshot" ] && ok "snapshot, as the README says" || bad "snapshot did not print a sample"
[ -f "$work/served" ] && ok "the daemon, as the README says, serves http://localhost:9815/metrics" \
    || bad "the README's daemon command did not serve /metrics"
[ "$(ls -A /usr/local/bin)" = "$local_before" ] && ok "this machine's /usr/local/bin is as it was" \
    || bad "/usr/local/bin changed outside the test"

step "done"
echo "install: $pass passed, $fail failed ($(($(date +%s) - t0))s)"
[ "$fail" = 0 ]
