#!/usr/bin/env bash
# Every test of the project, on a fresh Debian machine with only the Rust toolchain, gcc
# and Python: installs what the tests need, then runs them. Needs root (network
# namespaces, /proc of other processes, installing packages). This is the test command
# README.md gives; .ci/run calls it.
#
#   tests/run-all.sh            everything
#   TCPSTATE_SKIP_CONTAINER=1   everything but the podman image build and run
#
# The shipped artifacts come from one release build (deploy/release.sh binary), which the
# steps after it reuse.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

[ "$(id -u)" = 0 ] || { echo "run-all.sh: needs root (namespaces, packages)" >&2; exit 1; }

# iproute2: ip netns and ss for the scenarios; clang and libbpf's headers: the eBPF program
# of the default events feature (build.rs); chromium and curl: the live page's test. The monitoring and deployment checks install
# their own tools (prometheus, jsonnet, podman, ...).
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ss >/dev/null || need+=(iproute2)
command -v clang >/dev/null || need+=(clang)
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
# Headless Chromium and curl: tests/page.rs loads the live page in a real browser.
command -v chromium >/dev/null || need+=(chromium)
command -v curl >/dev/null || need+=(curl)
# iptables: tests/pods.rs holds handshakes half-open by dropping SYN-ACKs in a namespace.
command -v iptables >/dev/null || need+=(iptables)
# The openssl CLI: tests/security/v1.rs makes X.509 v1 client certificates with it.
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
        { echo "run-all.sh: apt-get install ${need[*]} failed" >&2; exit 1; }
fi

steps_passed=0
steps_failed=0
failures=()
# record NAME STATUS STARTED [NOTE]: count a step and print its result line.
record() {
    if [ "$2" = 0 ]; then
        steps_passed=$((steps_passed + 1))
        echo "=== $1: ok ($((SECONDS - $3)) s${4:-})"
    else
        steps_failed=$((steps_failed + 1))
        failures+=("$1")
        echo "=== $1: FAILED ($((SECONDS - $3)) s${4:-})"
    fi
}
step() {
    local name=$1 started=$SECONDS
    shift
    echo
    echo "=== $name"
    "$@"
    record "$name" $? "$started"
}

# A build beside the steps that follow it: `background NAME COMMAND...` starts it at nice
# 19, so that they (the tests among them) have the CPUs whenever they want them and the
# build takes what they leave idle; `joined NAME` waits for it, then prints its output and
# result like a step's, its time counted from its start. For builds only, which assert
# nothing and whose pace nothing depends on.
declare -A bg_pid bg_log bg_started
# The temporary logs (mktemp) of the builds and of cargo test: each is removed once
# printed, and whatever is left when the script ends (interrupted, say) by the EXIT trap.
temp_files=()
background() {
    local name=$1
    shift
    bg_log[$name]=$(mktemp)
    temp_files+=("${bg_log[$name]}")
    bg_started[$name]=$SECONDS
    echo
    echo "=== $name: started in the background (nice 19)"
    # Its own session (setsid), so that all of it can be stopped as one process group. A
    # new session is also a new scheduler autogroup (CONFIG_SCHED_AUTOGROUP, on in
    # Debian's kernels), and a process' nice only weighs within its autogroup: the group's
    # own nice is set to 19 too, or the build would get as much CPU as all the tests.
    setsid bash -c 'echo 19 > /proc/self/autogroup 2>/dev/null; exec nice -n 19 "$@"' _ "$@" \
        > "${bg_log[$name]}" 2>&1 &
    bg_pid[$name]=$!
}
joined() {
    local name=$1 status waited=$SECONDS
    echo
    echo "=== $name (in the background since $((SECONDS - bg_started[$name])) s)"
    wait "${bg_pid[$name]}"
    status=$?
    cat "${bg_log[$name]}"
    rm -f "${bg_log[$name]}"
    unset "bg_pid[$name]"
    record "$name" "$status" "${bg_started[$name]}" ", $((SECONDS - waited)) s of it waited for"
}
# Interrupted: the background builds stop too, and no temporary log stays behind. (An
# EXIT trap leaves the script's exit status as it was.)
on_exit() {
    local pid
    for pid in "${bg_pid[@]}"; do kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null; done
    rm -f "${temp_files[@]}"
}
trap on_exit EXIT

# `cargo test --no-fail-fast`, every failing test named at the end (with its test
# binary), not only the first binary that failed.
failed_tests=()
cargo_test() {
    local log
    log=$(mktemp)
    temp_files+=("$log")
    cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    # "Running tests/ages.rs (target/...)" names the binary of the "test X ... FAILED"
    # lines after it.
    mapfile -t failed_tests < <(awk '
        /^ *Running / { binary = $2 }
        / \.\.\. FAILED$/ { sub(/^test /, ""); sub(/ \.\.\. FAILED$/, ""); print binary ": " $0 }
    ' "$log")
    rm -f "$log"
    if ((${#failed_tests[@]})); then
        echo
        echo "failing tests (${#failed_tests[@]}):"
        printf '    %s\n' "${failed_tests[@]}"
    fi
    return "$status"
}

# The real programs tests/programs.rs drives (nginx, socat, gunicorn, uvicorn, requests;
# promtool and jsonnet for its alert check): installed before `cargo test` runs it.
step "install the real programs" tests/programs/install.sh
step "format" cargo fmt --all -- --check
step "source structure" python3 tests/structure/check.py
step "clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
# The one release build the package, the image and the install test share, beside the
# tests and checks up to the package: they leave the CPUs idle much of the time (they wait
# on daemons, sockets, timers and Prometheus), and at nice 19 it takes only that time. Its
# own profile directory (target/release): no cargo lock is shared with the debug builds.
background "release build" deploy/release.sh binary
step "cargo test" cargo_test
# The events and ages tests again, beside another namespace's connection churn and two
# CPU hogs (and the niced release build, when it is not done yet): they must not notice
# (tens of seconds).
step "busy host" tests/busy-host.sh
# The exporter must still build and pass its tests where no BPF toolchain is present.
step "build without events" cargo build --no-default-features --quiet
step "monitoring" tests/monitoring/check.sh
step "deployment files" tests/deploy/check.sh
joined "release build"
step "debian package" tests/deploy/package.sh
if [ -z "${TCPSTATE_SKIP_CONTAINER:-}" ]; then
    step "container image" tests/deploy/container.sh
fi
step "install from a fresh clone" tests/deploy/install.sh

echo
if ((steps_failed)); then
    echo "failed steps: ${failures[*]}"
fi
if ((${#failed_tests[@]})); then
    echo "failing tests of cargo test:"
    printf '    %s\n' "${failed_tests[@]}"
fi
echo "steps: $steps_passed passed, $steps_failed failed"
((steps_failed == 0))
