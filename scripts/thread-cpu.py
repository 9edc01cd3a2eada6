#!/usr/bin/env python3
"""Where each thread of a process spends its time: on a core, waiting for one,
or blocked (sleeping, waiting for I/O or a lock), from the kernel's
/proc/<pid>/task/<tid>/schedstat (run time, run-queue wait, time slices).

Samples every 250 ms the processes whose command line matches PATTERN (as
`pgrep -f`), counts only the intervals in which a process used more than half a
core (a drain, not its start-up), and prints one line per thread when every
matched process has been gone for --quiet seconds (default 10: the bench
starts bouncer a few seconds after the baseline exits) or after --seconds.

usage: scripts/thread-cpu.py PATTERN [--seconds N] [--quiet N]
e.g.   scripts/thread-cpu.py 'release/bouncer run' &   # then run a drain:
       scripts/bench-e2e.sh --keep-broker --modes alo --latency-secs 0 \\
           --reload-swaps 0 --memory-events 0 --events 1000000
"""

import argparse
import os
import subprocess
import time


def matching(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    mine = {str(os.getpid()), str(os.getppid())}
    return [p for p in out.split() if p not in mine]


def threads(pid):
    """{tid: (name, ns on a core, ns waiting for a core, slices)}, or None if gone."""
    found = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run, wait, slices = map(int, f.read().split())
        except (OSError, ValueError):
            continue
        found[tid] = (name, run, wait, slices)
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pattern")
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--quiet", type=float, default=10)
    args = ap.parse_args()
    previous = {}  # pid -> (time, threads)
    totals = {}  # (pid, tid) -> [name, run, wait, wall, slices]
    last_seen = None
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        pids = matching(args.pattern)
        now = time.monotonic()
        if pids:
            last_seen = now
        elif last_seen is not None and now - last_seen > args.quiet:
            break
        for pid in pids:
            current = threads(pid)
            if current is None:
                continue
            if pid in previous:
                then, before = previous[pid]
                wall = (now - then) * 1e9
                used = sum(current[t][1] - before[t][1] for t in current if t in before)
                if used > 0.5 * wall:
                    for t, (name, run, wait, slices) in current.items():
                        if t in before:
                            acc = totals.setdefault((pid, t), [name, 0, 0, 0, 0])
                            acc[1] += run - before[t][1]
                            acc[2] += wait - before[t][2]
                            acc[3] += wall
                            acc[4] += slices - before[t][3]
            previous[pid] = (now, current)
        time.sleep(0.25)
    print(f"{'pid':>7} {'tid':>7} {'thread':16} {'on a core':>10} {'waiting':>8} {'blocked':>8} {'slices/s':>9}")
    for (pid, tid), (name, run, wait, wall, slices) in sorted(totals.items()):
        if wall == 0 or run < 0.001 * wall:
            continue
        print(
            f"{pid:>7} {tid:>7} {name:16} {100 * run / wall:9.1f}% {100 * wait / wall:7.1f}%"
            f" {100 - 100 * (run + wait) / wall:7.1f}% {1e9 * slices / wall:9.0f}"
        )


if __name__ == "__main__":
    main()
