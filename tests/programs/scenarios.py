#!/usr/bin/env python3
"""Real programs (Debian, PyPI) driven into CLOSE_WAIT, with `ss -tanpie` as ground truth,
compared with what the exporter says.

  scenarios.py list                          the scenarios and what each needs
  scenarios.py check [NAME ...]              prerequisites only; exit 1 naming what is missing
  scenarios.py run [--exporter BIN] [--out DIR] [--jobs N] NAME ... | all

`run` builds each scenario in a private network namespace of its own (`ip netns add`),
`--jobs` of them at a time, runs this file inside it (`ip netns exec`), starts the
program(s), drives clients until the CLOSE_WAIT situation exists (waiting for conditions
read from `ss`, never for a fixed time), records the ground truth and checks it is the
situation intended, runs the exporter there (`snapshot`: plain, one sample, a watch, the
exposition; the daemon meanwhile, its scrapes replayed through the alert rules with
promtool; the daemon alone for the attribution and bound cases), then stops everything
it started and deletes the namespace. One JSON report per scenario goes to DIR
(/tmp/tcpstate-programs by default): the truth, what is expected (verdicts per run, exact
metric values, the alerts that must fire), every exporter run; a summary is printed.
tests/programs.rs runs all of it and asserts the expectations.

Installs nothing: tests/programs/install.sh does (nginx, socat, promtool, jsonnet from
Debian; gunicorn, uvicorn, requests from PyPI). Needs root (namespaces) and iproute2.
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

import alerts
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
    # A socket not bound yet, or closed after a failed connect (state CLOSE, which
    # `ss -a` lists too), shows `*` for its own port as for its peer's: port 0 here.
    local = fields[3].rsplit(":", 1)[1]
    local_port = 0 if local == "*" else int(local)
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
    """The exporter binary, run inside the scenario's namespace; every run is kept for
    the report under a fixed label: "metrics", "one_sample", "plain", "watch"."""

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
                "stderr": out.stderr.strip(),
                "seconds": round(seconds, 2),
                "diagnosis": value["diagnosis"],
                "groups": [g for ns in value["namespaces"] for g in ns["groups"]],
                "listeners": [ls for ns in value["namespaces"] for ls in ns["listeners"]],
            }
        )
        return value

    def metrics(self, args, label="metrics"):
        """`snapshot --format prometheus ARGS`: the tcpstate series a scrape would show."""
        argv = self.command(["snapshot", "--format", "prometheus", *args])
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode != 0:
            raise ScenarioError(f"{' '.join(argv)} exited {out.returncode}: {out.stderr}")
        self.runs.append({"label": label, "command": " ".join(argv[4:]),
                          "metrics": metric_lines(out.stdout)})

    def daemon(self, args=(), config=None):
        return Daemon(self, list(args), config)


def metric_lines(text):
    """The per-group and per-listener series of an exposition, buckets left out."""
    return [line for line in text.splitlines()
            if re.match(r"tcpstate_(connections|close_wait_|listen_queue|recv_queue|unread)", line)
            and "_bucket" not in line]


class Daemon:
    """The exporter as a daemon in the namespace, scraped over HTTP from inside it."""

    def __init__(self, exporter, args, config=None):
        self.exporter = exporter
        host, port = EXPORTER_ADDRESS
        self.log = open(exporter.logdir / "exporter-daemon.log", "wb")
        if config is not None:
            path = exporter.logdir / "exporter.toml"
            path.write_text(config)
            args = ["--config.file", str(path), *args]
        argv = exporter.command(
            ["--web.listen-address", f"{host}:{port}", "--sample.interval", "500ms", *args]
        )
        self.command = " ".join(argv[4:])
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        # One keep-alive connection for every scrape, closed in stop(): a connection
        # closed after each scrape leaves the daemon's end in CLOSE_WAIT until it reads
        # the EOF, and a sample taken meanwhile counts it beside the scenario's.
        self.conn = http.client.HTTPConnection(*EXPORTER_ADDRESS, timeout=10)
        self.conn_lock = threading.Lock()  # the alert Recorder scrapes from its thread
        wait_until(self.answers, "the exporter daemon to answer")

    def answers(self):
        try:
            return self.scrape() is not None
        except OSError:
            return False

    def scrape(self):
        with self.conn_lock:
            try:
                return self._get("/metrics")
            except (OSError, http.client.HTTPException):
                # Not answering yet, or the daemon ended an idle connection (its header
                # read timeout): once more on a new one.
                self.conn.close()
                return self._get("/metrics")

    def _get(self, path):
        self.conn.request("GET", path)
        return self.conn.getresponse().read().decode()

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
        with self.conn_lock:
            self.conn.close()
        self.proc.terminate()
        self.proc.wait()


# --- what a scenario expects -----------------------------------------------------------


@dataclass
class Expect:
    """One verdict the exporter must give, for the group (direction, port, process): one
    row, whatever the number of processes of that name holding its sockets."""

    direction: str
    port: int
    process: str  # several names joined by "|" when any of them is right
    cause: str  # the watch's verdict (--watch N with the scenario's thresholds)
    plain: str | None = None  # a plain `snapshot`'s, when it differs
    one_sample: str | None = None  # `--watch 1`'s, when it differs
    also: str | None = None  # the watch's second cause
    close_wait: int | None = None  # in the one-sample run
    unaccepted: int | None = None  # in the one-sample run
    stuck: int | None = None  # in the one-sample run
    pid_count: int | None = None  # in the one-sample run
    closes_in_watch: int | None = None
    why: str = ""

    def matches(self, process):
        return process in self.process.split("|")

    def cause_of(self, label):
        return {"plain": self.plain, "one_sample": self.one_sample}.get(label) or self.cause


def series(name, value, **labels):
    """An exact metric value the exposition must hold (None: the series must be absent)."""
    return {"name": name, "labels": {k: str(v) for k, v in labels.items()}, "value": value}


def group_series(direction, port, process, **values):
    """Expected series of one CLOSE_WAIT group, by keyword: close_wait, unread_bytes,
    unaccepted, eof_read, stuck, stuck_eof_read (a value, or None: absent)."""
    group = {"direction": direction, "port": port, "process": process}
    families = {
        "close_wait": ("tcpstate_connections", {"state": "close_wait"}),
        "unread_bytes": ("tcpstate_recv_queue_bytes", {"state": "close_wait"}),
        "unaccepted": ("tcpstate_close_wait_unaccepted", {}),
        "eof_read": ("tcpstate_close_wait_eof_read_connections", {}),
        "stuck": ("tcpstate_close_wait_stuck_connections", {}),
        "stuck_eof_read": ("tcpstate_close_wait_stuck_eof_read_connections", {}),
    }
    return [series(families[key][0], value, **families[key][1], **group)
            for key, value in values.items()]


@dataclass
class Run:
    """What one scenario hands back for the report."""

    name: str
    programs: list
    expect: list = field(default_factory=list)
    metrics: list = field(default_factory=list)  # series(...) the exposition must hold
    truth: dict = field(default_factory=dict)
    truth_after: dict = field(default_factory=dict)
    setup_seconds: float = 0.0
    alerts: dict = field(default_factory=dict)
    daemon_scrape: str = ""  # the daemon's last scrape, for the scenarios judged on it
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


def require(condition, what):
    """The scenario was not built as intended: a failure, never a pass."""
    if not condition:
        raise ScenarioError(f"construction check failed: {what}\n{ss_text()[:4000]}")


SCENARIOS = {}


def scenario(needs):
    def register(fn):
        SCENARIOS[fn.__name__] = (fn, needs)
        return fn

    return register


# The snapshot's defaults (README): what a plain `snapshot` uses.
STUCK_AFTER = 10.0
LATE_AFTER = 5.0


def judge(ctx, run, thresholds=(), watch=4, interval="1s", until=None, held=None):
    """Every exporter run a scenario is judged by, all started right away, with the daemon
    sampling the same namespace meanwhile for the alert check:
    - "plain": a plain `snapshot` (what a person types), and at the same time
    - "watch": `snapshot --watch N --sample.interval 1s THRESHOLDS`, and
    - "metrics": `snapshot --format prometheus --watch 1 THRESHOLDS`, then
    - "one_sample": `snapshot --watch 1 THRESHOLDS`, then the daemon;
    then `held()` once every run but the watch has ended (the situation they were to see
    still holds: a construction check), `until()` (what must hold before the end, e.g. the
    closes happened), and the alert rules replayed on the daemon's scrapes, against the
    watch's verdicts."""
    stuck_after, late_after = STUCK_AFTER, LATE_AFTER
    for flag, value in zip(thresholds[::2], thresholds[1::2]):
        seconds = float(value.rstrip("s"))
        if flag == "--stuck-after":
            stuck_after = seconds
        elif flag == "--late-after":
            late_after = seconds
    plain = threading.Thread(target=ctx.exporter.snapshot, args=([], "plain"))
    watching = threading.Thread(target=ctx.exporter.snapshot, args=(
        ["--watch", str(watch), "--sample.interval", interval, *thresholds], "watch"))
    for t in (plain, watching):
        t.start()
    # The one-sample runs first, beside the plain one: the situation must not change before
    # they end. The daemon, there for the alert check, follows them.
    ctx.exporter.metrics(["--watch", "1", *thresholds])
    ctx.exporter.snapshot(["--watch", "1", *thresholds], "one_sample")
    daemon = ctx.exporter.daemon(config=f'[close_wait]\nstuck_after = "{stuck_after:g}s"\n')
    recorder = alerts.Recorder(daemon).start()
    try:
        plain.join()
        if held:
            held()
        watching.join()
        if until:
            until()
        recorder.wait_scrapes(2)
    finally:
        recorder.stop()
        daemon.stop()
    if len([r for r in ctx.exporter.runs if r["label"] in ("plain", "watch")]) != 2:
        raise ScenarioError("a snapshot run failed (see the log above)")
    watch_rows = next(r for r in ctx.exporter.runs if r["label"] == "watch")["diagnosis"]
    run.alerts = alerts.check(ctx.logdir, recorder.scrapes, watch_rows, stuck_after, late_after)


@scenario(needs=["gunicorn"])
def prefork(ctx):
    """gunicorn, sync workers (pre-fork): 3 workers each stuck in a handler that never
    returns; the 3 clients gave up. Truth: 3 CLOSE_WAIT on 8000, one per worker pid,
    never closed: one verdict for gunicorn, its 3 pids as evidence."""
    run = Run("prefork", ["gunicorn 3 sync workers (PyPI)"])
    serve(ctx, "gunicorn", [executable("gunicorn"), "--chdir", str(HERE), "--workers", "3",
                            "--timeout", "0", "--bind", "127.0.0.1:8000", "apps:wsgi"],
          port=8000, processes=4)
    ports = [ctx.clients.open(8000, http_get("/hang")) for _ in range(3)]
    wait_until(read_by_server(8000, ports, pids_at_least=3), "each worker to take one /hang")
    ctx.clients.close_all()
    wait_until(oldest_at_least(8000, STUCK_AFTER), "3 CLOSE_WAIT older than --stuck-after")
    ctx.setup_done(run)
    g = run.truth["inbound 8000"]
    require(g["close_wait"] == 3 and len(g["held_by"].get("gunicorn", [])) == 3,
            "3 CLOSE_WAIT held by 3 gunicorn pids")
    run.expect = [Expect("inbound", 8000, "gunicorn", "never_closed", close_wait=3, stuck=3,
                         pid_count=3,
                         why="handlers never return; nothing closes; older than --stuck-after")]
    run.metrics = group_series("inbound", 8000, "gunicorn", close_wait=3, unaccepted=0,
                               eof_read=0, stuck=3, stuck_eof_read=0, unread_bytes=0)
    run.metrics.append(series("tcpstate_listen_queue_length", 0, port=8000, process="gunicorn"))
    judge(ctx, run)
    return run


@scenario(needs=["socat"])
def fork_per_connection(ctx):
    """socat fork (one child per connection): each child runs a handler that answers after
    9 s; the clients send a line and give up at once. socat reads the EOF, waits for the
    handler, then closes. Truth: 6 CLOSE_WAIT, EOF read, each closed ~9 s later (under
    --stuck-after): late, not a leak, and never a leak while young."""
    run = Run("fork_per_connection", ["socat fork (Debian)"])
    serve(ctx, "socat", ["socat", "-t", "30", "TCP-LISTEN:9000,fork,reuseaddr,bind=127.0.0.1",
                         "SYSTEM:sleep 9; echo done"], port=9000)
    ports = [ctx.clients.open(9000, b"request\n") for _ in range(6)]
    ctx.clients.close_all()
    wait_until(
        lambda: len([s for s in close_wait(ss(), port=9000, peer_ports=ports) if s.recv_q == 0]) == 6,
        "6 CLOSE_WAIT with the EOF read by the socat children",
    )
    young = time.monotonic()
    ctx.setup_done(run)
    require(run.truth["inbound 9000"]["eof_read"] == 6, "6 CLOSE_WAIT, EOF read")
    run.expect = [Expect("inbound", 9000, "socat", "closed_late", plain="undetermined",
                         one_sample="undetermined", close_wait=6, stuck=0, pid_count=6,
                         closes_in_watch=6,
                         why="EOF read, then closed after the 9 s handler: late, not leaked; "
                             "younger than --stuck-after, nothing can be said before")]
    run.metrics = group_series("inbound", 9000, "socat", close_wait=6, eof_read=6, stuck=0,
                               stuck_eof_read=0, unaccepted=0)

    def still_open():
        # Sockets leave CLOSE_WAIT for good: the 6 there now were there all along.
        n = len(close_wait(ss(), port=9000, peer_ports=ports))
        runs = (f"the plain, one-sample and metrics runs and the daemon's start ended "
                f"{time.monotonic() - young:.1f} s after the CLOSE_WAITs appeared")
        require(n == 6, f"{runs}, and {6 - n} of the 6 had closed: too slow for the "
                        "handlers' 9 s, those runs saw closes, not young CLOSE_WAITs")
        run.notes.append(f"{runs} (the socat handlers close them 9 s after accepting)")

    def closed():
        wait_until(lambda: not close_wait(ss(), port=9000), "the socat children to close")

    # The watch spans the closes: it starts while the sockets are 0.2 s old, ends at ~13 s.
    judge(ctx, run, watch=13, until=closed, held=still_open)
    run.truth_after = truth()
    return run


@scenario(needs=["uvicorn"])
def event_loop(ctx):
    """uvicorn, 2 worker processes (event loops): a handler makes a blocking call inside
    the loop; once both workers are stuck nobody accepts. 5 more clients send a request
    and give up in the accept queue. Truth: 5 unaccepted CLOSE_WAIT (accept backlog,
    counted for the listener's program, the supervisor) plus the 2 the stuck workers hold
    (never closed, one verdict for both)."""
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
    wait_until(oldest_at_least(8002, STUCK_AFTER), "CLOSE_WAIT older than --stuck-after")
    ctx.setup_done(run)
    del queued
    g = run.truth["inbound 8002"]
    require(g["close_wait"] == 7 and g["unaccepted"] == 5, "7 CLOSE_WAIT, 5 unaccepted")
    # The workers are multiprocessing children: their name is the interpreter's.
    workers = [n for n in g["held_by"] if n != "uvicorn"]
    require(len(workers) == 1, f"the two workers share one name: {workers}")
    run.expect = [
        Expect("inbound", 8002, "uvicorn", "accept_backlog", close_wait=5, unaccepted=5,
               stuck=5, pid_count=1,
               why="5 never accepted; they count for the listener's program, the supervisor "
                   "(the workers, which should accept, are stuck)"),
        Expect("inbound", 8002, workers[0], "never_closed", close_wait=2, unaccepted=0,
               stuck=2, pid_count=2,
               why="the stuck workers never close the 2 they hold (one verdict, not one per pid)"),
    ]
    run.metrics = (group_series("inbound", 8002, "uvicorn", close_wait=5, unaccepted=5,
                                stuck=5, unread_bytes=5 * len(http_get("/")))
                   + group_series("inbound", 8002, workers[0], close_wait=2, unaccepted=0,
                                  stuck=2, stuck_eof_read=0)
                   + [series("tcpstate_listen_queue_length", 5, port=8002, process="uvicorn")])
    judge(ctx, run)
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
    require(len(queued) >= 3, f"at least 3 connections queued (got {len(queued)}): the limit bites")
    ctx.clients.close(queued)
    n = len(queued)
    wait_until(lambda: len(close_wait(ss(), port=8082, held=False)) == n,
               f"the {n} queued connections in CLOSE_WAIT")
    wait_until(oldest_at_least(8082, STUCK_AFTER), "CLOSE_WAIT older than --stuck-after")
    ctx.setup_done(run)
    require(run.truth["inbound 8082"]["unaccepted"] == n, f"{n} unaccepted CLOSE_WAIT")
    run.expect = [Expect("inbound", 8082, "nginx", "accept_backlog", close_wait=n,
                         unaccepted=n, stuck=n, pid_count=1,
                         why="the worker, out of descriptors, accepts nothing; the peers left")]
    run.metrics = group_series("inbound", 8082, "nginx", close_wait=n, unaccepted=n, stuck=n,
                               eof_read=0, unread_bytes=n * len(http_get("/")))
    judge(ctx, run)
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
    wait_until(oldest_at_least(8081, STUCK_AFTER), "CLOSE_WAIT older than --stuck-after")
    ctx.setup_done(run)
    require(run.truth["outbound 8081"]["close_wait"] == 4, "4 outbound CLOSE_WAIT")
    run.expect = [Expect("outbound", 8081, "poolclient", "never_closed", close_wait=4, stuck=4,
                         pid_count=1,
                         why="an idle pool never looks at its connections; older than --stuck-after")]
    run.metrics = group_series("outbound", 8081, "poolclient", close_wait=4, eof_read=0,
                               stuck=4, stuck_eof_read=0, unread_bytes=0)
    judge(ctx, run)
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
    leave CLOSE_WAIT after ~2.5 s (late, with --late-after 1s); the 6 hung ones never
    do: they are 18 s old, older than --stuck-after and far above the mean close time.
    Never closed must win, the late closes named beside it."""
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
        hung_now = len(close_wait(ss(), port=8000, peer_ports=hung))
        require(hung_now == 6, f"6 hung CLOSE_WAIT (got {hung_now})")
        run.truth["inbound 8000"]["of which hung"] = hung_now
        run.expect = [Expect("inbound", 8000, "gunicorn", "never_closed", also="closed_late",
                             stuck=6, pid_count=1,
                             why="6 hung for good (18 s, > --stuck-after 10s, > 5x the mean "
                                 "close); the slow ones close late beside them")]
        # The slow ones never reach 10 s: exactly the hung six are stuck.
        run.metrics = group_series("inbound", 8000, "gunicorn", stuck=6, stuck_eof_read=0)
        judge(ctx, run, ["--stuck-after", "10s", "--late-after", "1s"], watch=6)
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
    for port in queued:
        wait_until(oldest_at_least(port, STUCK_AFTER), f"CLOSE_WAIT on {port} older than --stuck-after")
    ctx.setup_done(run)
    for port, n in queued.items():
        require(run.truth[f"inbound {port}"]["unaccepted"] == n, f"{n} unaccepted on {port}")
        run.expect.append(Expect(
            "inbound", port, "sleeper", "accept_backlog", unaccepted=n, close_wait=n, stuck=n,
            pid_count=1,
            why=f"the sockets sit in sleeper's queue (bound {'first' if port == 9100 else 'last'}); "
                "acceptor's is empty"))
        run.metrics += group_series("inbound", port, "sleeper", close_wait=n, unaccepted=n)
        run.metrics += group_series("inbound", port, "acceptor", close_wait=None)
        run.metrics += [series("tcpstate_listen_queue_length", n, port=port, process="sleeper"),
                        series("tcpstate_listen_queue_length", 0, port=port, process="acceptor"),
                        series("tcpstate_listen_queue_max", 16, port=port, process="sleeper")]
    judge(ctx, run, watch=2)
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

    follow_owner_change(ctx, run, sender, 9200, "sender", pass_fd, "receiver")
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

    follow_owner_change(ctx, run, holder, 9300, "holder", exec_sleep, "sleep")
    return run


def follow_owner_change(ctx, run, server, port, before, change, after):
    """The daemon across a change of owner: a client connects to `server` (a handmade
    program) and leaves; once the daemon shows that CLOSE_WAIT owned by `before`,
    `change()` runs; once `ss` shows `after` as its only holder and the daemon has taken
    two more samples, its scrape is the report's."""
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
        run.daemon_scrape = daemon.scrape()
    finally:
        daemon.stop()
    run.metrics = (group_series("inbound", port, after, close_wait=1)
                   + group_series("inbound", port, before, close_wait=None))
    ctx.exporter.runs.append({"label": "metrics", "command": daemon.command,
                              "metrics": metric_lines(run.daemon_scrape)})


@scenario(needs=[])
def many_groups(ctx):
    """50 ports x 30 client processes, each connection closed by the server: 1,500
    outbound CLOSE_WAIT groups, and the daemon told max_groups = 20. Truth: at most 20
    series per metric family and state, and the totals of ss."""
    run = Run("many_groups", ["handmade.py fanout 50 ports x 30 processes"])
    fanout = handmade(ctx, "fanout", "fanout", "10000", "50", "30")
    expect_line(fanout, "ready", timeout=60)
    wait_until(lambda: len(close_wait(ss(), held=True)) == 1500, "1,500 outbound CLOSE_WAIT")
    ctx.setup_done(run)
    daemon = ctx.exporter.daemon(config="[sample]\nmax_groups = 20\n")
    try:
        daemon.wait_samples(2)
        run.daemon_scrape = daemon.scrape()
    finally:
        daemon.stop()
    # 50 listeners of fanout's, and the daemon's own.
    run.metrics = [series("tcpstate_sockets", 1500, state="close_wait"),
                   series("tcpstate_sockets", 51, state="listen")]
    return run


# --- reading the report ------------------------------------------------------------------


def summary(run, exporter_runs):
    """One line per expectation and exporter run: what the exporter said against it."""
    lines = []
    for exp in run.expect:
        for er in exporter_runs:
            if "diagnosis" in er:
                lines.append(f"  [{er['label']}] {judge_rows(exp, er)}")
    values = exposition_values(run, exporter_runs)
    for m in run.metrics:
        got = values.get(series_key(m["name"], m["labels"]))
        ok = got == (None if m["value"] is None else float(m["value"]))
        lines.append(f"  [metrics] {series_key(m['name'], m['labels'])} = {got} "
                     f"{'OK' if ok else 'WRONG, expected ' + str(m['value'])}")
    if run.alerts:
        lines.append(f"  [alerts] expected firing {run.alerts['expected_firing']}: "
                     f"{'OK' if run.alerts['ok'] else 'WRONG'}")
        if not run.alerts["ok"]:
            lines.append("    " + run.alerts["promtool"].replace("\n", "\n    "))
    return lines


def series_key(name, labels):
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def exposition_values(run, exporter_runs):
    """Series key (labels sorted) -> value, from the "metrics" run, or the daemon scrape."""
    lines = []
    for er in exporter_runs:
        if er["label"] == "metrics":
            lines = er["metrics"]
    if run.daemon_scrape:
        lines = run.daemon_scrape.splitlines()
    values = {}
    for text, value in alerts.parse_exposition("\n".join(lines)).items():
        name, _, rest = text.partition("{")
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        values[series_key(name, labels)] = value
    return values


def judge_rows(exp, er):
    rows = [d for d in er["diagnosis"] if d["direction"] == exp.direction
            and d["port"] == str(exp.port) and exp.matches(d["process"])]
    want = exp.cause_of(er["label"])
    if len(rows) != 1:
        return f"{exp.direction} {exp.port} {exp.process}: {len(rows)} rows -> WRONG (want 1, {want})"
    d = rows[0]
    wrong = []
    if d["cause"] != want:
        wrong.append(f"cause {d['cause']} != {want}")
    if er["label"] == "watch" and d.get("also") != exp.also:
        wrong.append(f"also {d.get('also')} != {exp.also}")
    return (f"{exp.direction} {exp.port} {d['process']}: cw {d['close_wait']}, "
            f"stuck {d.get('stuck')}, pids {d.get('pid_count')}, closes {d['closes_seen']} -> "
            f"{'OK' if not wrong else 'WRONG: ' + ', '.join(wrong)}\n      {d['verdict']}")


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
    report["seconds"] = round(time.monotonic() - ctx.started, 1)
    report["summary"] = summary(run, ctx.exporter.runs)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"== {name} (setup {run.setup_seconds} s, total {report['seconds']} s)")
    for line in describe_truth(run.truth):
        print(f"  truth: {line}")
    for exp in run.expect:
        print(f"  expect: {exp.direction} {exp.port} {exp.process} -> {exp.cause} ({exp.why})")
    print("\n".join(report["summary"]))
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
    for tool in ("ip", "ss", "promtool", "jsonnet"):
        if not shutil.which(tool):
            missing.append(f"{tool} (tests/programs/install.sh)")
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


def run_in_namespace(name, exporter, out, log):
    """Starts one scenario in a namespace of its own; returns (netns, process)."""
    netns = f"tcpstate-{name.replace('_', '-')}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, __file__, "inside", name,
         "--netns", netns, "--exporter", str(exporter), "--out", str(out)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return netns, proc


def run_all(names, exporter, out, jobs, timeout):
    """Runs the scenarios, `jobs` at a time, each in its own namespace; prints each one's
    output when it ends. Returns the names that failed."""
    out.mkdir(parents=True, exist_ok=True)
    waiting, running, failed = list(names), {}, []
    started = time.monotonic()
    while waiting or running:
        while waiting and len(running) < jobs:
            name = waiting.pop(0)
            (out / f"{name}.json").unlink(missing_ok=True)
            log = open(out / f"{name}.log", "wb")
            running[name] = (*run_in_namespace(name, exporter, out, log), log, time.monotonic())
        time.sleep(0.2)
        for name, (netns, proc, log, since) in list(running.items()):
            if proc.poll() is None and time.monotonic() - since < timeout:
                continue
            if proc.poll() is None:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
                log.write(f"\nscenario {name} killed after {timeout:.0f} s\n".encode())
            log.close()
            subprocess.run(["ip", "netns", "del", netns])
            del running[name]
            sys.stdout.write((out / f"{name}.log").read_text())
            sys.stdout.flush()
            if proc.returncode != 0:
                failed.append(name)
    print(f"== {len(names)} scenarios in {time.monotonic() - started:.0f} s, {jobs} at a time")
    return failed


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
    p_run.add_argument("--jobs", type=int, default=1)
    p_run.add_argument("--timeout", type=float, default=240)
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
    failed = run_all(names, args.exporter.resolve(), args.out.resolve(), max(1, args.jobs),
                     args.timeout)
    if failed:
        print(f"scenarios that could not be built: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
