#!/usr/bin/env bash
# The main job on the embedded synthetic chest-X-ray world: generate the
# world, ingest both sources (MIMIC-shaped with NER entities, PadChest-shaped
# images only) and write the statistics report. Output: runs/demo/ (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/demo}
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --bins -q
BIN=target/release
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "synthetic world: 300 MIMIC-CXR studies, 300 PadChest images"
rm -rf "$OUT" && mkdir -p "$OUT"
$BIN/synth --out "$OUT/world" --studies 300 --padchest-images 300 --seed 0

step "NER sidecar: the report sections ingest will use, through spaCy"
$BIN/ingest sections --root "$OUT/world/mimic-cxr" --out "$OUT/sections.jsonl"
# The real pipeline is en_core_sci_sm (ScispaCy, not on PyPI); the demo runs
# offline with a blank spaCy pipeline and an entity ruler of the same shape.
.venv/bin/python python/ner_sidecar.py "$OUT/sections.jsonl" "$OUT/ner_sidecar.jsonl" --ruler-patterns builtin

step "ingest mimic"
$BIN/ingest mimic --root "$OUT/world/mimic-cxr" --tokenizer .cache/clip/tokenizer.json \
  --ner "$OUT/ner_sidecar.jsonl" --out "$OUT/shards/mimic"

step "ingest padchest"
$BIN/ingest padchest --images-only --root "$OUT/world/padchest" --out "$OUT/shards/padchest"

step "statistics report"
$BIN/ingest stats --shards "$OUT/shards/mimic" --shards "$OUT/shards/padchest" --out "$OUT/stats"

step "done"
echo "shards:  $OUT/shards/{mimic,padchest}"
echo "report:  $OUT/stats/stats.md"
