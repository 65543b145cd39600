#!/usr/bin/env bash
# Issue 4: our loader against a PyTorch DataLoader doing the same work
# (reference.py), at equal decode threads / num_workers, plus the floor of
# reading the shard bytes, in one run on the same shards.
# Usage: bash bench/loader/run.sh   (from anywhere)
# Env: BATCHES (timed batches per measurement, default 30), WORKERS (default
# "1 2"; our example always measures 1 and 2 threads), BACKENDS (reference
# image path, default "pil tensor"), STUDIES / PADCHEST (synthetic world size).
set -euo pipefail
cd "$(dirname "$0")/../.."
BATCHES=${BATCHES:-30}
WORKERS=${WORKERS:-"1 2"}
BACKENDS=${BACKENDS:-"pil tensor"}
STUDIES=${STUDIES:-400}
PADCHEST=${PADCHEST:-300}
OUT=bench/loader/last-run.md

bash scripts/setup.sh >/dev/null
source scripts/env.sh
if ! .venv/bin/python -c 'import torchvision' 2>/dev/null; then
  .venv/bin/pip install -q -r bench/loader/requirements.txt
fi
cargo build --release -q -p pipeline --example loader_bench -p synth -p ingest --bins

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TOK=.cache/clip/tokenizer.json
target/release/synth --out "$WORK/world" --studies "$STUDIES" --padchest-images "$PADCHEST" --size 1024 >/dev/null
target/release/ingest mimic --root "$WORK/world/mimic-cxr" --tokenizer $TOK --out "$WORK/mimic" >/dev/null
target/release/ingest padchest --images-only --root "$WORK/world/padchest" --out "$WORK/padchest" >/dev/null

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== ours: target/release/examples/loader_bench $WORK/mimic $WORK/padchest $BATCHES" >&2
target/release/examples/loader_bench "$WORK/mimic" "$WORK/padchest" "$BATCHES" | tee "$WORK/ours.txt" >&2
for b in $BACKENDS; do
  echo "== pytorch ($b): reference.py --batches $BATCHES --workers $WORKERS" >&2
  .venv/bin/python bench/loader/reference.py "$WORK/mimic" "$WORK/padchest" \
    --batches "$BATCHES" --workers $WORKERS --backend "$b" --json "$WORK/ref.jsonl" >&2
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

.venv/bin/python - "$WORK/ours.txt" "$WORK/ref.jsonl" "$BATCHES" "$LOAD_BEFORE" "$LOAD_AFTER" > "$OUT" <<'PY'
import json, os, re, subprocess, sys, datetime
ours_txt, ref_jsonl, batches, load_before, load_after = sys.argv[1:]
ours, floor, evals = {}, None, []
for line in open(ours_txt):
    m = re.match(r"floor: read (\d+) shards, ([\d.]+) MB, (\d+) rows in ([\d.]+) s = (\d+) images/s", line)
    if m:
        floor = m.groups()
    m = re.match(r"eval pass, batch (\d+): (\d+) of (\d+) rows in [\d.]+ s = (\d+) images/s", line)
    if m:
        evals.append(tuple(int(g) for g in m.groups()))
    m = re.match(r"threads (\d+): .* = (\d+) images/s", line)
    if m:
        ours[int(m.group(1))] = float(m.group(2))
ref = [json.loads(l) for l in open(ref_jsonl)]
pt = {}
for r in ref:
    if "workers" in r:
        pt.setdefault(r["what"].removeprefix("pytorch_"), {})[r["workers"]] = r["images_per_s"]
opened = next((r for r in ref if r["what"] == "pyarrow_open"), None)
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `bash bench/loader/run.sh`, "
      f"{os.cpu_count()} cores ({model}), load average before/after {load_before} / {load_after}; "
      f"{batches} timed batches of 64 (48 paired + 16 unpaired) per figure.\n")
print("| what | images/s | ours ÷ this |")
print("| --- | ---: | ---: |")
if floor:
    print(f"| floor: read the {floor[0]} shard files' bytes ({floor[1]} MB, {floor[2]} rows) | {int(floor[4]):,} | |")
if opened:
    print(f"| pyarrow `read_table` of the needed columns (reference's dataset construction, {opened['rows']} rows) | {opened['images_per_s']:,.0f} | |")
threads = sorted(set(ours) | {w for d in pt.values() for w in d})
for t in threads:
    if t in ours:
        print(f"| ours, {t} decode thread{'s' if t > 1 else ''} | {ours[t]:,.0f} | |")
    for backend, d in pt.items():
        if t in d:
            ratio = f"{ours[t] / d[t]:.1f}×" if t in ours else ""
            print(f"| PyTorch DataLoader, num_workers={t}, v2 on {'Pillow images' if backend == 'pil' else 'uint8 tensors'} | {d[t]:,.0f} | {ratio} |")
if evals:
    print("\nEvaluation pass over the paired rows (resize + centre crop, 2 decode threads):\n")
    print("| batch | rows seen | images/s | ÷ batch 1 |")
    print("| --- | ---: | ---: | ---: |")
    base = next((e[3] for e in evals if e[0] == 1), None)
    for b, n, total, ips in evals:
        what = "1 row (evaluation before the short last batch)" if b == 1 else f"{b} rows, short last batch kept"
        ratio = f"{ips / base:.2f}×" if base else ""
        print(f"| {what} | {n} of {total} | {ips:,} | {ratio} |")
PY
cat "$OUT"
