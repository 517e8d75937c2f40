#!/usr/bin/env python3
"""Structural checks of the Grafana dashboard and its provisioning files (Grafana itself
cannot be installed here; dashboard_queries.py proves the queries against Prometheus).

    dashboard_lint.py DASHBOARD_JSON PROVISIONING_DIR

Prints one line per failure and exits 1 on any.
"""
import json
import pathlib
import re
import sys

import yaml

DS = "${datasource}"
VARIABLES = {"job", "instance", "netns", "port", "process"}
BUILTINS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
# What the dashboard must show (issue 5): each metric is queried by some panel.
REQUIRED_METRICS = [
    "tcpstate_sockets", "tcpstate_connections", "tcpstate_close_wait_oldest_seconds",
    "tcpstate_close_wait_duration_seconds_bucket", "tcpstate_recv_queue_bytes",
    "tcpstate_unread_connections", "tcpstate_listen_queue_length", "tcpstate_listen_queue_max",
    "tcpstate_sample_duration_seconds", "tcpstate_sample_errors_total",
    "tcpstate_last_sample_timestamp_seconds", "up",
]


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def lint_dashboard(dash):
    errors = []
    if dash.get("schemaVersion", 0) < 39:
        errors.append(f"schemaVersion {dash.get('schemaVersion')} < 39")
    for key in ("uid", "title"):
        if not dash.get(key):
            errors.append(f"dashboard has no {key}")

    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds_var = variables.get("datasource", {})
    if ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        errors.append("no `datasource` variable of type datasource for prometheus")
    for name in sorted(VARIABLES):
        var = variables.get(name)
        if var is None:
            errors.append(f"no `{name}` variable")
            continue
        if var.get("datasource", {}).get("uid") != DS:
            errors.append(f"variable {name}: datasource is not {DS}")
        if not var.get("includeAll") or var.get("allValue") != ".*":
            errors.append(f"variable {name}: needs includeAll with allValue .*")
        if not re.fullmatch(r"label_values\(.+, *\w+\)", var.get("definition", "")):
            errors.append(f"variable {name}: definition is not label_values(...): {var.get('definition')!r}")

    ids, exprs, grid = set(), [], []
    panels = list(all_panels(dash.get("panels", [])))
    for p in panels:
        title = p.get("title", "?")
        if p.get("id") in ids or not isinstance(p.get("id"), int):
            errors.append(f"panel {title!r}: id {p.get('id')!r} missing or duplicate")
        ids.add(p.get("id"))
        pos = p.get("gridPos", {})
        if not all(isinstance(pos.get(k), int) for k in "hwxy") or pos["x"] + pos["w"] > 24:
            errors.append(f"panel {title!r}: bad gridPos {pos}")
        else:
            grid.append((title, pos))
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != DS:
            errors.append(f"panel {title!r}: datasource is not {DS}")
        targets = p.get("targets", [])
        if not targets:
            errors.append(f"panel {title!r}: no targets")
        refids = [t.get("refId") for t in targets]
        if len(set(refids)) != len(refids) or None in refids:
            errors.append(f"panel {title!r}: refIds missing or repeated: {refids}")
        for t in targets:
            if t.get("datasource", {}).get("uid") != DS:
                errors.append(f"panel {title!r} target {t.get('refId')}: datasource is not {DS}")
            expr = t.get("expr", "").strip()
            if not expr:
                errors.append(f"panel {title!r} target {t.get('refId')}: empty expr")
            exprs.append(expr)
            for var in re.findall(r"\$\{?(\w+)", expr):
                if var not in variables and var not in BUILTINS:
                    errors.append(f"panel {title!r}: unknown variable ${var}")
    # No two panels may cover the same grid cell (collapsed rows keep their panels apart).
    cells = {}
    for title, pos in grid:
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                if (x, y) in cells:
                    errors.append(f"panels {cells[(x, y)]!r} and {title!r} overlap at {(x, y)}")
                    break
                cells[(x, y)] = title
            else:
                continue
            break

    joined = "\n".join(exprs)
    for metric in REQUIRED_METRICS:
        if not re.search(r"\b%s\b" % re.escape(metric), joined):
            errors.append(f"no panel queries {metric}")
    if not any(p.get("type") == "heatmap" for p in panels):
        errors.append("no heatmap panel (CLOSE_WAIT durations)")
    if not any(p.get("type") == "row" and p.get("title") == "Diagnosis" for p in panels):
        errors.append("no Diagnosis row")
    return errors


def lint_provisioning(directory):
    errors = []
    directory = pathlib.Path(directory)
    providers = yaml.safe_load((directory / "dashboards" / "tcpstate-exporter.yml").read_text())
    if providers.get("apiVersion") != 1 or not providers.get("providers"):
        errors.append("dashboards provisioning: apiVersion 1 with providers expected")
    for prov in providers.get("providers", []):
        if prov.get("type") != "file" or not prov.get("options", {}).get("path"):
            errors.append(f"dashboards provider {prov.get('name')}: type file with options.path expected")
    sources = yaml.safe_load((directory / "datasources" / "prometheus.yml").read_text())
    if sources.get("apiVersion") != 1:
        errors.append("datasources provisioning: apiVersion 1 expected")
    proms = [d for d in sources.get("datasources", []) if d.get("type") == "prometheus"]
    if not proms or not all(d.get("url") and d.get("name") for d in proms):
        errors.append("datasources provisioning: a prometheus datasource with name and url expected")
    return errors


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        problems = lint_dashboard(json.load(f)) + lint_provisioning(sys.argv[2])
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)
