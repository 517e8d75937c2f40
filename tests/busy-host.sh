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
sleep 1
kill -0 "$busy" 2>/dev/null || { echo "busy-host.sh: tcpstate-churn did not start" >&2; exit 1; }
echo "busy host: churn (2 threads) and 2 CPU hogs in netns $ns"

if (($#)); then
    cargo test "$@"
else
    cargo test --no-fail-fast --test events --test events_mode --test ages
fi
