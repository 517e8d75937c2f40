#!/usr/bin/env bash
# The busy-host check: the events and ages tests while another network namespace churns
# connections (every one through CLOSE_WAIT, flat out on two threads) and two more
# threads spin on the CPUs. Every test asserts on its own namespace only, so none of
# this may change a result. Before the kernel filtered events by namespace and a thread
# of its own drained the ring, it did: events lost (218 to 310,567), an age 1.2 s off.
# Needs root; run-all.sh runs it after `cargo test`, so the test binaries are built.
#
#   tests/busy-host.sh [CARGO TEST ARGS...]     default: the events, events_mode and
#                                               ages tests
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

cargo build --quiet -p tcpstate-testkit --bin tcpstate-churn || exit 1
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') || exit 1
churn="$target_dir/debug/tcpstate-churn"

ns="tcpstate-busy-$$"
ip netns add "$ns" && ip -n "$ns" link set lo up || exit 1
ip netns exec "$ns" "$churn" --threads 2 --hogs 2 &
busy=$!
cleanup() {
    kill "$busy" 2>/dev/null
    wait "$busy" 2>/dev/null
    ip netns del "$ns"
}
trap cleanup EXIT
# Connections the churn namespace has opened so far (Tcp ActiveOpens of its /proc/net/snmp).
active_opens() {
    ip netns exec "$ns" awk '$1 == "Tcp:" && $6 ~ /^[0-9]+$/ { print $6 }' /proc/net/snmp
}
sleep 1
kill -0 "$busy" 2>/dev/null || { echo "busy-host.sh: tcpstate-churn did not start" >&2; exit 1; }
opened_before=$(active_opens)
echo "busy host: churn (2 threads) and 2 CPU hogs in netns $ns"

if (($#)); then
    cargo test "$@"
else
    cargo test --no-fail-fast --test events --test events_mode --test ages
fi
status=$?
# The tests prove nothing about a busy host unless the churn ran beside them throughout.
opened=$(($(active_opens) - opened_before))
if ! kill -0 "$busy" 2>/dev/null; then
    echo "busy-host.sh: tcpstate-churn died during the tests" >&2
    exit 1
fi
if ((opened < 1000)); then
    echo "busy-host.sh: the churn opened only $opened connections during the tests" >&2
    exit 1
fi
echo "busy host: the churn opened $opened connections during the tests"
exit "$status"
