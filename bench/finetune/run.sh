#!/usr/bin/env bash
# Fine-tuning on CUDA (bf16 autocast) against the CPU (fp32) on the same
# data, weights and seed: the check that `train finetune`'s CUDA path runs
# and trains like the CPU one, and its time per epoch. One call on the GPU
# machine (no Rust toolchain there: carry target/release/{synth,ingest,train},
# built and stripped here).
#
# Usage: BIN=DIR bash bench/finetune/run.sh
#   BIN       folder with synth, ingest and train (target/release)
#   WORK      scratch folder (a fresh temporary one)
#   DEVICES   devices to run, the first is compared with the others (cuda cpu)
#   PRESET    vit-b16 | tiny: the random-initialised Hugging Face CLIPModel
#             folder the runs start from (vit-b16: ViT-B/16 at 224 px and
#             CLIP's text tower, as the paper's baseline row; tiny: a CPU check
#             of this script)
#   IMAGES    synthetic COVIDx images (200); EPOCHS (2); BATCH (32)
#   TOL       largest relative difference of the first epoch's mean training
#             loss between the first device and each other (0.05: bf16
#             autocast against fp32)
#   COPY_TO   also copy the summary and each run's finetune.json there
# CPU check of the script: BIN=target/debug DEVICES="cpu cpu" PRESET=tiny IMAGES=60 bash bench/finetune/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
DEVICES=${DEVICES:-"cuda cpu"}
PRESET=${PRESET:-vit-b16}
IMAGES=${IMAGES:-200}
EPOCHS=${EPOCHS:-2}
BATCH=${BATCH:-32}
TOL=${TOL:-0.05}
WORK=${WORK:-$(mktemp -d)}
# shellcheck source=../lib/torch_env.sh
source bench/lib/torch_env.sh
fail() { echo "bench/finetune/run.sh: FAILED: $*" >&2; exit 1; }
for b in synth ingest train; do [ -x "$BIN/$b" ] || fail "$BIN/$b is missing"; done
use_torch_libs

case "$PRESET" in
  vit-b16) SIZE=256 ;;
  tiny) SIZE=64 ;;
  *) fail "PRESET $PRESET is not vit-b16 or tiny" ;;
esac
"$BIN/synth" --out "$WORK/world" --studies 2 --padchest-images 0 --covidx-images "$IMAGES" \
  --size "$SIZE" --seed 1 > /dev/null
"$BIN/ingest" covidx --root "$WORK/world/covidx" --out "$WORK/covidx" > /dev/null
"$PYTHON" - "$WORK/hf" "$PRESET" <<'PY'
import sys, torch
from transformers import CLIPConfig, CLIPModel
out, preset = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
if preset == "vit-b16":
    cfg = CLIPConfig(vision_config=dict(patch_size=16, image_size=224), projection_dim=512)
else:
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = CLIPConfig(vision_config=dict(small, patch_size=8, image_size=32),
                     text_config=dict(small, max_position_embeddings=77), projection_dim=16)
CLIPModel(cfg).save_pretrained(out, safe_serialization=True)
PY

n=0
for dev in $DEVICES; do
  n=$((n + 1))
  run="$WORK/ft-$n-$dev"
  start=$(date +%s%N)
  "$BIN/train" finetune --checkpoint "$WORK/hf" --shards "$WORK/covidx" --label-set covidx \
    --fraction 1.0 --epochs "$EPOCHS" --patience "$EPOCHS" --batch-size "$BATCH" --lr 1e-4 \
    --bootstrap 100 --seed 0 --device "$dev" --out "$run" 2>&1 | { grep -E '^(epoch|no better)' || true; }
  end=$(date +%s%N)
  echo "$dev $(( (end - start) / 1000000 ))" >> "$WORK/times"
done

"$PYTHON" - "$WORK" "$TOL" "$PRESET" <<'PY' | tee "$WORK/summary.md"
import glob, json, os, sys
work, tol, preset = sys.argv[1], float(sys.argv[2]), sys.argv[3]
times = [l.split() for l in open(f"{work}/times")]
runs = sorted(glob.glob(f"{work}/ft-*"), key=lambda p: int(p.rsplit("/ft-", 1)[1].split("-")[0]))
print(f"# train finetune, covidx, {preset}, {len(runs)} runs\n")
print("| device | seconds | epoch-1 loss | best epoch | test AUC |")
print("| --- | ---: | ---: | ---: | ---: |")
first = None
bad = []
for (dev, ms), run in zip(times, runs):
    hist = [json.loads(l) for l in open(f"{run}/history.jsonl")]
    res = json.load(open(f"{run}/finetune.json"))
    loss = hist[0]["train_loss"]
    auc = res["summary"]["classes"][0]["auc"]
    print(f"| {dev} | {int(ms) / 1000:.1f} | {loss:.5f} | {res['best_epoch']} | {auc if auc is None else round(auc, 4)} |")
    if first is None:
        first = (dev, loss)
    elif abs(loss - first[1]) > tol * abs(first[1]):
        bad.append(f"{dev} epoch-1 loss {loss:.5f} vs {first[0]} {first[1]:.5f}")
if bad:
    print("\nFAILED: " + "; ".join(bad) + f" (tolerance {tol:.0%})")
    sys.exit(1)
print(f"\nepoch-1 losses within {tol:.0%} of {first[0]}'s")
PY
if [ -n "${COPY_TO:-}" ]; then
  mkdir -p "$COPY_TO"
  cp "$WORK/summary.md" "$COPY_TO/finetune-summary.md"
  for r in "$WORK"/ft-*; do cp "$r/finetune.json" "$COPY_TO/$(basename "$r").json"; done
fi
