#!/usr/bin/env python3
"""Real programs (Debian, PyPI) driven into CLOSE_WAIT, with `ss -tanpie` as ground truth,
compared with what the exporter says.

  scenarios.py list                          the scenarios and what each needs
  scenarios.py check [NAME ...]              prerequisites only; exit 1 naming what is missing
  scenarios.py run [--exporter BIN] [--out DIR] NAME ... | all

`run` builds each scenario in a private network namespace of its own (`ip netns add`),
runs this file inside it (`ip netns exec`), starts the program(s), drives clients until
the CLOSE_WAIT situation exists (waiting for conditions read from `ss`, never for a fixed
time), records the ground truth, runs the exporter there (`snapshot --format json`, once
and with `--watch`; the daemon for the attribution cases), then stops everything it
started and deletes the namespace. One JSON report per scenario goes to DIR
(/tmp/tcpstate-programs by default); a summary of truth against the exporter is printed.

Installs nothing: tests/programs/install.sh does (nginx, socat from Debian; gunicorn,
uvicorn, requests from PyPI). Needs root (namespaces) and iproute2.
"""

import argparse
import http.client
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from handmade import set_name

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_EXPORTER = REPO / "target" / "debug" / "tcpstate-exporter"
DEFAULT_OUT = Path("/tmp/tcpstate-programs")
WAIT = 30.0
EXPORTER_ADDRESS = ("127.0.0.1", 9815)


class ScenarioError(Exception):
    """The scenario could not be built as intended: a failure, never a pass."""


def wait_until(predicate, what, timeout=WAIT, every=0.05):
    """Polls `predicate` until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            table = ss_text()
            if len(table) > 4000:
                table = table[:4000] + f"\n... ({len(table.splitlines())} lines in all)"
            raise ScenarioError(f"timed out after {timeout:.0f}s waiting for {what}\n{table}")
        time.sleep(every)


# --- ground truth: `ss -tanpie` -------------------------------------------------------

USER = re.compile(r'\("((?:[^"\\]|\\.)*)",pid=(\d+),fd=(\d+)\)')


@dataclass
class Sock:
    state: str
    recv_q: int
    send_q: int
    local_port: int
    peer_port: int | None
    users: list  # [(comm, pid, fd)]
    inode: int
    lastack_ms: int | None

    def names(self):
        return sorted({u[0] for u in self.users})

    def pids(self):
        return sorted({u[1] for u in self.users})


def ss_text():
    out = subprocess.run(["ss", "-tanpieH"], capture_output=True, text=True, check=True)
    return out.stdout


def ss():
    """Every TCP socket of this namespace, as iproute2's own sock_diag client sees it."""
    lines = []
    for line in ss_text().splitlines():
        if line[:1].isspace():
            if lines:
                lines[-1] += " " + line.strip()
        elif line.strip():
            lines.append(line)
    return [parse_ss_line(line) for line in lines]


def parse_ss_line(line):
    fields = line.split()
    if len(fields) < 5:
        raise ScenarioError(f"unparsable ss line: {line!r}")
    local_port = int(fields[3].rsplit(":", 1)[1])
    peer = fields[4].rsplit(":", 1)[1]
    ino = re.search(r"\bino:(\d+)", line)
    lastack = re.search(r"\blastack:(\d+)", line)
    return Sock(
        state=fields[0],
        recv_q=int(fields[1]),
        send_q=int(fields[2]),
        local_port=local_port,
        peer_port=None if peer == "*" else int(peer),
        users=[(m[0], int(m[1]), int(m[2])) for m in USER.findall(line)],
        inode=int(ino[1]) if ino else 0,
        lastack_ms=int(lastack[1]) if lastack else None,
    )


def truth(socks=None):
    """CLOSE_WAIT per (direction, port), with who holds what, from one `ss` run.

    Inbound when the local port has a listener, or has none but is outside the ephemeral
    range while the peer's is inside (the exporter's documented rule), else outbound on
    the peer's port. A CLOSE_WAIT without a
    file (inode 0, no users) is still in an accept queue: it belongs to the listener, and
    with several listeners on the port (SO_REUSEPORT) to those whose queue is not empty.
    """
    socks = ss() if socks is None else socks
    listeners = {}
    for s in socks:
        if s.state == "LISTEN":
            listeners.setdefault(s.local_port, []).append(s)
    groups = {}
    for s in socks:
        if s.state != "CLOSE-WAIT":
            continue
        inbound = s.local_port in listeners or (
            not ephemeral(s.local_port) and ephemeral(s.peer_port)
        )
        key = f"{'inbound' if inbound else 'outbound'} {s.local_port if inbound else s.peer_port}"
        g = groups.setdefault(
            key,
            {
                "close_wait": 0,
                "unread_bytes": 0,
                "unread_connections": 0,
                "eof_read": 0,
                "unaccepted": 0,
                "oldest_seconds": 0.0,
                "held_by": {},
                "queued_in": {},
            },
        )
        g["close_wait"] += 1
        unread = max(s.recv_q - 1, 0)
        g["unread_bytes"] += unread
        g["unread_connections"] += unread > 0
        g["eof_read"] += s.recv_q == 0
        if s.lastack_ms is not None:
            g["oldest_seconds"] = max(g["oldest_seconds"], s.lastack_ms / 1000)
        if s.users:
            for name in s.names():
                pids = g["held_by"].setdefault(name, [])
                pids.extend(p for p in s.pids() if p not in pids)
        else:
            g["unaccepted"] += 1
            queued = [ls for ls in listeners.get(s.local_port, []) if ls.recv_q > 0]
            for ls in queued or listeners.get(s.local_port, []):
                label = "+".join(ls.names()) + f" (listener ino {ls.inode}, queue {ls.recv_q})"
                g["queued_in"][label] = g["queued_in"].get(label, 0) + 1
    for g in groups.values():
        g["oldest_seconds"] = round(g["oldest_seconds"], 1)
    return groups


def ephemeral(port):
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return low <= port <= high


def close_wait(socks, port=None, peer_ports=None, held=None):
    """The CLOSE-WAIT sockets, optionally on a local/peer `port`, from given peer ports,
    held by a process (True), or not held (False: accept queue)."""
    out = []
    for s in socks:
        if s.state != "CLOSE-WAIT":
            continue
        if port is not None and port not in (s.local_port, s.peer_port):
            continue
        if peer_ports is not None and s.peer_port not in peer_ports:
            continue
        if held is not None and bool(s.users) != held:
            continue
        out.append(s)
    return out


# --- programs ------------------------------------------------------------------------


class Programs:
    """What a scenario started: each program in a session of its own, so that it and its
    children (workers, forks) are stopped together, by process group."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.started = []

    def start(self, name, argv, stdin=False, stdout=False, cwd=None):
        log = open(self.logdir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else log,
            stderr=log,
            cwd=cwd,
            start_new_session=True,
        )
        self.started.append((name, proc))
        return proc

    def stop_all(self):
        for _, proc in reversed(self.started):
            signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _, proc in reversed(self.started):
            while group_alive(proc.pid) and time.monotonic() < deadline:
                proc.poll()
                time.sleep(0.05)
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        self.started.clear()


def signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def expect_line(proc, word, timeout=WAIT):
    """Reads the handmade program's stdout until it says `word`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise ScenarioError(f"{proc.args} exited before saying {word!r}")
            if line.decode().strip() == word:
                return
    raise ScenarioError(f"{proc.args} did not say {word!r} within {timeout:.0f}s")


def order(proc, word):
    proc.stdin.write(word.encode() + b"\n")
    proc.stdin.flush()


def executable(name):
    """A console script next to this Python (pip's bin) first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise ScenarioError(f"{name} not found (tests/programs/install.sh installs it)")
    return found


def listening(port, count=1):
    """A predicate: `count` processes hold the listener(s) of `port`."""

    def ready():
        holders = {p for s in ss() if s.state == "LISTEN" and s.local_port == port for p in s.pids()}
        return len(holders) >= count

    return ready


class Clients:
    """Plain sockets standing for impatient peers: they send a request and give up."""

    def __init__(self):
        self.socks = []

    def open(self, port, payload=b""):
        import socket

        s = socket.create_connection(("127.0.0.1", port))
        if payload:
            s.sendall(payload)
        self.socks.append(s)
        return s.getsockname()[1]

    def close(self, ports):
        """Closes the clients whose local port is in `ports`."""
        keep = []
        for s in self.socks:
            if s.getsockname()[1] in ports:
                s.close()
            else:
                keep.append(s)
        self.socks = keep

    def close_all(self):
        for s in self.socks:
            s.close()
        self.socks.clear()


def http_get(path):
    return f"GET {path} HTTP/1.1\r\nHost: scenario\r\n\r\n".encode()


def serve(ctx, name, argv, port, processes=1):
    """Starts a packaged server and waits until `processes` processes hold its listener
    (a master and its workers)."""
    ctx.programs.start(name, argv)
    wait_until(listening(port, count=processes), f"{name}: {processes} process(es) on :{port}")


def read_by_server(port, peer_ports, pids_at_least=1):
    """A predicate: the connections from `peer_ports` were accepted and their request read
    (ESTAB, held by a process, Recv-Q 0) by at least `pids_at_least` distinct pids."""

    def ready():
        socks = [
            s
            for s in ss()
            if s.state == "ESTAB" and s.local_port == port and s.peer_port in peer_ports
        ]
        done = [s for s in socks if s.users and s.recv_q == 0]
        pids = {p for s in done for p in s.pids()}
        return len(done) == len(peer_ports) and len(pids) >= pids_at_least

    return ready


def oldest_at_least(port, seconds, peer_ports=None):
    """A predicate: every CLOSE-WAIT on `port` (from `peer_ports`) is `seconds` old."""

    def ready():
        socks = close_wait(ss(), port=port, peer_ports=peer_ports)
        return socks and all((s.lastack_ms or 0) >= seconds * 1000 for s in socks)

    return ready


# --- the exporter --------------------------------------------------------------------


class Exporter:
    def __init__(self, binary, netns, logdir):
        self.binary = str(binary)
        self.netns = netns
        self.logdir = logdir
        self.runs = []

    def command(self, args):
        return ["ip", "netns", "exec", self.netns, self.binary, *args]

    def snapshot(self, args, label):
        """`snapshot --format json ARGS`: the parsed JSON, timed and kept for the report."""
        argv = self.command(["snapshot", "--format", "json", *args])
        started = time.monotonic()
        out = subprocess.run(argv, capture_output=True, text=True)
        seconds = time.monotonic() - started
        try:
            value = json.loads(out.stdout)
        except json.JSONDecodeError as e:
            raise ScenarioError(f"snapshot printed no JSON ({e}): {out.stdout}\n{out.stderr}")
        self.runs.append(
            {
                "label": label,
                "command": " ".join(argv[4:]),
                "exit_code": out.returncode,
                "seconds": round(seconds, 2),
                "diagnosis": value["diagnosis"],
                "groups": [g for ns in value["namespaces"] for g in ns["groups"]],
                "listeners": [ls for ns in value["namespaces"] for ls in ns["listeners"]],
            }
        )
        return value

    def metrics(self, args, label):
        """`snapshot --format prometheus ARGS`: the tcpstate series a scrape would show."""
        argv = self.command(["snapshot", "--format", "prometheus", *args])
        out = subprocess.run(argv, capture_output=True, text=True)
        lines = [
            line
            for line in out.stdout.splitlines()
            if re.match(r"tcpstate_(connections|close_wait_|listen_queue|recv_queue|unread)", line)
            and "_bucket" not in line
        ]
        self.runs.append({"label": label, "command": " ".join(argv[4:]), "metrics": lines})
        return lines

    def daemon(self, args=()):
        return Daemon(self, list(args))


class Daemon:
    """The exporter as a daemon in the namespace, scraped over HTTP from inside it."""

    def __init__(self, exporter, args):
        self.exporter = exporter
        host, port = EXPORTER_ADDRESS
        self.log = open(exporter.logdir / "exporter-daemon.log", "wb")
        argv = exporter.command(
            ["--web.listen-address", f"{host}:{port}", "--sample.interval", "500ms", *args]
        )
        self.command = " ".join(argv[4:])
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        wait_until(self.answers, "the exporter daemon to answer")

    def answers(self):
        try:
            return self.scrape() is not None
        except OSError:
            return False

    def scrape(self):
        conn = http.client.HTTPConnection(*EXPORTER_ADDRESS, timeout=10)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def series(self, prefix):
        return [line for line in self.scrape().splitlines() if line.startswith(prefix)]

    def samples(self):
        for line in self.series("tcpstate_samples_total"):
            return float(line.split()[-1])
        return 0.0

    def wait_samples(self, n):
        """Waits until the daemon has taken `n` more samples (what it serves is newer
        than anything before this call)."""
        target = self.samples() + n
        wait_until(lambda: self.samples() >= target, f"{n} more exporter samples")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


# --- scenarios -----------------------------------------------------------------------


@dataclass
class Expect:
    """What the exporter should say: one verdict for (direction, port, process)."""

    direction: str
    port: int
    process: str  # several names joined by "|" when any of them is right
    cause: str
    close_wait: int | None = None
    unaccepted: int | None = None
    why: str = ""
    # Sockets expected to leave CLOSE_WAIT during the watch: its rows are checked for
    # these closes instead of `close_wait`.
    closes_in_watch: int | None = None
    # What one sample (no watch) can rightly say, when it differs from `cause`.
    single_cause: str | None = None

    def matches(self, process):
        return process in self.process.split("|")


@dataclass
class Run:
    """What one scenario hands back for the report."""

    name: str
    programs: list
    expect: list = field(default_factory=list)
    truth: dict = field(default_factory=dict)
    truth_after: dict = field(default_factory=dict)
    setup_seconds: float = 0.0
    notes: list = field(default_factory=list)


class Context:
    def __init__(self, name, netns, exporter, logdir):
        self.name = name
        self.netns = netns
        self.programs = Programs(logdir)
        self.exporter = Exporter(exporter, netns, logdir)
        self.logdir = logdir
        self.clients = Clients()
        self.started = time.monotonic()

    def setup_done(self, run):
        run.setup_seconds = round(time.monotonic() - self.started, 1)
        run.truth = truth()


SCENARIOS = {}


def scenario(needs):
    def register(fn):
        SCENARIOS[fn.__name__] = (fn, needs)
        return fn

    return register


def single_and_watch(ctx, thresholds, samples, interval="1s"):
    """The exporter runs every scenario compares: a plain `snapshot` (what a person types),
    one sample with the scenario's thresholds, its exposition, then a watch of `samples`
    samples with the same thresholds: only the number of samples differs."""
    ctx.exporter.snapshot([], "plain snapshot")
    if thresholds:
        ctx.exporter.snapshot(thresholds, "one sample, " + " ".join(thresholds))
    ctx.exporter.metrics([], "metrics (one sample)")
    ctx.exporter.snapshot(
        ["--watch", str(samples), "--sample.interval", interval, *thresholds],
        " ".join([f"watch {samples} x {interval}", *thresholds]),
    )


@scenario(needs=["gunicorn"])
def prefork(ctx):
    """gunicorn, sync workers (pre-fork): 3 workers each stuck in a handler that never
    returns; the 3 clients gave up. Truth: 3 CLOSE_WAIT on 8000, one per worker pid,
    never closed."""
    run = Run("prefork", ["gunicorn 3 sync workers (PyPI)"])
    serve(ctx, "gunicorn", [executable("gunicorn"), "--chdir", str(HERE), "--workers", "3",
                            "--timeout", "0", "--bind", "127.0.0.1:8000", "apps:wsgi"],
          port=8000, processes=4)
    ports = [ctx.clients.open(8000, http_get("/hang")) for _ in range(3)]
    wait_until(read_by_server(8000, ports, pids_at_least=3), "each worker to take one /hang")
    ctx.clients.close_all()
    wait_until(oldest_at_least(8000, 3), "3 CLOSE_WAIT, 3 s old")
    ctx.setup_done(run)
    run.expect = [Expect("inbound", 8000, "gunicorn", "never_closed", close_wait=3,
                         why="handlers never return; nothing closes; older than --stuck-after")]
    single_and_watch(ctx, ["--stuck-after", "2s"], samples=3)
    return run


@scenario(needs=["socat"])
def fork_per_connection(ctx):
    """socat fork (one child per connection): each child runs a handler that answers after
    8 s; the clients send a line and give up at once. socat reads the EOF, waits for the
    handler, then closes. Truth: 6 CLOSE_WAIT, EOF read, each closed ~8 s later (late,
    not a leak)."""
    run = Run("fork_per_connection", ["socat fork (Debian)"])
    serve(ctx, "socat", ["socat", "-t", "30", "TCP-LISTEN:9000,fork,reuseaddr,bind=127.0.0.1",
                         "SYSTEM:sleep 8; echo done"], port=9000)
    ports = [ctx.clients.open(9000, b"request\n") for _ in range(6)]
    ctx.clients.close_all()
    wait_until(
        lambda: len([s for s in close_wait(ss(), port=9000, peer_ports=ports) if s.recv_q == 0]) == 6,
        "6 CLOSE_WAIT with the EOF read by the socat children",
    )
    ctx.setup_done(run)
    run.expect = [Expect("inbound", 9000, "socat", "closed_late", close_wait=6, closes_in_watch=6,
                         single_cause="undetermined",
                         why="EOF read, then closed after the 8 s handler: late, not leaked; "
                             "one sample of 0.1 s old sockets cannot tell")]
    # The watch spans the closes: it starts while the sockets are about 1 s old and lasts 12 s.
    single_and_watch(ctx, ["--late-after", "2s"], samples=13)
    run.truth_after = truth()
    if close_wait(ss(), port=9000):
        raise ScenarioError("the socat children did not close within the watch")
    return run


@scenario(needs=["uvicorn"])
def event_loop(ctx):
    """uvicorn, 2 worker processes (event loops): a handler makes a blocking call inside
    the loop; once both workers are stuck nobody accepts. 5 more clients send a request
    and give up in the accept queue. Truth: 5 unaccepted CLOSE_WAIT (accept backlog) plus
    the 2 the stuck workers hold."""
    run = Run("event_loop", ["uvicorn 2 workers (PyPI)"])
    serve(ctx, "uvicorn", [executable("uvicorn"), "--app-dir", str(HERE), "--host", "127.0.0.1",
                           "--port", "8002", "--workers", "2", "apps:asgi"],
          port=8002, processes=3)
    blocked = []
    for _ in range(2):
        blocked.append(ctx.clients.open(8002, http_get("/block")))
        wait_until(read_by_server(8002, blocked, pids_at_least=len(blocked)),
                   f"{len(blocked)} worker(s) stuck in /block")
    queued = [ctx.clients.open(8002, http_get("/")) for _ in range(5)]
    wait_until(lambda: any(s.state == "LISTEN" and s.local_port == 8002 and s.recv_q == 5 for s in ss()),
               "5 connections in the accept queue")
    ctx.clients.close_all()
    wait_until(lambda: len(close_wait(ss(), port=8002)) == 7, "7 CLOSE_WAIT on :8002")
    wait_until(oldest_at_least(8002, 3), "CLOSE_WAIT 3 s old")
    ctx.setup_done(run)
    del queued
    # The workers are multiprocessing children: their name is the interpreter's.
    workers = "|".join(n for n in run.truth["inbound 8002"]["held_by"] if n != "uvicorn")
    run.expect = [
        Expect("inbound", 8002, "uvicorn", "accept_backlog", close_wait=5, unaccepted=5,
               why="5 never accepted; they count for the listener's lowest pid, the "
                   "supervisor (the workers, which should accept, are stuck)"),
        Expect("inbound", 8002, workers, "never_closed", close_wait=2,
               why="the stuck workers never close the 2 they hold (one verdict, not one per pid)"),
    ]
    single_and_watch(ctx, ["--stuck-after", "2s"], samples=3)
    return run


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log stderr info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout {keepalive};
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def start_nginx(ctx, port, keepalive, nofile=1024):
    """nginx, a master and one worker, answering "ok" on `port`; its error log (stderr) is
    `nginx.log` in the scenario's folder."""
    conf = ctx.logdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=ctx.logdir, port=port, keepalive=keepalive,
                                      nofile=nofile))
    serve(ctx, "nginx", [executable("nginx"), "-c", str(conf), "-p", str(ctx.logdir)],
          port=port, processes=2)


@scenario(needs=["nginx"])
def event_loop_fd_limit(ctx):
    """nginx, one worker limited to 16 descriptors (worker_rlimit_nofile) with
    keepalive_timeout 1h: 16 keep-alive clients take its last descriptors, accept4()
    fails with EMFILE and the worker stops accepting. The clients still queued give up;
    the idle ones stay. Truth: the queued ones are CLOSE_WAIT in nginx's accept queue,
    never accepted: accept backlog."""
    run = Run("event_loop_fd_limit", ["nginx worker_rlimit_nofile 16 (Debian)"])
    start_nginx(ctx, port=8082, keepalive="1h", nofile=16)
    ports = [ctx.clients.open(8082, http_get("/")) for _ in range(16)]
    log = ctx.logdir / "nginx.log"
    wait_until(lambda: "accept4() failed (24: Too many open files)" in log.read_text(),
               "nginx's worker to run out of descriptors")

    def server_side():
        return [s for s in ss() if s.state == "ESTAB" and s.local_port == 8082]

    # Out of descriptors, the worker accepts nothing more: each connection is either
    # read by it (held, Recv-Q 0) or waits in the queue (no holder).
    wait_until(lambda: len([s for s in server_side() if s.users and s.recv_q == 0]
                           + [s for s in server_side() if not s.users]) == len(ports),
               "each of the 16 connections accepted and read, or queued")
    queued = [s.peer_port for s in server_side() if not s.users]
    if len(queued) < 3:
        raise ScenarioError(f"only {len(queued)} connections queued; the limit did not bite")
    ctx.clients.close(queued)
    wait_until(lambda: len(close_wait(ss(), port=8082, held=False)) == len(queued),
               f"the {len(queued)} queued connections in CLOSE_WAIT")
    wait_until(oldest_at_least(8082, 3), "CLOSE_WAIT 3 s old")
    ctx.setup_done(run)
    run.expect = [Expect("inbound", 8082, "nginx", "accept_backlog", close_wait=len(queued),
                         unaccepted=len(queued),
                         why="the worker, out of descriptors, accepts nothing; the peers left")]
    single_and_watch(ctx, ["--stuck-after", "2s"], samples=3)
    return run


@scenario(needs=["nginx", "requests"])
def pool_keepalive(ctx):
    """A client using requests' connection pool (urllib3) against nginx with
    keepalive_timeout 1s: nginx closes the idle pooled connections; the idle client never
    looks at them. Truth: 4 outbound CLOSE_WAIT to 8081, held by the client, never
    closed while it is idle."""
    run = Run("pool_keepalive", ["nginx keepalive_timeout 1s (Debian)", "requests pool (PyPI)"])
    start_nginx(ctx, port=8081, keepalive="1s")
    client = ctx.programs.start(
        "poolclient",
        [sys.executable, str(HERE / "handmade.py"), "pool-client", "http://127.0.0.1:8081/", "4"],
        stdin=True, stdout=True,
    )
    expect_line(client, "pooled")
    wait_until(lambda: len(close_wait(ss(), port=8081, held=True)) == 4,
               "nginx to close the 4 idle pooled connections")
    wait_until(oldest_at_least(8081, 3), "CLOSE_WAIT 3 s old")
    ctx.setup_done(run)
    run.expect = [Expect("outbound", 8081, "poolclient", "never_closed", close_wait=4,
                         why="an idle pool never looks at its connections; older than --stuck-after")]
    single_and_watch(ctx, ["--stuck-after", "2s"], samples=3)
    # The pool's next use: urllib3 finds them dropped and closes them.
    order(client, "again")
    expect_line(client, "pooled")
    run.truth_after = truth()
    run.notes.append("after one more request round the client closed its dead pooled "
                     f"connections itself: CLOSE_WAIT left on 8081 = {len(close_wait(ss(), port=8081))} "
                     "(new ones enter once nginx times them out again)")
    return run


@scenario(needs=["gunicorn"])
def hang_and_slow(ctx):
    """gunicorn, one gthread worker: 6 requests hang for good, and a slow request (3 s)
    arrives every 0.5 s from a client that gives up after 0.5 s. Truth: the slow ones
    leave CLOSE_WAIT after ~2.5 s (late); the 6 hung ones never do: they are 18 s old,
    older than --stuck-after and far above the mean close time. Never closed must win."""
    run = Run("hang_and_slow", ["gunicorn gthread worker (PyPI)"])
    serve(ctx, "gunicorn", [executable("gunicorn"), "--chdir", str(HERE), "--workers", "1",
                            "--threads", "32", "--worker-class", "gthread", "--timeout", "0",
                            "--bind", "127.0.0.1:8000", "apps:wsgi"],
          port=8000, processes=2)
    hung = [ctx.clients.open(8000, http_get("/hang")) for _ in range(6)]
    wait_until(read_by_server(8000, hung), "the 6 /hang requests read")
    ctx.clients.close_all()
    stop = threading.Event()
    slow = threading.Thread(target=slow_requests, args=(stop,), daemon=True)
    slow.start()
    try:
        wait_until(oldest_at_least(8000, 18, peer_ports=hung), "the 6 hung CLOSE_WAIT 18 s old",
                   timeout=60)
        ctx.setup_done(run)
        run.truth["inbound 8000"]["of which hung"] = len(close_wait(ss(), port=8000, peer_ports=hung))
        run.expect = [Expect("inbound", 8000, "gunicorn", "never_closed",
                             why="6 hung for good (18 s, > --stuck-after 10s, > 5x the mean close)")]
        single_and_watch(ctx, ["--stuck-after", "10s", "--late-after", "1s"], samples=6)
    finally:
        stop.set()
        slow.join()
    return run


def slow_requests(stop):
    """An impatient peer of a slow endpoint: asks, waits 0.5 s, gives up; twice a second."""
    clients = Clients()
    while not stop.is_set():
        clients.open(8000, http_get("/slow?s=3"))
        stop.wait(0.5)
        clients.close_all()


def handmade(ctx, name, *args):
    return ctx.programs.start(
        name, [sys.executable, str(HERE / "handmade.py"), *args], stdin=True, stdout=True
    )


@scenario(needs=[])
def reuseport(ctx):
    """SO_REUSEPORT, two listeners per port: `acceptor` serves, `sleeper` never accepts.
    Clients send a byte and leave; those the kernel hashed to sleeper stay in its queue.
    On 9100 sleeper bound first, on 9101 last. Truth: on both ports the unaccepted
    CLOSE_WAIT are sleeper's (acceptor's queue is empty)."""
    run = Run("reuseport", ["handmade.py reuseport x4"])
    for name, port, mode in [("sleeper", 9100, "never"), ("acceptor", 9100, "accept"),
                             ("acceptor", 9101, "accept"), ("sleeper", 9101, "never")]:
        expect_line(handmade(ctx, f"{name}-{port}", "reuseport", name, str(port), mode), "ready")
    queued = {port: fill_sleeper_queue(ctx, port) for port in (9100, 9101)}
    ctx.setup_done(run)
    run.expect = [Expect("inbound", port, "sleeper", "accept_backlog", unaccepted=n, close_wait=n,
                         why=f"the sockets sit in sleeper's queue (bound {order}); acceptor's is empty")
                  for (port, n), order in zip(queued.items(), ("first", "last"))]
    single_and_watch(ctx, [], samples=2)
    return run


def fill_sleeper_queue(ctx, port, want=4):
    """Connects (a byte, then gone) until `want` landed in sleeper's queue on `port`, then
    waits for acceptor to have closed all it served. Returns sleeper's queue length."""

    def sleeper_queue():
        return sum(s.recv_q for s in ss()
                   if s.state == "LISTEN" and s.local_port == port and "sleeper" in s.names())

    for _ in range(200):
        if sleeper_queue() >= want:
            break
        ctx.clients.open(port, b"x")
        ctx.clients.close_all()
    else:
        raise ScenarioError(f"200 connections to {port} and fewer than {want} hashed to sleeper")
    queued = sleeper_queue()
    wait_until(lambda: close_wait(ss(), port=port, held=True) == []
               and len(close_wait(ss(), port=port)) == queued,
               f"acceptor to close what it served on {port}; sleeper's queue all CLOSE_WAIT")
    return queued


@scenario(needs=[])
def scm_rights(ctx):
    """`sender` accepts a connection the client then leaves; once the exporter has seen
    the CLOSE_WAIT there, the fd goes over SCM_RIGHTS to `receiver` and sender closes its
    copy (and lives on). Truth: the CLOSE_WAIT is receiver's alone."""
    run = Run("scm_rights", ["handmade.py fd-sender, fd-receiver"])
    unix_path = str(ctx.logdir / "pass.sock")
    receiver = handmade(ctx, "receiver", "fd-receiver", unix_path)
    expect_line(receiver, "ready")
    sender = handmade(ctx, "sender", "fd-sender", "9200", unix_path)

    def pass_fd():
        order(sender, "pass")
        expect_line(sender, "passed")
        expect_line(receiver, "received")

    follow_owner_change(ctx, run, sender, 9200, "sender", pass_fd, "receiver",
                        "the only holder after the pass (ss says so)")
    return run


@scenario(needs=[])
def exec_in_place(ctx):
    """`holder` holds a CLOSE_WAIT connection, the exporter sees it, then holder exec()s
    `sleep` in place (same pid, socket kept across the exec). Truth: `sleep` holds it."""
    run = Run("exec_in_place", ["handmade.py exec-holder, then /bin/sleep"])
    holder = handmade(ctx, "holder", "exec-holder", "9300")

    def exec_sleep():
        order(holder, "exec")
        expect_line(holder, "exec")

    follow_owner_change(ctx, run, holder, 9300, "holder", exec_sleep, "sleep",
                        "the process is now /bin/sleep (comm 'sleep'); same pid")
    return run


def follow_owner_change(ctx, run, server, port, before, change, after, why):
    """The daemon across a change of owner: a client connects to `server` (a handmade
    program) and leaves; once the daemon shows that CLOSE_WAIT owned by `before`,
    `change()` runs; once `ss` shows `after` as its only holder and the daemon has taken
    two more samples, what the daemon serves for `port` goes to the report."""
    expect_line(server, "ready")
    daemon = ctx.exporter.daemon()
    try:
        ctx.clients.open(port)
        expect_line(server, "accepted")
        ctx.clients.close_all()
        wait_until(lambda: any(f'process="{before}"' in s and 'state="close_wait"' in s
                               for s in daemon.series("tcpstate_connections{")),
                   f"the exporter to attribute the CLOSE_WAIT to {before}")
        change()
        wait_until(lambda: [s.names() for s in close_wait(ss(), port=port)] == [[after]],
                   f"one CLOSE_WAIT on {port}, held by {after} only")
        daemon.wait_samples(2)
        ctx.setup_done(run)
        run.expect = [Expect("inbound", port, after, "-", close_wait=1, why=why)]
        record_daemon(ctx, daemon, str(port))
    finally:
        daemon.stop()


@scenario(needs=[])
def many_groups(ctx):
    """50 ports x 30 client processes, each connection closed by the server: 1,500
    outbound CLOSE_WAIT groups, and the exporter told max_groups = 20. Truth: the series
    the exporter serves for close_wait should be bounded by max_groups (+ the fold)."""
    run = Run("many_groups", ["handmade.py fanout 50 ports x 30 processes"])
    fanout = handmade(ctx, "fanout", "fanout", "10000", "50", "30")
    expect_line(fanout, "ready", timeout=60)
    wait_until(lambda: len(close_wait(ss(), held=True)) == 1500, "1,500 outbound CLOSE_WAIT")
    ctx.setup_done(run)
    config = ctx.logdir / "max-groups.toml"
    config.write_text("[sample]\nmax_groups = 20\n")
    run.expect = [Expect("outbound", 0, "*", "-", why="close_wait series <= max_groups + fold")]
    daemon = ctx.exporter.daemon(["--config.file", str(config)])
    try:
        daemon.wait_samples(2)
        series = daemon.series('tcpstate_connections{')
        cw = [s for s in series if 'state="close_wait"' in s]
        ctx.exporter.runs.append({
            "label": "daemon, max_groups = 20",
            "command": daemon.command,
            "close_wait_series": len(cw),
            "close_wait_ports": len({re.search(r'port="([^"]*)"', s)[1] for s in cw}),
            "close_wait_processes": len({re.search(r'process="([^"]*)"', s)[1] for s in cw}),
            "groups_folded": daemon.series("tcpstate_groups_folded"),
            "examples": cw[:5],
        })
    finally:
        daemon.stop()
    return run


def record_daemon(ctx, daemon, port):
    ctx.exporter.runs.append({
        "label": "daemon metrics after the change of owner",
        "command": daemon.command,
        "metrics": [s for s in daemon.scrape().splitlines()
                    if f'port="{port}"' in s and not s.startswith("#")
                    and re.match(r"tcpstate_(connections|close_wait_oldest)", s)],
    })


# --- comparing -------------------------------------------------------------------------


def compare(run, exporter_runs):
    """One line per expectation and exporter run: what the exporter said against it."""
    lines = []
    for exp in run.expect:
        for er in exporter_runs:
            if "diagnosis" in er:
                lines.append(f"  [{er['label']}] {judge_diagnosis(exp, er['diagnosis'])}")
            elif "metrics" in er and exp.cause == "-":
                owners = sorted({re.search(r'process="([^"]*)"', m)[1] for m in er["metrics"]
                                 if 'state="close_wait"' in m and "tcpstate_connections" in m})
                ok = owners == [exp.process]
                lines.append(f"  [{er['label']}] close_wait owner {owners} "
                             f"{'OK' if ok else 'WRONG, truth ' + exp.process}")
            elif "close_wait_series" in er:
                lines.append(f"  [{er['label']}] {er['close_wait_series']} close_wait series "
                             f"({er['close_wait_ports']} ports, {er['close_wait_processes']} processes)")
    return lines


def judge_diagnosis(exp, diagnosis):
    watched = any(d["watched_seconds"] is not None for d in diagnosis)
    rows = [d for d in diagnosis if d["direction"] == exp.direction and d["port"] == str(exp.port)
            and exp.matches(d["process"])]
    if not rows:
        others = [(d["process"], d.get("pid"), d["close_wait"], d["cause"]) for d in diagnosis
                  if d["direction"] == exp.direction and d["port"] == str(exp.port)]
        return (f"no row for {exp.direction} {exp.port} {exp.process}; the port's rows "
                f"(process, pid, cw, cause): {others} -> WRONG (truth {exp.process}, {exp.cause})")
    causes = sorted({d["cause"] for d in rows})
    total = sum(d["close_wait"] for d in rows)
    unaccepted = sum(d["unaccepted"] for d in rows)
    closes = sum(d["closes_seen"] or 0 for d in rows)
    who = sorted({(d["process"], d.get("pid")) for d in rows}, key=str)
    verdicts = "; ".join(sorted({d["verdict"] for d in rows}))
    wrong = []
    want = exp.cause if watched else (exp.single_cause or exp.cause)
    if causes != [want]:
        if not watched and "EOF read and ignored" in verdicts and want != "never_closed":
            tag = " (item 2: young, EOF read)"
        elif not watched:
            tag = " (item 7: one sample)"
        else:
            tag = ""
        wrong.append(f"cause {causes} != {want}{tag}")
    if len(rows) > 1 and len({d["process"] for d in rows}) == 1:
        wrong.append(f"{len(rows)} rows for one process (item 1)")
    if watched and exp.closes_in_watch is not None:
        if closes != exp.closes_in_watch:
            wrong.append(f"closes seen {closes} != {exp.closes_in_watch}")
    elif exp.close_wait is not None and total != exp.close_wait:
        wrong.append(f"close_wait {total} != {exp.close_wait}")
    if exp.unaccepted is not None and unaccepted != exp.unaccepted:
        wrong.append(f"unaccepted {unaccepted} != {exp.unaccepted}")
    head = f"{exp.direction} {exp.port} {exp.process}: {len(rows)} row(s) {who}, cw {total}, " \
           f"unaccepted {unaccepted}, closes seen {closes}, cause {causes}"
    return f"{head} -> {'OK' if not wrong else 'WRONG: ' + ', '.join(wrong)}\n      {verdicts}"


# --- running -------------------------------------------------------------------------


def run_inside(name, netns, exporter, out):
    """Runs one scenario; called inside its namespace. Writes the report, prints a summary."""
    fn, _ = SCENARIOS[name]
    logdir = out / name
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    # The clients this process opens show in ss and in the exporter under this name.
    set_name("peers")
    ctx = Context(name, netns, exporter, logdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        run = fn(ctx)
    finally:
        ctx.clients.close_all()
        ctx.programs.stop_all()
    report = asdict(run)
    report["doc"] = " ".join(fn.__doc__.split())
    report["exporter"] = ctx.exporter.runs
    report["comparison"] = compare(run, ctx.exporter.runs)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"== {name} (setup {run.setup_seconds} s, total {time.monotonic() - ctx.started:.1f} s)")
    for line in describe_truth(run.truth):
        print(f"  truth: {line}")
    for exp in run.expect:
        print(f"  expect: {exp.direction} {exp.port} {exp.process} -> {exp.cause} ({exp.why})")
    print("\n".join(report["comparison"]))
    for note in run.notes:
        print(f"  note: {note}")


def describe_truth(groups, most=6):
    """One line per group, the largest first, at most `most` of them."""
    lines = []
    ranked = sorted(groups.items(), key=lambda kv: -kv[1]["close_wait"])
    for key, g in ranked[:most]:
        names = sorted(g["held_by"])
        held = ", ".join(f"{name} ({len(g['held_by'][name])} pid)" for name in names[:4])
        if len(names) > 4:
            held += f" and {len(names) - 4} more processes"
        queued = ", ".join(f"{n} in {where}" for where, n in g["queued_in"].items())
        extra = "".join(f", {k} {v}" for k, v in g.items() if k.startswith("of which"))
        lines.append(
            f"{key}: cw {g['close_wait']}, unread {g['unread_bytes']} B on "
            f"{g['unread_connections']}, eof_read {g['eof_read']}, unaccepted {g['unaccepted']}, "
            f"oldest {g['oldest_seconds']} s{extra}; held by {held or 'nobody'}"
            + (f"; queued: {queued}" if queued else "")
        )
    if len(ranked) > most:
        lines.append(f"... {len(ranked) - most} more groups ({len(ranked)} in all)")
    return lines


def check(names):
    missing = []
    for tool in ("ip", "ss"):
        if not shutil.which(tool):
            missing.append(f"{tool} (iproute2)")
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    for name in names:
        for need in SCENARIOS[name][1]:
            if need == "requests":
                ok = subprocess.run([sys.executable, "-c", "import requests"],
                                    capture_output=True).returncode == 0
            else:
                try:
                    executable(need)
                    ok = True
                except ScenarioError:
                    ok = False
            if not ok:
                missing.append(f"{need} (for {name})")
    return sorted(set(missing))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    p_check = sub.add_parser("check")
    p_check.add_argument("names", nargs="*")
    p_run = sub.add_parser("run")
    p_run.add_argument("names", nargs="+")
    p_run.add_argument("--exporter", type=Path, default=DEFAULT_EXPORTER)
    p_run.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p_inside = sub.add_parser("inside")  # what `run` calls inside the namespace
    p_inside.add_argument("name")
    p_inside.add_argument("--netns", required=True)
    p_inside.add_argument("--exporter", type=Path, required=True)
    p_inside.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    if args.command == "list":
        for name, (fn, needs) in SCENARIOS.items():
            print(f"{name:22} needs {', '.join(needs) or 'nothing'}\n    {' '.join(fn.__doc__.split())}")
        return 0
    if args.command == "inside":
        run_inside(args.name, args.netns, args.exporter, args.out)
        return 0
    names = list(SCENARIOS) if args.names in ([], ["all"]) else args.names
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; see `list`")
    missing = check(names)
    if missing:
        print("missing: " + "; ".join(missing), file=sys.stderr)
        return 1
    if args.command == "check":
        print("all prerequisites present")
        return 0
    if not args.exporter.exists():
        print(f"no exporter at {args.exporter} (cargo build)", file=sys.stderr)
        return 1
    failed = []
    for name in names:
        netns = f"tcpstate-{name.replace('_', '-')}-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
            code = subprocess.run(
                ["ip", "netns", "exec", netns, sys.executable, __file__, "inside", name,
                 "--netns", netns, "--exporter", str(args.exporter.resolve()),
                 "--out", str(args.out.resolve())]
            ).returncode
            if code != 0:
                failed.append(name)
        finally:
            subprocess.run(["ip", "netns", "del", netns])
    if failed:
        print(f"scenarios that could not be built: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
