#!/usr/bin/env python3
"""Run one command and record its wall time and memory, as JSON.

    measure.py --json OUT.json -- CMD ARGS...

The command runs under `/usr/bin/time -v`, whose "Maximum resident set
size" is the peak of the *largest single process* (the kernel's ru_maxrss
over the waited children). That undercounts a `multiprocessing.Pool`, whose
memory is spread over several processes, so the process tree is also
sampled every 50 ms and the peak of its summed PSS (proportional set size:
pages shared between forked workers counted once in total, not once per
process) is recorded as well. For a single process the two agree to within
the sampling interval. `others_cpu_s` is the CPU time the rest of the
machine used during the run, to flag timings disturbed by other work.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(root: int) -> list[int]:
    """`root` and its descendants, through /proc/PID/task/TID/children (cheap),
    or a scan of every /proc/PID/stat where the kernel lacks that file."""
    out, todo = [], [root]
    scanned = None
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        kids: list[int] = []
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids.extend(int(k) for k in f.read().split())
            except FileNotFoundError:
                scanned = scanned or children_map()
                kids = scanned.get(p, [])
                break
            except OSError:
                pass
        todo.extend(kids)
    return out


def rollup_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) when it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def busy_seconds() -> float:
    """CPU seconds spent busy on the whole machine since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def main() -> int:
    argv = sys.argv[1:]
    if len(argv) < 4 or argv[0] != "--json" or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    cmd = argv[3:]
    time_file = out.with_suffix(".time.txt")
    t0 = time.monotonic()
    busy0 = busy_seconds()
    me = resource.getrusage(resource.RUSAGE_SELF)
    self0 = me.ru_utime + me.ru_stime
    proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(time_file), *cmd])
    peak_pss = peak_rss_sum = 0
    peak_procs = 0
    while proc.poll() is None:
        # Skip /usr/bin/time itself (the root): it is not part of the measured program.
        pids = tree(proc.pid)[1:]
        rs = [rollup_kib(p) for p in pids]
        peak_rss_sum = max(peak_rss_sum, sum(r for r, _ in rs))
        peak_pss = max(peak_pss, sum(p for _, p in rs))
        peak_procs = max(peak_procs, len(pids))
        time.sleep(0.05)
    wall = time.monotonic() - t0
    busy = busy_seconds() - busy0
    me = resource.getrusage(resource.RUSAGE_SELF)
    sampler = me.ru_utime + me.ru_stime - self0
    text = time_file.read_text() if time_file.exists() else ""

    def field(name: str) -> str | None:
        m = re.search(r"^\s*" + re.escape(name) + r": (.*)$", text, re.M)
        return m.group(1).strip() if m else None

    result = {
        "cmd": cmd,
        "rc": proc.returncode,
        "wall_s": round(wall, 3),
        "user_s": float(field("User time (seconds)") or 0),
        "sys_s": float(field("System time (seconds)") or 0),
        "cpu_percent": field("Percent of CPU this job got"),
        "time_max_rss_mib": round(int(field("Maximum resident set size (kbytes)") or 0) / 1024, 1),
        "tree_peak_pss_mib": round(peak_pss / 1024, 1),
        "tree_peak_rss_sum_mib": round(peak_rss_sum / 1024, 1),
        "max_processes": peak_procs,
        # CPU the rest of the machine used meanwhile (other users' builds,
        # this sampler): a timing with much of it is not to be trusted.
        "others_cpu_s": round(max(0.0, busy - sampler - float(field("User time (seconds)") or 0)
                                  - float(field("System time (seconds)") or 0)), 2),
        "sampler_cpu_s": round(sampler, 2),
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
