#!/bin/bash
# Two exporter builds side by side on the same held pods: each one's CPU per round over
# the same window, so that the machine's load (which moves a single run's ratio to the
# floor by +/-10 % here) weighs on both alike. Runs inside tcpstate-bench's --pods-hold:
#
#   sudo target/release/tcpstate-bench --pods-layouts shared --pods-hold 100 -- \
#       tools/bench/pods-ab.sh OLD_EXPORTER NEW_EXPORTER [TRIALS] [SECONDS]
#
# Both daemons follow every pod (namespaces = "all", events on, sampling every second)
# from the host namespace; each trial starts them together, waits for 6 samples of each,
# then reads their CPU time (/proc/PID/stat) and sample counts over SECONDS (default 30).
# Prints one line per trial and NEW's CPU per round as a share of OLD's.
set -euo pipefail

old=${1:?usage: pods-ab.sh OLD_EXPORTER NEW_EXPORTER [TRIALS] [SECONDS]}
new=${2:?usage: pods-ab.sh OLD_EXPORTER NEW_EXPORTER [TRIALS] [SECONDS]}
trials=${3:-3}
seconds=${4:-30}
pods=${TCPSTATE_BENCH_PODS:?run under tcpstate-bench --pods-hold}

config=$(mktemp --suffix=.toml)
logs=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$config" "$logs"
}
trap cleanup EXIT
printf 'namespaces = "all"\nnamespaces_include = ["%s"]\nevents = "on"\n' "$pods" >"$config"

samples() { curl -sf "127.0.0.1:$1/metrics" | awk '/^tcpstate_samples_total / {print int($2)}'; }
# utime + stime, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
per_round_ms() { # ticks rounds
    awk -v t="$1" -v r="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t * 1000 / hz / r}'
}

total_old=0 total_new=0
for trial in $(seq 1 "$trials"); do
    "$old" --sample.interval 1s --config.file "$config" --web.listen-address 127.0.0.1:9901 \
        >"$logs/old.log" 2>&1 &
    old_pid=$!
    "$new" --sample.interval 1s --config.file "$config" --web.listen-address 127.0.0.1:9902 \
        >"$logs/new.log" 2>&1 &
    new_pid=$!
    pids=("$old_pid" "$new_pid")
    for _ in $(seq 1 300); do
        a=$(samples 9901 || echo 0) b=$(samples 9902 || echo 0)
        [ "${a:-0}" -ge 6 ] && [ "${b:-0}" -ge 6 ] && break
        sleep 1
    done
    [ "${a:-0}" -ge 6 ] && [ "${b:-0}" -ge 6 ] || {
        echo "the daemons took fewer than 6 samples in 300 s" >&2
        tail -3 "$logs/old.log" "$logs/new.log" >&2
        exit 1
    }
    old_t0=$(ticks "$old_pid") new_t0=$(ticks "$new_pid")
    old_n0=$(samples 9901) new_n0=$(samples 9902)
    sleep "$seconds"
    old_t1=$(ticks "$old_pid") new_t1=$(ticks "$new_pid")
    old_n1=$(samples 9901) new_n1=$(samples 9902)
    kill "$old_pid" "$new_pid"
    wait "$old_pid" "$new_pid" 2>/dev/null || true
    pids=()
    old_ms=$(per_round_ms $((old_t1 - old_t0)) $((old_n1 - old_n0)))
    new_ms=$(per_round_ms $((new_t1 - new_t0)) $((new_n1 - new_n0)))
    echo "trial $trial: old $old_ms ms/round ($((old_n1 - old_n0)) rounds), new $new_ms ms/round ($((new_n1 - new_n0)) rounds)"
    total_old=$(awk -v a="$total_old" -v b="$old_ms" 'BEGIN {print a + b}')
    total_new=$(awk -v a="$total_new" -v b="$new_ms" 'BEGIN {print a + b}')
done
awk -v o="$total_old" -v n="$total_new" 'BEGIN {printf "new/old: %.3f (CPU per round, summed over the trials)\n", n / o}'
