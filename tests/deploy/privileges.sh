#!/bin/bash
# Prove, on this kernel, the privilege facts the deployment files rely on, and that the
# systemd unit and the DaemonSet grant exactly those capabilities.
#
# A root-owned process in a private network namespace holds a listener and a CLOSE_WAIT
# socket on fd 3/4; probes run as uid 65534 under setpriv with a chosen ambient capability
# set and try what the exporter does:
#   dump    sock_diag TCP dump with tcp_info (ss -tni: the tcp_info fields only come from
#           netlink, so a fallback to /proc/net/tcp cannot pass)
#   listfd  list /proc/PID/fd           readlink  resolve /proc/PID/fd/3
#   openns  open /proc/PID/ns/net       setns     setns(CLONE_NEWNET) into it
# Needs root and unshare; fails (never skips) without them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
[ "$(id -u)" = 0 ] || { echo "privileges.sh: must run as root" >&2; exit 1; }
for tool in setpriv unshare nsenter ss ip; do
    command -v "$tool" >/dev/null || { echo "privileges.sh: $tool missing" >&2; exit 1; }
done

work=$(mktemp -d)
chmod 755 "$work"   # the probes run as uid 65534
holder=
cleanup() { [ -n "$holder" ] && kill "$holder" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/probe.py" <<'PY'
import ctypes, errno, os, sys
pid, what = int(sys.argv[1]), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
try:
    if what == "listfd":
        os.listdir(f"/proc/{pid}/fd")
    elif what == "readlink":
        if not os.readlink(f"/proc/{pid}/fd/3").startswith("socket:["):
            raise SystemExit("not a socket")
    elif what == "openns":
        os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    elif what == "setns":
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
PY

# The holder: root, private netns, listener on fd 3, a connection left in CLOSE_WAIT.
unshare -n "$py" -c '
import os, socket, subprocess, sys, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
l = socket.socket(); os.dup2(l.fileno(), 3); l.bind(("127.0.0.1", 5555)); l.listen()
c = socket.create_connection(("127.0.0.1", 5555)); a, _ = l.accept(); a.close()
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(300)' "$work/pid" &
for _ in $(seq 50); do [ -s "$work/pid" ] && break; sleep 0.1; done
holder=$(cat "$work/pid")

pass=0 fail=0
expect() { # expect CAPS WHAT RESULT
    local caps=$1 what=$2 want=$3 got set=-all
    [ "$caps" = none ] || set=+${caps//,/,+}
    if [ "$what" = dump ]; then
        got=$(nsenter -t "$holder" -n setpriv --reuid=65534 --regid=65534 --clear-groups \
              --inh-caps="$set" --ambient-caps="$set" --bounding-set="$set" ss -tni state close-wait 2>&1 |
              grep -q 'rtt:' && echo ok || echo missing)
    else
        got=$(setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps="$set" \
              --ambient-caps="$set" "$py" "$work/probe.py" "$holder" "$what" 2>&1 || true)
    fi
    if [ "$got" = "$want" ]; then
        pass=$((pass + 1)); printf 'ok   %-28s %-9s %s\n' "$caps" "$what" "$got"
    else
        fail=$((fail + 1)); printf 'FAIL %-28s %-9s got %s, expected %s\n' "$caps" "$what" "$got" "$want"
    fi
}

expect none                       dump     ok        # no CAP_NET_ADMIN needed, tcp_info included
expect none                       listfd   EACCES
expect sys_ptrace                 listfd   EACCES    # the fd dir is mode 0500: DAC, not ptrace
expect dac_read_search            listfd   ok
expect dac_read_search            readlink EACCES    # the link itself is a ptrace check
expect sys_ptrace                 readlink EACCES
expect dac_read_search,sys_ptrace readlink ok
expect none                       openns   EACCES
expect sys_ptrace                 openns   ok
expect sys_ptrace                 setns    EPERM     # setns needs CAP_SYS_ADMIN
expect sys_ptrace,sys_admin       setns    ok

# The deploy files grant exactly what the matrix above shows is needed.
grant() { # grant NAME GOT WANT
    if [ "$2" = "$3" ]; then pass=$((pass + 1)); echo "ok   $1: $2"
    else fail=$((fail + 1)); echo "FAIL $1: grants '$2', expected '$3'"; fi
}
caps_of() { sed -n "s/^$1=//p" "$2" | tr ' ' '\n' | sort | xargs; }
unit=$repo/deploy/systemd
grant "systemd unit ambient caps" "$(caps_of AmbientCapabilities "$unit/tcpstate-exporter.service")" \
    "CAP_DAC_READ_SEARCH CAP_SYS_PTRACE"
grant "systemd unit bounding set" "$(caps_of CapabilityBoundingSet "$unit/tcpstate-exporter.service")" \
    "CAP_DAC_READ_SEARCH CAP_SYS_PTRACE"
grant "namespaces-all drop-in" "$(caps_of AmbientCapabilities "$unit/examples/namespaces-all.conf")" \
    "CAP_SYS_ADMIN"
# BPF + PERFMON for the events mode: tests/events.rs proves those two suffice to attach.
grant "DaemonSet capabilities" \
    "$(sed -n 's/^ *add: \[\(.*\)\]/\1/p' "$repo/deploy/kubernetes/daemonset.yaml" | tr -d ' ' | tr ',' '\n' | sort | xargs)" \
    "BPF DAC_READ_SEARCH PERFMON SYS_ADMIN SYS_PTRACE"
grant "DaemonSet drops" "$(sed -n 's/^ *drop: \[\(.*\)\]/\1/p' "$repo/deploy/kubernetes/daemonset.yaml")" "ALL"

echo "privileges: $pass passed, $fail failed"
[ "$fail" = 0 ]
