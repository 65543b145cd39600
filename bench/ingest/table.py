#!/usr/bin/env python3
"""Turn the measurements of one `run.sh` into the Markdown it prints.

    table.py RUN_DIR > last-run.md

RUN_DIR holds `meta.json` (machine and world), one `NAME.json` per timed run
(from `measure.py`) with its output folder `NAME.out/`, and `parity-*.json`
(from `compare.py`), and with PROFILE=1 `phases-*.json` and
`perf-*.txt`. Run names are `{ours|ref}-{dicom|jpg}-c{cores}[-{N|2N}]`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pyarrow.parquet as pq


def rows_written(out: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("shard-*.parquet"))


def main() -> int:
    run = Path(sys.argv[1])
    meta = json.loads((run / "meta.json").read_text())
    runs = {}
    for p in sorted(run.glob("*.json")):
        if p.name == "meta.json" or p.name.startswith(("parity-", "phases-")):
            continue
        r = json.loads(p.read_text())
        r["rows"] = rows_written(run / (p.stem + ".out"))
        runs[p.stem] = r

    def ips(r: dict) -> float:
        return r["rows"] / r["wall_s"] if r["wall_s"] else 0.0

    def cpu_ms(r: dict) -> float:
        return (r["user_s"] + r["sys_s"]) / max(r["rows"], 1) * 1000

    def walls(r: dict) -> str:
        a = r.get("all_walls_s", [r["wall_s"]])
        return f"{r['wall_s']:.1f}" + (f" ({min(a):.1f}–{max(a):.1f})" if len(a) > 1 else "")

    out = []
    w = out.append
    w(f"Run of {meta['date']} on {meta['machine']}; commit {meta['commit']}.")
    w("")
    w(f"World: `{meta['synth']}` ({meta['world']}); timed runs use the N-image half, "
      f"{meta['half']}. Command: `{meta['command']}`.")
    w("")
    w(f"Each timed figure is the fastest of {meta.get('repeat', 1)} interleaved rounds "
      "(wall column: fastest, then the range over all rounds). CPU ms/image is user + system "
      "time of all the run's processes over the images written: unlike wall time it does not "
      "depend on what else the machine ran (the others' CPU s column).")
    w("")
    w("| pipeline | input | cores | images | wall s | images/s | peak RSS MiB (largest process) "
      "| peak PSS MiB (all processes) | CPU | CPU ms/image | others' CPU s | ours / reference: images/s (CPU ms/image) |")
    w("| --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |")
    for fmt in ("dicom", "jpg"):
        for cores in meta["cores"]:
            for who in ("ours", "ref"):
                name = f"{who}-{fmt}-c{cores}"
                r = runs.get(name)
                if r is None:
                    continue
                other = runs.get(f"ref-{fmt}-c{cores}")
                ratio = ""
                if who == "ours" and other and ips(other):
                    ratio = f"**{ips(r) / ips(other):.2f}×** ({cpu_ms(other) / cpu_ms(r):.2f}×)"
                label = "`ingest mimic`" if who == "ours" else "Python reference"
                failed = "" if r["rc"] == 0 else f" (exit {r['rc']})"
                w(f"| {label}{failed} | {fmt.upper()} | {cores} | {r['rows']} | {walls(r)} | {ips(r):.2f} "
                  f"| {r['time_max_rss_mib']:.0f} | {r['tree_peak_pss_mib']:.0f} | {r['cpu_percent']} | {cpu_ms(r):.0f} "
                  f"| {r.get('others_cpu_s', '')} | {ratio} |")
    flat = [(k, runs[k]) for k in sorted(runs, key=lambda k: (k.endswith("-2N"), k))
            if k.endswith("-N") or k.endswith("-2N")]
    if flat:
        w("")
        w("Peak memory against dataset size (`ingest mimic`, same settings, N and 2N images):")
        w("")
        w("| input | cores | images | wall s | images/s | peak RSS MiB | peak PSS MiB |")
        w("| --- | --: | --: | --: | --: | --: | --: |")
        for k, r in flat:
            _, fmt, c, _ = k.split("-")
            w(f"| {fmt.upper()} | {c[1:]} | {r['rows']} | {walls(r)} | {ips(r):.2f} "
              f"| {r['time_max_rss_mib']:.0f} | {r['tree_peak_pss_mib']:.0f} |")
    parity = sorted(run.glob("parity-*.json"))
    if parity:
        w("")
        w("Same work on both sides (rows joined on image_id; `compare.py`):")
        w("")
        w("| input | rows ours / ref / common | text equal | token ids equal | labels equal "
          "| stored size equal | mean abs pixel diff (0–255) |")
        w("| --- | --- | --: | --: | --: | --: | --: |")
        for p in parity:
            q = json.loads(p.read_text())
            w(f"| {p.stem.split('-', 1)[1].upper()} | {q['rows_ours']} / {q['rows_reference']} / {q['rows_common']} "
              f"| {q['text_equal']:.1%} | {q['token_ids_equal']:.1%} | {q['labels_equal']:.1%} "
              f"| {q['size_equal']:.1%} | {q['pixel_mean_abs_diff']} |")
    phases = sorted(run.glob("phases-*.json"))
    if phases:
        w("")
        w("Where the reference's time goes (`phases.py`: its steps in sequence, one core, "
          "mean ms per image):")
        w("")
        for p in phases:
            try:
                q = json.loads(p.read_text())
            except ValueError:
                continue
            steps = ", ".join(f"{k} {v}" for k, v in q.items() if k not in ("images", "total ms/image"))
            w(f"- {p.stem.split('-', 1)[1].upper()} ({q.get('images')} images): "
              f"**{q.get('total ms/image')} ms/image** = {steps}.")
    perf = sorted(run.glob("perf-*.txt"))
    if perf:
        w("")
        w("Where `ingest mimic`'s time goes (`perf record`, one thread, self time by library and "
          "symbol, entries of 1.5 % and more):")
        for p in perf:
            w("")
            w(f"{p.stem.split('-', 1)[1].upper()}:")
            w("")
            w("```text")
            lines = [re.sub(r"(\s+-)+\s*$", "", re.sub(r"  +", "  ", ln.strip()))
                     for ln in p.read_text().splitlines() if ln.strip()][:15]
            w("\n".join(lines))
            w("```")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
