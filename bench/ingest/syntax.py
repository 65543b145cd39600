#!/usr/bin/env python3
"""CPU time per image of `ingest mimic` and of the reference, per DICOM
transfer syntax, one core each.

    syntax.py --root MIMIC_CXR_ROOT --work DIR --tokenizer TOKENIZER_JSON \\
        --ingest NAME=BINARY [--ingest NAME=BINARY ...] [--repeat 2]

Splits the root with `by_syntax.py` (under DIR/by-syntax), then runs each
`ingest` binary (`--threads 1`) and `reference.py` (`--workers 1`) on every
syntax's root and on its one-image root, pinned to core 0. A syntax's
figure is (CPU(all) - CPU(first image)) / (n - 1) in ms, user + system time
of the process tree, the least over `--repeat` rounds: the per-image cost
without start-up, tokenizer loading or the reference's worker pool. Prints
a Markdown table (one column per binary, then the reference and the ratio
of the first binary to it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = {
    "1.2.840.10008.1.2": "implicit VR little endian",
    "1.2.840.10008.1.2.1": "explicit VR little endian",
    "1.2.840.10008.1.2.1.99": "deflated explicit VR little endian",
    "1.2.840.10008.1.2.2": "explicit VR big endian",
    "1.2.840.10008.1.2.4.50": "JPEG baseline (8-bit)",
    "1.2.840.10008.1.2.4.51": "JPEG extended (12-bit)",
    "1.2.840.10008.1.2.4.70": "JPEG lossless",
    "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE lossless",
}


def cpu_seconds(cmd: list[str], out: Path) -> float:
    """User + system seconds of `cmd` and its reaped children, pinned to core 0."""
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    shutil.rmtree(out, ignore_errors=True)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--ingest", action="append", required=True, help="NAME=BINARY")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    split = a.work / "by-syntax"
    listing = subprocess.run([sys.executable, str(HERE / "by_syntax.py"), str(a.root), str(split)],
                             check=True, capture_output=True, text=True).stdout
    counts = {uid: int(n) for uid, n in (line.split() for line in listing.splitlines())}
    bins = dict(spec.split("=", 1) for spec in a.ingest)
    out = a.work / "syntax-out"

    def command(tool: str, root: Path) -> list[str]:
        if tool == "reference":
            return [sys.executable, str(HERE / "reference.py"), "--root", str(root), "--out", str(out),
                    "--format", "dicom", "--workers", "1", "--tokenizer", a.tokenizer]
        return [bins[tool], "--threads", "1", "mimic", "--root", str(root), "--out", str(out),
                "--tokenizer", a.tokenizer]

    tools = [*bins, "reference"]
    per_image: dict[tuple[str, str], float] = {}
    for uid, n in sorted(counts.items()):
        if n < 2:
            continue
        for tool in tools:
            best = min(
                cpu_seconds(command(tool, split / uid), out) - cpu_seconds(command(tool, split / f"{uid}.first"), out)
                for _ in range(a.repeat)
            )
            per_image[(uid, tool)] = 1000 * best / (n - 1)
            print(f"{uid} {tool}: {per_image[(uid, tool)]:.1f} ms/image", file=sys.stderr)

    first = tools[0]
    print(f"| transfer syntax | images | {' | '.join(f'`{t}` CPU ms/image' for t in bins)} "
          f"| reference CPU ms/image | `{first}` / reference |")
    print("| --- | --: |" + " --: |" * len(bins) + " --: | --: |")
    total = {t: 0.0 for t in tools}
    for uid, n in sorted(counts.items()):
        if (uid, first) not in per_image:
            continue
        cells = [f"{per_image[(uid, t)]:.1f}" for t in tools]
        ratio = per_image[(uid, "reference")] / per_image[(uid, first)]
        print(f"| {NAMES.get(uid, uid)} (`{uid}`) | {n} | {' | '.join(cells)} | {ratio:.2f}× |")
        for t in tools:
            total[t] += n * per_image[(uid, t)]
    n_all = sum(n for uid, n in counts.items() if (uid, first) in per_image)
    cells = [f"{total[t] / n_all:.1f}" for t in tools]
    print(f"| all (weighted by images) | {n_all} | {' | '.join(cells)} | "
          f"{total['reference'] / total[first]:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
