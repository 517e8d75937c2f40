#!/usr/bin/env bash
# Checks everything the monitoring ships: the generated files are fresh, the alert rules
# load and pass their promtool tests (which must catch broken rules), the rules follow the
# mixin conventions and link the runbook, the dashboard and its provisioning are well
# formed, and a real Prometheus runs the rules and every dashboard query.
# Installs what it needs (Debian: prometheus, jsonnet, python3-yaml) when missing.
# Prints "ok:"/"FAIL:" per check and ends with "N passed, M failed"; exits 1 on any failure.
set -u
cd "$(dirname "$0")/../.." || exit 1

passed=0
failed=0
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        passed=$((passed + 1))
        echo "ok: $name"
    else
        failed=$((failed + 1))
        echo "FAIL: $name"
        printf '%s\n' "$out" | sed 's/^/    /'
    fi
}

# Debian's prometheus package starts its service where no policy-rc.d forbids it. Stop the
# instance the install started (the package's own user runs it; our test instances run as
# the caller), so nothing is left listening on :9090.
install_tools() {
    local packages=() before pid
    command -v promtool >/dev/null || packages+=(prometheus)
    command -v jsonnet >/dev/null || packages+=(jsonnet)
    python3 -c 'import yaml' 2>/dev/null || packages+=(python3-yaml)
    ((${#packages[@]})) || return 0
    before=$(pgrep -u prometheus -x prometheus 2>/dev/null || true)
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends "${packages[@]}" >/dev/null || return 1
    if [ -d /run/systemd/system ] && [ -z "$before" ]; then
        systemctl stop prometheus 2>/dev/null || true
    fi
    for pid in $(pgrep -u prometheus -x prometheus 2>/dev/null); do
        grep -qx "$pid" <<<"$before" || kill "$pid"
    done
    return 0
}

RULES=deploy/prometheus/tcpstate-alerts.yml
TESTS=deploy/prometheus/tcpstate-alerts_test.yml
DASHBOARD=dashboards/tcpstate-exporter.json
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

check "tools installed (promtool, jsonnet, python3-yaml)" install_tools
check "generated files are fresh (deploy/prometheus/mixin/build.py --check)" \
    python3 deploy/prometheus/mixin/build.py --check
check "promtool check rules" promtool check rules "$RULES"
check "promtool test rules" promtool test rules "$TESTS"
check "rules follow mixin conventions, link the runbook, are tested firing and quiet" \
    python3 tests/monitoring/rules_lint.py "$RULES" "$TESTS" docs/runbook.md
# The mutants are ~30 s of promtool runs one after another (28 s here, idle): they run
# beside the checks below, the live Prometheus' waits among them, and report at the end.
python3 tests/monitoring/rules_mutants.py "$RULES" "$TESTS" > "$TMP/mutants.out" 2>&1 &
mutants=$!
check "dashboard and provisioning are well formed" \
    python3 tests/monitoring/dashboard_lint.py "$DASHBOARD" dashboards/provisioning

override_is_a_copy() {
    local shipped
    shipped=$(sha256sum "$RULES")
    python3 tests/monitoring/override_rules.py "$TMP/override/rules.yml" --for 1s \
        --set closeWaitStuck.ageSeconds=20 >/dev/null || return 1
    promtool check rules "$TMP/override/rules.yml" || return 1
    [ "$(grep -cE '^ +for: 1s$' "$TMP/override/rules.yml")" = "$(grep -cE '^ +for: ' "$RULES")" ] || {
        echo "not every for: was overridden"; return 1; }
    grep -q 'tcpstate_close_wait_oldest_seconds > 20$' "$TMP/override/rules.yml" || {
        echo "threshold override missing"; return 1; }
    [ "$(sha256sum "$RULES")" = "$shipped" ] || { echo "the shipped rules changed"; return 1; }
    # Without overrides the renderer gives exactly the shipped file (same source).
    python3 tests/monitoring/override_rules.py "$TMP/same/rules.yml" >/dev/null &&
        diff <(grep -v '^#' "$RULES") <(grep -v '^#' "$TMP/same/rules.yml")
}
check "test override renders short for: windows into a copy" override_is_a_copy

fixture_is_clean() {
    sed "s/@NOW@/$(date +%s)/" tests/monitoring/fixtures/exposition.prom | promtool check metrics
}
check "contract fixture passes promtool check metrics" fixture_is_clean

# The fixture is one static scrape: nothing grows and nothing closes, so the fleet's growth
# and late-close rankings have nothing to rank (the end-to-end test fills them); the events
# mode's metric is absent from it too.
ALLOW_EMPTY="--allow-empty tcpstate_close_wait_entered_total \
--allow-empty tcpstate_fleet:close_wait_growth:topk \
--allow-empty tcpstate_fleet:close_wait_closed_seconds:topk"

# A dashboard with one rejected and one empty query: dashboard_queries.py must name both.
python3 - "$DASHBOARD" "$TMP/bad-dashboard.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
panels = [p for p in d["panels"] if p["type"] != "row"]
panels[0]["title"], panels[0]["targets"][0]["expr"] = "bad syntax", "sum(tcpstate_sockets"
panels[1]["title"], panels[1]["targets"][0]["expr"] = "no data", "tcpstate_no_such_metric"
json.dump(d, open(sys.argv[2], "w"))
PY
negative='out=$(python3 tests/monitoring/dashboard_queries.py "$PROM_URL" --dashboard '"$TMP"'/bad-dashboard.json '"$ALLOW_EMPTY"'); rc=$?;
  [ $rc = 1 ] && grep -q "^FAIL: panel .bad syntax. A: rejected" <<<"$out" && grep -q "^FAIL: panel .no data. A: no data" <<<"$out" && grep -q "2 failed" <<<"$out" || { echo "dashboard_queries.py missed a bad query: rc=$rc"; echo "$out"; exit 1; }'
check "real Prometheus: rules load, dashboard queries return data, alerts fire, bad queries are caught" \
    python3 tests/monitoring/live_prometheus.py $ALLOW_EMPTY \
        --expect-firing TcpStateCloseWaitStuck --expect-firing TcpStateAcceptQueueNearLimit \
        --expect-firing TcpStateCloseWaitEofIgnored --expect-firing TcpStateListenOverflows \
        --expect-firing TcpStateCloseWaitAcceptBacklog \
        --expect-firing TcpStateGroupsFolded --then "$negative"

wait "$mutants"
mutants_status=$?
mutants_result() { cat "$TMP/mutants.out"; return "$mutants_status"; }
check "promtool tests catch every alert made silent or noisy" mutants_result

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
