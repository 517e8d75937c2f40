#!/usr/bin/env python3
"""Proves the promtool tests bite: for each alert, two broken copies of the rules file must
each make `promtool test rules` fail.

    rules_mutants.py RULES_FILE TESTS_FILE

- "silent": the alert's expr never yields anything; its firing expectations must fail.
- "noisy": the alert's expr yields every input series; the tests must notice the extra alerts.
Prints one line per mutant (`ok` when the tests caught it) and exits 1 if any survived.
Works on copies in a temporary directory; the shipped files are never touched.
"""
import pathlib
import shutil
import subprocess
import sys
import tempfile

import yaml

MUTANTS = {"silent": "vector(1) == 0", "noisy": '{__name__=~".+"}'}


def run(rules_file, tests_file):
    rules_file, tests_file = pathlib.Path(rules_file), pathlib.Path(tests_file)
    doc = yaml.safe_load(rules_file.read_text())
    names = [r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r]
    survivors = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        shutil.copy(tests_file, tmp / tests_file.name)
        for name in names:
            for kind, expr in MUTANTS.items():
                mutant = yaml.safe_load(rules_file.read_text())
                for group in mutant["groups"]:
                    for rule in group["rules"]:
                        if rule.get("alert") == name:
                            rule["expr"] = expr
                (tmp / rules_file.name).write_text(yaml.safe_dump(mutant, sort_keys=False))
                result = subprocess.run(
                    ["promtool", "test", "rules", tests_file.name],
                    cwd=tmp, capture_output=True, text=True,
                )
                caught = result.returncode != 0
                survivors += not caught
                print(f"{'ok' if caught else 'SURVIVED'}: {name} {kind}")
    return survivors


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(1 if run(*sys.argv[1:]) else 0)
