#!/usr/bin/env bash
# Data-parallel scaling of `train`: the same run on 1, 2, 4, 8 processes
# (one per GPU, NCCL; launched by torchrun as users launch it), the batch
# per process fixed, so the global batch grows with the processes (weak
# scaling). Scaling efficiency = images/s on N ÷ (N × images/s on 1).
#
# Usage: BIN=DIR bash bench/scale/run.sh
#   BIN        folder with synth, ingest and train (target/carry)
#   TOKENIZER  CLIP tokenizer.json ($BIN/tokenizer.json, else .cache/clip/tokenizer.json)
#   DEVICE     cuda | cpu (cuda; cpu runs Gloo, a check of this script)
#   PROCS      process counts ("1 2 4 8", cut to the GPUs present on cuda)
#   PRESET (vit-b16) BATCH_PER_PROC (64) PAIRED_FRACTION (0.75) STEPS (40)
#   STUDIES (1200) PADCHEST (600) LOADER_THREADS (per process: the cores ÷ the processes)
#   COPY_TO    also copy the summary there
# The CPU runs Gloo ranks that share the machine's cores: their figures
# check the script, not the scaling.
# CPU check: BIN=target/debug DEVICE=cpu PROCS="1 2" PRESET=tiny BATCH_PER_PROC=4 STEPS=11 STUDIES=40 PADCHEST=20 bash bench/scale/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-vit-b16}
BATCH_PER_PROC=${BATCH_PER_PROC:-64}
PAIRED_FRACTION=${PAIRED_FRACTION:-0.75}
STEPS=${STEPS:-40}
STUDIES=${STUDIES:-1200}
PADCHEST=${PADCHEST:-600}
WORK=${WORK:-$(mktemp -d)}
fail() { echo "bench/scale/run.sh: FAILED: $*" >&2; exit 1; }
# shellcheck source=../lib/train_shards.sh
source bench/lib/train_shards.sh
need_train_inputs
use_torch_libs
if [ "$DEVICE" = cuda ]; then
  GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
  [ "$GPUS" -ge 1 ] || fail "no CUDA device"
  PROCS=${PROCS:-"1 2 4 8"}
  kept=()
  for n in $PROCS; do [ "$n" -le "$GPUS" ] && kept+=("$n"); done
  PROCS="${kept[*]}"
else
  PROCS=${PROCS:-"1 2"}
fi

synthetic_shards "$WORK" "$STUDIES" "$PADCHEST"
CORES=$(nproc)
for n in $PROCS; do
  threads=${LOADER_THREADS:-$(( CORES / n > 1 ? CORES / n - 1 : 1 ))}
  throughput_config "$WORK/config-$n.toml" "$PRESET" $(( BATCH_PER_PROC * n )) "$PAIRED_FRACTION" "$STEPS" "$threads"
  echo "== $n process(es): global batch $(( BATCH_PER_PROC * n )), $threads loader threads each" >&2
  "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$n" --no-python \
    "$BIN/train" --shards "$WORK/mimic" --shards "$WORK/padchest" --config "$WORK/config-$n.toml" \
    --out "$WORK/run-$n" --device "$DEVICE" >"$WORK/log-$n.txt" 2>&1 ||
    { tail -5 "$WORK/log-$n.txt" >&2; fail "train on $n process(es) failed"; }
  echo "$n $(window_rate "$WORK/run-$n/metrics.jsonl")" >>"$WORK/rates.txt"
done

"$PYTHON" - "$WORK" "$DEVICE" "$PRESET" "$BATCH_PER_PROC" <<'PY' | tee "$WORK/summary.md"
import sys
work, device, preset, per = sys.argv[1:]
print(f"# Data-parallel scaling of `train`: {preset}, {per} images per process and step, {device}\n")
print("| processes | global batch | images/s | images/s per process | scaling efficiency | loader wait |")
print("| ---: | ---: | ---: | ---: | ---: | ---: |")
base = None
for line in open(f"{work}/rates.txt"):
    parts = line.split()
    n = int(parts[0])
    if len(parts) < 4:
        print(f"| {n} | {n * int(per)} | too few steps for a second window | | | |")
        continue
    ips, wait = float(parts[1]), float(parts[2])
    base = base or (ips if n == 1 else None)
    eff = f"{ips / (n * base):.2f}" if base else ""
    print(f"| {n} | {n * int(per)} | {ips:.1f} | {ips / n:.1f} | {eff} | {100 * wait:.1f}% |")
PY
if [ -n "${COPY_TO:-}" ]; then
  mkdir -p "$COPY_TO"
  cp "$WORK/summary.md" "$COPY_TO/scale-summary.md"
fi
