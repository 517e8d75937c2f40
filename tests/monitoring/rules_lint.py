#!/usr/bin/env python3
"""Conventions and coverage of the shipped alert rules, beyond what promtool checks.

    rules_lint.py RULES_FILE TESTS_FILE RUNBOOK

Checks, printing one line per failure and exiting 1 on any:
- monitoring-mixin conventions: CamelCase names with the TcpState prefix, a `severity`
  label of critical/warning/info and no other label, summary/description/runbook_url;
- every runbook_url points at a heading of the runbook (GitHub's anchor for it);
- every alert has a promtool test where it fires and one where it does not.
"""
import re
import sys

import yaml

SEVERITIES = {"critical", "warning", "info"}
URL_BASE = "https://github.com/tcpstate-exporter/tcpstate-exporter/blob/main/docs/runbook.md#"


def github_anchor(heading):
    """The id GitHub gives a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def alerts(rules_file):
    with open(rules_file) as f:
        doc = yaml.safe_load(f)
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def lint(rules_file, tests_file, runbook):
    errors = []
    with open(runbook) as f:
        anchors = {github_anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", f.read(), re.M)}
    with open(tests_file) as f:
        tests = yaml.safe_load(f)["tests"]
    fired, quiet = set(), set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])

    rules = alerts(rules_file)
    if not rules:
        errors.append(f"{rules_file}: no alerts")
    for rule in rules:
        name = rule["alert"]
        if not re.fullmatch(r"TcpState(?:[A-Z][a-z0-9]+)+", name):
            errors.append(f"{name}: not CamelCase with the TcpState prefix")
        labels = rule.get("labels", {})
        if set(labels) != {"severity"} or labels["severity"] not in SEVERITIES:
            errors.append(f"{name}: labels {labels}: want only severity in {sorted(SEVERITIES)}")
        ann = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                errors.append(f"{name}: no {key} annotation")
        url = ann.get("runbook_url", "")
        if not url.startswith(URL_BASE):
            errors.append(f"{name}: runbook_url {url!r} does not start with {URL_BASE}")
        elif url[len(URL_BASE):] not in anchors:
            errors.append(f"{name}: runbook has no heading for anchor #{url[len(URL_BASE):]}")
        if name not in fired:
            errors.append(f"{name}: no promtool test where it fires")
        if name not in quiet:
            errors.append(f"{name}: no promtool test where it stays quiet")
    return errors


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    problems = lint(*sys.argv[1:])
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)
