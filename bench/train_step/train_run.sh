#!/usr/bin/env bash
# `train` itself on synthetic shards (the real loader, checkpoints,
# metrics), eager and with --cuda-graph, against step_bench's step: the
# target "`train` within 5% of `step_bench`". One call on the GPU machine
# (no Rust toolchain there: carry the binaries and the tokenizer, see
# bench/device.sh).
#
# Usage: BIN=DIR bash bench/train_step/train_run.sh
#   BIN        folder with synth, ingest and train (target/carry)
#   TOKENIZER  CLIP tokenizer.json ($BIN/tokenizer.json, else .cache/clip/tokenizer.json)
#   DEVICE     cuda | cpu (cuda; --cuda-graph runs on cuda only)
#   PRESET     vit-b16 | small | tiny (vit-b16)
#   BATCH (64) PAIRED_FRACTION (0.75, step_bench's default) STEPS (40)
#   STUDIES (600) PADCHEST (300) LOADER_THREADS (12)
#   STEP_RUNS  step_bench's JSON lines (run.sh's train_step_runs.jsonl) to
#              compare with; none: no comparison
#   COPY_TO    also copy the summary there
# CPU check: BIN=target/debug DEVICE=cpu PRESET=tiny BATCH=8 STEPS=6 STUDIES=40 PADCHEST=20 LOADER_THREADS=1 bash bench/train_step/train_run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-vit-b16}
BATCH=${BATCH:-64}
PAIRED_FRACTION=${PAIRED_FRACTION:-0.75}
STEPS=${STEPS:-40}
STUDIES=${STUDIES:-600}
PADCHEST=${PADCHEST:-300}
LOADER_THREADS=${LOADER_THREADS:-12}
WORK=${WORK:-$(mktemp -d)}
fail() { echo "bench/train_step/train_run.sh: FAILED: $*" >&2; exit 1; }
# shellcheck source=../lib/train_shards.sh
source bench/lib/train_shards.sh
need_train_inputs
use_torch_libs

synthetic_shards "$WORK" "$STUDIES" "$PADCHEST"
throughput_config "$WORK/config.toml" "$PRESET" "$BATCH" "$PAIRED_FRACTION" "$STEPS" "$LOADER_THREADS"

modes=(eager)
[ "$DEVICE" = cuda ] && modes+=(graph)
for mode in "${modes[@]}"; do
  extra=()
  [ "$mode" = graph ] && extra=(--cuda-graph)
  echo "== train ($mode): $PRESET, batch $BATCH, $STEPS steps on $DEVICE" >&2
  "$BIN/train" --shards "$WORK/mimic" --shards "$WORK/padchest" --config "$WORK/config.toml" \
    --out "$WORK/run-$mode" --device "$DEVICE" "${extra[@]}" 2>"$WORK/log-$mode.txt" ||
    { tail -5 "$WORK/log-$mode.txt" >&2; fail "train ($mode) failed"; }
done

for mode in "${modes[@]}"; do
  echo "$mode $(window_rate "$WORK/run-$mode/metrics.jsonl")" >>"$WORK/rates.txt"
done
"$PYTHON" - "$WORK" "${STEP_RUNS:-}" "$DEVICE" "$PRESET" "$BATCH" <<'PY' | tee "$WORK/summary.md"
import json, os, sys
work, step_runs, device, preset, batch = sys.argv[1:]
print(f"# `train` on synthetic shards: {preset}, batch {batch}, {device}\n")
print("Images/s per metrics window (5 steps each); the first window, which holds the "
      "start-up, the first batches and the graph's capture, is left out of the mean.\n")
print("| run | windows | images/s (mean of the later windows) | loader wait |")
print("| --- | ---: | ---: | ---: |")
ours = {}
for line in open(f"{work}/rates.txt"):
    parts = line.split()
    if len(parts) < 4:
        print(f"| train ({parts[0]}) | 0 | too few steps for a second window | |")
        continue
    mode, ips, wait, windows = parts[0], float(parts[1]), float(parts[2]), int(parts[3])
    ours[mode] = ips
    print(f"| train{' --cuda-graph' if mode == 'graph' else ''} | {windows} | {ips:.1f} | {100 * wait:.1f}% |")
if step_runs and os.path.exists(step_runs):
    rows = [json.loads(l) for l in open(step_runs)]
    def bench(graph):
        return next((r for r in rows if r.get("impl") == "rust-tch" and r.get("fused_optimizer")
                     and bool(r.get("cuda_graph")) == graph and not r.get("fit_extras")
                     and r.get("weight_casts") != "per-weight"), None)
    print()
    for mode, graph in (("eager", False), ("graph", True)):
        r = bench(graph)
        if r and mode in ours:
            print(f"- train ({mode}) ÷ step_bench ({'CUDA graph' if graph else 'fused, eager'}, "
                  f"batch {r['batch']}, {r['paired']} paired): **{ours[mode] / r['images_per_s']:.3f}** "
                  f"({ours[mode]:.1f} against {r['images_per_s']:.1f} images/s)")
    print("\nstep_bench's reports fill 20 to 77 tokens; the synthetic reports are shorter, which "
          "eager `train` cuts and `--cuda-graph` pads to 77.")
PY
if [ -n "${COPY_TO:-}" ]; then
  mkdir -p "$COPY_TO"
  cp "$WORK/summary.md" "$COPY_TO/train-summary.md"
fi
