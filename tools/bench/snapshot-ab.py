#!/usr/bin/env python3
"""Two exporter builds' one-shot `snapshot --watch 1` (one sample, attribution
included, the whole process: start-up, the sample, the table) side by side on the same
held table, with the floor (floor-dump.c) measured between them, so the machine's load
weighs on all three alike. Runs inside tcpstate-bench's --hold:

    sudo target/release/tcpstate-bench --hold 100000 -- \\
        tools/bench/snapshot-ab.py OLD_EXPORTER NEW_EXPORTER [TRIALS]

Each trial runs the floor (median of 5 dumps), then both builds in alternating order;
CPU is user + system from wait4(2). Prints every figure, the medians, each build's
ratio to the floor and NEW's share of OLD.
"""
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def process_cpu_ms(command):
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) not in (0, 3):  # 3: --max-* thresholds crossed
        sys.exit(f"snapshot-ab: {command[0]} exited with status {status}")
    return (usage.ru_utime + usage.ru_stime) * 1e3


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: snapshot-ab.py OLD_EXPORTER NEW_EXPORTER [TRIALS]")
    builds = {"old": sys.argv[1], "new": sys.argv[2]}
    trials = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    with tempfile.TemporaryDirectory() as scratch:
        floor = os.path.join(scratch, "floor-dump")
        subprocess.run(["gcc", "-O2", "-o", floor, os.path.join(HERE, "floor-dump.c")], check=True)
        figures = {"floor": [], "old": [], "new": []}
        for trial in range(trials):
            out = subprocess.run([floor, "5"], capture_output=True, text=True, check=True).stdout
            figures["floor"].append(float(out.split()[-2]))
            order = ("old", "new") if trial % 2 == 0 else ("new", "old")
            for name in order:
                figures[name].append(process_cpu_ms([builds[name], "snapshot", "--watch", "1"]))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, values in figures.items():
        print(f"{name:5} median {medians[name]:6.1f} ms CPU:", " ".join(f"{v:.0f}" for v in values))
    print(
        f"old {medians['old'] / medians['floor']:.2f}x the floor, "
        f"new {medians['new'] / medians['floor']:.2f}x, new/old {medians['new'] / medians['old']:.3f}"
    )


if __name__ == "__main__":
    main()
