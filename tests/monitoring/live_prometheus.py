#!/usr/bin/env python3
"""Runs the shipped monitoring against a real Prometheus (Debian package `prometheus`):
starts it on loopback with a short scrape interval and the alert rules rendered with short
`for:` windows (override_rules.py), lets it scrape a target, then checks through its HTTP
API that the target is up, every rule loaded healthy, every dashboard query returns data
(dashboard_queries.py) and the expected alerts reach the firing state.

    live_prometheus.py [--target HOST:PORT ...] [--scrape-interval 1s] [--for 1s]
                       [--set KEY.PATH=VALUE ...] [--expect-firing NAME ...]
                       [--allow-empty METRIC ...] [--timeout 60]
                       [--dashboard FILE] [--then SHELL_COMMAND ...]

Without --target it serves tests/monitoring/fixtures/exposition.prom on a free loopback
port (the metric contract, for checking the monitoring before the exporter runs). With
--target HOST:PORT it scrapes that exporter's /metrics (several --target: every one, as
one job: a fleet). The job is "tcpstate-exporter",
as the shipped rules select. Each --then command runs last, with PROM_URL set to the
running Prometheus (for value checks of an end-to-end test). Everything it starts is
stopped on exit; it leaves nothing behind but what it prints. Exit status 1 names what
failed.
"""
import argparse
import http.server
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIXTURE = HERE / "fixtures" / "exposition.prom"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_fixture():
    """Serves the fixture exposition at /metrics; returns (server, "host:port")."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = FIXTURE.read_text().replace("@NOW@", str(int(time.time()))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


def get(url, path, **params):
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as resp:
        return json.load(resp)["data"]


def wait(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.5)
    print(f"timed out waiting for {what}")
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append")
    ap.add_argument("--scrape-interval", default="1s")
    ap.add_argument("--for", dest="for_duration", default="1s")
    ap.add_argument("--set", dest="settings", action="append", default=[])
    ap.add_argument("--expect-firing", action="append", default=[])
    ap.add_argument("--allow-empty", action="append", default=None)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--dashboard", default=str(REPO / "dashboards" / "tcpstate-exporter.json"))
    ap.add_argument("--then", dest="then", action="append", default=[], metavar="SHELL_COMMAND",
                    help="bash command run after the checks, with PROM_URL set; non-zero exit is a failure")
    args = ap.parse_args()
    if not shutil.which("prometheus"):
        sys.exit("prometheus not installed (Debian package prometheus)")

    failures = []
    server = None
    targets = args.target or []
    if not targets:
        server, fixture = serve_fixture()
        targets = [fixture]
    target = ", ".join(targets)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tcpstate-prom-"))
    prom = None
    try:
        override = [sys.executable, str(HERE / "override_rules.py"), str(tmp / "rules.yml"),
                    "--for", args.for_duration]
        for s in args.settings:
            override += ["--set", s]
        subprocess.run(override, check=True, stdout=subprocess.DEVNULL)
        (tmp / "prometheus.yml").write_text(
            "global:\n"
            f"  scrape_interval: {args.scrape_interval}\n"
            f"  evaluation_interval: {args.scrape_interval}\n"
            "rule_files: [rules.yml]\n"
            "scrape_configs:\n"
            "  - job_name: tcpstate-exporter\n"
            f"    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(tmp / "prometheus.log", "w")
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        print(f"prometheus pid {prom.pid} at {url} scraping {target}")

        def up():
            result = get(url, "/api/v1/query", query='up{job="tcpstate-exporter"}')["result"]
            return len(result) == len(targets) and all(r["value"][1] == "1" for r in result)

        if not wait("Prometheus ready and every target up", up, args.timeout):
            failures.append("targets up")
        else:
            print(f"ok: {len(targets)} target(s) up")
        # Rates and the heatmap need a few scrapes in their window.
        def scraped_4_times():
            query = 'count_over_time(up{job="tcpstate-exporter"}[1m]) >= 4'
            return bool(get(url, "/api/v1/query", query=query)["result"])

        if not wait("4 scrapes", scraped_4_times, args.timeout):
            failures.append("4 scrapes")

        groups = get(url, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        bad = [r["name"] for r in rules if r.get("health") != "ok"]
        if not rules or bad:
            failures.append("rules healthy")
            print(f"FAIL: rules loaded: {len(rules)}, unhealthy: {bad}")
        else:
            print(f"ok: {len(rules)} rules loaded, all healthy")

        queries = [sys.executable, str(HERE / "dashboard_queries.py"), url,
                   "--dashboard", args.dashboard,
                   "--range", "1m", "--step", args.scrape_interval, "--rate-interval", "20s"]
        for metric in args.allow_empty or []:
            queries += ["--allow-empty", metric]
        if subprocess.run(queries).returncode != 0:
            failures.append("dashboard queries")

        for name in args.expect_firing:
            def firing(name=name):
                alerts = get(url, "/api/v1/alerts")["alerts"]
                return any(a["labels"].get("alertname") == name and a["state"] == "firing" for a in alerts)
            if wait(f"{name} firing", firing, args.timeout):
                print(f"ok: {name} firing")
            else:
                failures.append(f"{name} firing")

        for command in args.then:
            env = dict(os.environ, PROM_URL=url)
            if subprocess.run(["bash", "-c", command], env=env).returncode != 0:
                failures.append(f"--then {command}")
    finally:
        if prom:
            prom.terminate()
            try:
                prom.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
        if server:
            server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("failed: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
