#!/usr/bin/env python3
"""Generates the shipped monitoring files from the jsonnet mixin beside this script.

    build.py            rewrite the generated files in the repo
    build.py --check    exit 1, naming them, when the committed files differ from a fresh build

Outputs (see render.jsonnet): deploy/prometheus/tcpstate-alerts.yml,
dashboards/tcpstate-exporter.json and the thresholds table in docs/runbook.md (between
the `<!-- thresholds:begin -->` and `<!-- thresholds:end -->` markers).
Needs the `jsonnet` command (Debian package jsonnet).
"""
import json
import pathlib
import subprocess
import sys

MIXIN = pathlib.Path(__file__).resolve().parent
REPO = MIXIN.parents[2]
BEGIN, END = "<!-- thresholds:begin -->", "<!-- thresholds:end -->"


def render(overrides=None):
    """Path (relative to the repo) -> text, with `overrides` merged into _config."""
    out = subprocess.run(
        ["jsonnet", "-J", str(MIXIN), "--tla-code", "overrides=" + json.dumps(overrides or {}),
         str(MIXIN / "render.jsonnet")],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def with_block(document, block):
    """`document` with the text between the thresholds markers replaced by `block`."""
    head, sep, rest = document.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"docs/runbook.md lacks the {BEGIN} ... {END} markers")
    return head + BEGIN + "\n" + block + END + tail


def expected_files():
    """Path -> the content each generated file must have."""
    files = {}
    for key, text in render().items():
        if "#" in key:
            path = key.split("#", 1)[0]
            text = with_block((REPO / path).read_text(), text)
            files[path] = text
        else:
            files[key] = text
    return files


def main(argv):
    check = "--check" in argv
    stale = []
    for path, text in expected_files().items():
        target = REPO / path
        current = target.read_text() if target.exists() else None
        if current == text:
            continue
        if check:
            stale.append(path)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("stale generated files (run deploy/prometheus/mixin/build.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
