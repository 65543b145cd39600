#!/usr/bin/env bash
# The main job on the embedded synthetic chest-X-ray world: generate the
# world, ingest both sources (MIMIC-shaped with NER entities, PadChest-shaped
# images only), write the statistics report, pre-train a small MMCLIP on the
# CPU, evaluate it zero-shot, and draw its masks and training curves.
# Output: runs/demo/ (or $1). `BIN=target/debug` reuses a debug build (the
# end-to-end test does); by default the release binaries are built.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/demo}
if [[ -z "${BIN:-}" ]]; then
  bash scripts/setup.sh
  source scripts/env.sh
  cargo build --release --bins -q
  BIN=target/release
else
  source scripts/env.sh
fi
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
START=$SECONDS

step "synthetic world: 1000 MIMIC-CXR studies, 600 PadChest images; CheXpert and ChestX-ray14 trees"
rm -rf "$OUT" && mkdir -p "$OUT"
$BIN/synth --out "$OUT/world" --studies 1000 --padchest-images 600 --seed 0 \
  --chexpert-images 400 --nih-images 600

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

step "ingest chexpert, ingest nih (the downstream releases, as laid out on disk)"
$BIN/ingest chexpert --root "$OUT/world/chexpert" --out "$OUT/shards/chexpert"
$BIN/ingest nih --root "$OUT/world/nih" --split paper --out "$OUT/shards/nih"
step "statistics report"
$BIN/ingest stats --shards "$OUT/shards/mimic" --shards "$OUT/shards/padchest" --out "$OUT/stats"

step "pre-training a small MMCLIP on the CPU (configs/demo.toml)"
$BIN/train --shards "$OUT/shards/mimic" --shards "$OUT/shards/padchest" \
  --config configs/demo.toml --out "$OUT/run" --device cpu
$BIN/train plot --run "$OUT/run" > /dev/null

step "zero-shot evaluation on the test split (thresholds from the validation split)"
# The synthetic world never leaves a drawn finding unmentioned, so a finding
# the report does not mention is absent: count it as negative.
$BIN/train eval zero-shot --checkpoint "$OUT/run" --shards "$OUT/shards/mimic" \
  --out "$OUT/eval" --device cpu --bootstrap 500 --missing-as-negative
# The same model on the PadChest images: the findings that name CheXpert classes.
$BIN/train eval zero-shot --label-set padchest --checkpoint "$OUT/run" \
  --shards "$OUT/shards/padchest" --out "$OUT/eval-padchest" --device cpu --bootstrap 500

$BIN/train eval zero-shot --label-set chexpert5 --checkpoint "$OUT/run" \
  --shards "$OUT/shards/chexpert" --out "$OUT/eval-chexpert" --device cpu --bootstrap 500
step "fine-tuning on 10% of the ChestX-ray14 patients (image encoder + linear head)"
$BIN/train finetune --checkpoint "$OUT/run" --shards "$OUT/shards/nih" --label-set nih \
  --fraction 0.1 --epochs 10 --lr 1e-3 --out "$OUT/finetune-nih-10" --device cpu --bootstrap 500
step "the results table"
$BIN/train report --runs "$OUT/eval" --runs "$OUT/eval-padchest" --runs "$OUT/eval-chexpert" \
  --runs "$OUT/finetune-nih-10" --out "$OUT/report" > /dev/null
cat "$OUT/report/report.md"
step "AttMIM masks over test images, and how much of each lesion they cover"
$BIN/train viz-masks --checkpoint "$OUT/run" --shards "$OUT/shards/mimic" --split test \
  --lesions "$OUT/world/lesions.jsonl" --out "$OUT/masks" --device cpu

step "done in $((SECONDS - START)) s"
.venv/bin/python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
z = json.load(open(f"{out}/eval/zero_shot.json"))
m = json.load(open(f"{out}/masks/lesion_shares.json"))
auc = z["mean_auc"]
print(f"zero-shot mean AUC {auc['value']:.3f} over {auc['classes']} classes (chance 0.5)")
for c in sorted(z["classes"], key=lambda c: -(c["auc"] or 0))[:5]:
    if c["auc"] is not None:
        print(f"  {c['name']:<28} AUC {c['auc']:.3f}  ({c['n_test']} test images, {c['positives_test']} positive)")
p = json.load(open(f"{out}/eval-padchest/zero_shot.json"))["mean_auc"]
print(f"PadChest zero-shot mean AUC {p['value']:.3f} over {p['classes']} findings")
shares = dict((s, v) for s, v in m["shares"])
cands = dict((s, v) for s, v in m["candidate_shares"])
print(f"lesion patches masked: attmim {shares['att-mim']:.3f} vs random {shares['random']:.3f} "
      f"(AttMIM's candidate set at λ1 {m['lambda1']}: {cands['att-mim']:.1%} of the patches)")
PY
echo "shards:   $OUT/shards/{mimic,padchest}   stats: $OUT/stats/stats.md"
echo "run:      $OUT/run (metrics.jsonl, plots/, checkpoints/)"
echo "eval:     $OUT/eval/zero_shot.md, $OUT/eval-padchest/zero_shot.md, $OUT/eval-chexpert/zero_shot.md"
echo "          $OUT/finetune-nih-10/finetune.md   table: $OUT/report/report.md   masks: $OUT/masks/"
