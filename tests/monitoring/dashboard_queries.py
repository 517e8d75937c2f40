#!/usr/bin/env python3
"""Runs every query of the Grafana dashboard against a real Prometheus, as Grafana would
with every variable on "All", and fails if Prometheus rejects a query or it returns no data.

    dashboard_queries.py PROMETHEUS_URL [--dashboard FILE] [--range 10m] [--step 15s]
                         [--rate-interval 1m] [--var NAME=VALUE ...]
                         [--allow-empty METRIC ...] [--syntax-only]

- Panel queries run as range queries over the last --range; a query passes with at least
  one series. Template variables become `.*` (Grafana's "All" here), or --var values;
  $__rate_interval, $__interval and $__range become the given durations.
- Variable queries label_values(SELECTOR, LABEL) run as Prometheus does them for Grafana
  (/api/v1/label/LABEL/values?match[]=SELECTOR); each must list at least one value, except
  `netns`, which exists only when the exporter samples more than its own namespace.
- A query may be empty only when every tcpstate metric it reads was given --allow-empty
  (default: tcpstate_close_wait_entered_total, which only the eBPF events mode exports).
- --syntax-only: only rejection fails (for a Prometheus that scraped nothing).
Prints one line per query and a summary; exits 1 when any query failed, naming them.
"""
import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_ALLOW_EMPTY = ["tcpstate_close_wait_entered_total"]
OPTIONAL_VARIABLES = {"netns"}


def seconds(duration):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", duration)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {duration!r}")
    return int(m.group(1)) * units[m.group(2)]


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def substitute(expr, variables, builtins):
    """Grafana's interpolation: $name, ${name} and ${name:format} (format ignored)."""
    def value(m):
        name = m.group(1) or m.group(2)
        if name in builtins:
            return builtins[name]
        if name in variables:
            return variables[name]
        raise KeyError(f"unknown variable ${name}")
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def api(base, path, params, post=True):
    """Calls the Prometheus HTTP API (queries by POST, as long as Grafana's can be; label
    values by GET, the only method Prometheus 2.42 has for them): (ok, data or error)."""
    encoded = urllib.parse.urlencode(params, doseq=True)
    if post:
        req = urllib.request.Request(base.rstrip("/") + path, data=encoded.encode(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    else:
        req = urllib.request.Request(base.rstrip("/") + path + "?" + encoded)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = json.load(resp)
    except urllib.error.HTTPError as err:
        try:
            payload = json.load(err)
        except ValueError:
            return False, f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return False, f"cannot reach Prometheus: {err}"
    if payload.get("status") != "success":
        return False, f"{payload.get('errorType')}: {payload.get('error')}"
    return True, payload["data"]


def metrics_in(expr):
    return set(re.findall(r"\b(tcpstate_[\w:]+|process_\w+|up)\b(?=\s*[{\[)])", expr))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--dashboard", default="dashboards/tcpstate-exporter.json")
    ap.add_argument("--range", default="10m", type=str)
    ap.add_argument("--step", default="15s")
    ap.add_argument("--rate-interval", default="1m")
    ap.add_argument("--var", action="append", default=[], help="NAME=VALUE (regex) for a template variable")
    ap.add_argument("--allow-empty", action="append", default=None, metavar="METRIC")
    ap.add_argument("--syntax-only", action="store_true")
    args = ap.parse_args()
    allow_empty = set(DEFAULT_ALLOW_EMPTY if args.allow_empty is None else args.allow_empty)

    with open(args.dashboard) as f:
        dash = json.load(f)
    templating = [v for v in dash.get("templating", {}).get("list", []) if v.get("type") == "query"]
    variables = {v["name"]: ".*" for v in templating}
    variables["datasource"] = ""
    for setting in args.var:
        name, _, value = setting.partition("=")
        variables[name] = value
    rng = seconds(args.range)
    builtins = {"__rate_interval": args.rate_interval, "__interval": args.step,
                "__range": args.range, "__range_s": str(rng), "__interval_ms": str(seconds(args.step) * 1000)}
    end = time.time()
    failures, passed = [], 0

    def report(ok, what, detail):
        nonlocal passed
        print(f"{'ok' if ok else 'FAIL'}: {what}: {detail}")
        if ok:
            passed += 1
        else:
            failures.append(what)

    for var in templating:
        definition = var.get("definition", "")
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
        what = f"variable {var['name']}"
        if not m:
            report(False, what, f"not label_values(...): {definition!r}")
            continue
        selector, label = substitute(m.group(1), variables, builtins), m.group(2)
        ok, data = api(args.url, f"/api/v1/label/{label}/values",
                       {"match[]": selector, "start": end - rng, "end": end}, post=False)
        if not ok:
            report(False, what, data)
        elif not data and not args.syntax_only and var["name"] not in OPTIONAL_VARIABLES:
            report(False, what, f"no values for {label} in {selector}")
        else:
            report(True, what, f"{len(data)} values")

    for panel in all_panels(dash.get("panels", [])):
        for target in panel.get("targets", []):
            what = f"panel {panel.get('title')!r} {target.get('refId')}"
            try:
                expr = substitute(target["expr"], variables, builtins)
            except KeyError as err:
                report(False, what, str(err))
                continue
            ok, data = api(args.url, "/api/v1/query_range",
                           {"query": expr, "start": end - rng, "end": end, "step": args.step})
            if not ok:
                report(False, what, f"rejected: {data} | {expr}")
                continue
            series = len(data.get("result", []))
            if series or args.syntax_only:
                report(True, what, f"{series} series")
            elif metrics_in(expr) and metrics_in(expr) <= allow_empty:
                report(True, what, "no data (allowed: " + ", ".join(sorted(metrics_in(expr))) + ")")
            else:
                report(False, what, f"no data | {expr}")

    print(f"{passed} queries passed, {len(failures)} failed")
    if failures:
        print("failed: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
