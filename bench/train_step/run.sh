#!/usr/bin/env bash
# The full MMCLIP training step (joint phase, SGD momentum), ours
# (crates/train/examples/step_bench.rs, tch) against PyTorch eager
# (reference.py), in one run; writes bench/train_step/last-run.md.
#
# Usage: bash bench/train_step/run.sh [STEP_BENCH_BINARY]
#   The binary defaults to target/release/examples/step_bench; where cargo is
#   present and it is missing, it is built. The GPU machine has no Rust
#   toolchain: carry the binary built here (README.md). It finds libtorch
#   through LD_LIBRARY_PATH, set below to the torch of $PYTHON.
#   It first runs the model's bf16 parity check on $DEVICE (crates/model/
#   tests/step_parity.rs, both sides on the device) when PARITY_BIN names
#   that test's binary, built here and carried like step_bench.
# Env (defaults for the GPU machine):
#   DEVICE           cuda | cpu (cuda)
#   PRESET           vit-b16 | small | tiny (vit-b16)
#   BATCH STEPS WARMUP PAIRED_FRACTION   (64, 20, 3, 0.75)
#   PRECISIONS       runs to make, from: fp32 (no autocast), bf16 (autocast
#                    bfloat16, what `train` uses on CUDA), fp16 (autocast
#                    float16). Default "bf16 fp32" on cuda, "fp32" on cpu.
#   FIT_EXTRAS       precisions at which ours runs once more with --fit-extras
#                    (fit.rs's per-step host reads: losses, gradient norm).
#                    Default "bf16" on cuda, none on cpu.
#   FUSED            precisions at which ours runs once more with --fused
#                    (libtorch's fused SGD kernel: one operator per update
#                    instead of several per parameter tensor).
#                    Default "bf16" on cuda, none on cpu.
#   PER_WEIGHT       precisions at which ours runs once more with --fused
#                    --cast-per-weight (autocast casting each weight, and
#                    each gradient back, with a kernel of its own, instead
#                    of model::cast's groups): what the groups save.
#                    Default "bf16" on cuda, none on cpu.
#   GRAPH            precisions at which ours runs once more with --fused
#                    --cuda-graph (the whole step captured in a CUDA graph
#                    and replayed; it first checks the replays against eager
#                    steps and fails on a difference). Default "bf16" on
#                    cuda; CUDA only.
#   COMPILE          precisions at which PyTorch runs once more with
#                    torch.compile: the whole step (--compile step), or
#                    where that fails, CLIP's encoders (--compile encoders).
#                    Default "bf16" on cuda, none on cpu.
#   PEAK_TFLOPS      for the MFU (989 on cuda: H100 SXM dense bf16/fp16;
#                    none on cpu)
#   ATTN             the reference's attention, sdpa | eager (sdpa)
#   THREADS          intra-op threads of both sides (cuda default: the
#                    libraries'; cpu default 1: on a shared machine
#                    OpenMP's waiting threads made 2-thread figures swing
#                    from 0.08 to 4 s per tiny step)
#   PYTHON           python with torch + transformers (.venv/bin/python if
#                    present, else python3)
#   COPY_TO          also copy last-run.md and the JSON lines there (the
#                    lines and logs as each run ends: a time limit that
#                    stops the script keeps what ran)
#                    (e.g. the device tool's $OUT)
#   PARITY_BIN       the step_parity test binary (none: no parity check)
# CPU check: DEVICE=cpu PRESET=tiny BATCH=8 STEPS=2 bash bench/train_step/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DEFAULT_BIN=target/release/examples/step_bench
BIN=${1:-$DEFAULT_BIN}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-vit-b16}
BATCH=${BATCH:-64}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
PAIRED_FRACTION=${PAIRED_FRACTION:-0.75}
ATTN=${ATTN:-sdpa}
if [ "$DEVICE" = cuda ]; then
  PRECISIONS=${PRECISIONS:-"bf16 fp32"}
  PEAK_TFLOPS=${PEAK_TFLOPS:-989}
  FIT_EXTRAS=${FIT_EXTRAS-bf16}
  FUSED=${FUSED-bf16}
  PER_WEIGHT=${PER_WEIGHT-bf16}
  GRAPH=${GRAPH-bf16}
  COMPILE=${COMPILE-bf16}
else
  PRECISIONS=${PRECISIONS:-fp32}
  PEAK_TFLOPS=${PEAK_TFLOPS:-}
  THREADS=${THREADS:-1}
  FIT_EXTRAS=${FIT_EXTRAS:-}
  FUSED=${FUSED:-}
  PER_WEIGHT=${PER_WEIGHT:-}
  GRAPH=
  COMPILE=${COMPILE:-}
fi
OUT_MD=bench/train_step/last-run.md
# shellcheck source=../lib/torch_env.sh
source bench/lib/torch_env.sh

fail() { echo "run.sh: FAILED: $*" >&2; exit 1; }

"$PYTHON" -c 'import torch, transformers, safetensors, numpy' ||
  fail "$PYTHON lacks torch, transformers, safetensors or numpy (reference.py needs them)"
use_torch_libs

if [ ! -x "$BIN" ]; then
  if [ "$BIN" = "$DEFAULT_BIN" ] && command -v cargo >/dev/null; then
    # shellcheck source=/dev/null
    source scripts/env.sh
    cargo build --release -q -p train --example step_bench
  else
    fail "$BIN not found: build it with 'cargo build --release -p train --example step_bench' and carry it (bench/train_step/README.md)"
  fi
fi
if missing=$(ldd "$BIN" 2>&1 | grep 'not found'); then
  fail "$BIN cannot find shared libraries (LD_LIBRARY_PATH=$LD_LIBRARY_PATH):
$missing"
fi

WORK=$(mktemp -d)
if [ -n "${COPY_TO:-}" ]; then
  # Filled as the runs end (see `measure`).
  : >"$COPY_TO/train_step_runs.jsonl"
  : >"$COPY_TO/train_step_logs.txt"
fi
SAMPLER=
stop_sampler() {
  if [ -n "$SAMPLER" ]; then
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    SAMPLER=
  fi
}
trap 'stop_sampler; rm -rf "$WORK"' EXIT
# Peak GPU memory as the driver sees it (context + caching allocator), for
# both sides alike: tch exposes no allocator statistics.
start_sampler() {
  if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$1" 2>/dev/null &
    SAMPLER=$!
  fi
}

if [ "$DEVICE" = cuda ]; then
  echo "== smoke: $BIN --device cuda --preset tiny --batch 4 --steps 1 --warmup 0" >&2
  "$BIN" --device cuda --preset tiny --batch 4 --steps 1 --warmup 0 >"$WORK/smoke.json" ||
    fail "the Rust binary could not run a training step on CUDA (its message is above)"
  "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    fail "$PYTHON's torch sees no CUDA device"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits >"$WORK/idle.txt" || true
  fi
fi

# The model's step against the PyTorch reference under bf16 autocast, both
# sides on $DEVICE (crates/model/tests/step_parity.rs; on cuda its ignored
# CUDA test). The test finds the reference scripts in this tree and runs
# them with $PYTHON. A failure is recorded; the benchmark still runs.
if [ -n "${PARITY_BIN:-}" ]; then
  if [ "$DEVICE" = cuda ]; then
    parity_test=bfloat16_autocast_step_matches_the_pytorch_reference_on_cuda
  else
    parity_test=bfloat16_autocast_step_matches_the_pytorch_reference_under_autocast
  fi
  echo "== parity: $PARITY_BIN --include-ignored --exact $parity_test" >&2
  status=0
  MMCLIP_WORKSPACE=$PWD MMCLIP_PYTHON=$PYTHON \
    "$PARITY_BIN" --include-ignored --exact "$parity_test" --nocapture >"$WORK/parity.txt" 2>&1 || status=$?
  cat "$WORK/parity.txt" >&2
  [ -n "${COPY_TO:-}" ] && { echo "== parity"; cat "$WORK/parity.txt"; } >>"$COPY_TO/train_step_logs.txt"
  if [ "$status" != 0 ]; then
    echo "parity on $DEVICE ($parity_test): exit status $status" >>"$WORK/failures.txt"
  fi
fi

common=(--device "$DEVICE" --preset "$PRESET" --batch "$BATCH" --paired-fraction "$PAIRED_FRACTION"
        --steps "$STEPS" --warmup "$WARMUP")
[ -n "${THREADS:-}" ] && common+=(--threads "$THREADS")
[ -n "$PEAK_TFLOPS" ] && common+=(--peak-tflops "$PEAK_TFLOPS")
# FlopCounterMode has no formula for the CPU's fused attention kernel: count
# on CUDA, or on the CPU with the spelled-out attention.
count=(--count-flops)
[ "$DEVICE" = cpu ] && [ "$ATTN" != eager ] && count=()

# The model FLOPs of a step (both sides' MFU), counted on the CPU, before
# any run can fail.
FLOPS=$("$BIN" --device cpu --preset "$PRESET" --batch "$BATCH" --paired-fraction "$PAIRED_FRACTION" --flops-only |
  "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["flops_per_step"])') ||
  fail "$BIN --flops-only failed"

# One measurement: NAME (side-precision) and its command. A failed run is
# recorded and the others still run: a GPU session gets one try.
measure() {
  local name=$1
  shift
  echo "== $name: $*" >&2
  start_sampler "$WORK/smi-$name.txt"
  local status=0
  "$@" --json "$WORK/$name.json" >&2 2>"$WORK/log-$name.txt" || status=$?
  stop_sampler
  cat "$WORK/log-$name.txt" >&2
  if [ "$status" != 0 ]; then
    rm -f "$WORK/$name.json"
    echo "$name: exit status $status: $(grep -v '^ *$' "$WORK/log-$name.txt" | tail -1)" >>"$WORK/failures.txt"
  fi
  if [ -n "${COPY_TO:-}" ]; then
    # Kept as each run ends: when a time limit stops the script, what ran
    # is not lost with $WORK.
    [ -f "$WORK/$name.json" ] && cat "$WORK/$name.json" >>"$COPY_TO/train_step_runs.jsonl"
    { echo "== $WORK/log-$name.txt"; cat "$WORK/log-$name.txt"; } >>"$COPY_TO/train_step_logs.txt"
  fi
}

for prec in $PRECISIONS; do
  case $prec in
    fp32) rust=(); ref=() ;;
    fp16) rust=(--autocast f16); ref=(--autocast --autocast-dtype float16) ;;
    bf16) rust=(--autocast bf16); ref=(--autocast --autocast-dtype bfloat16) ;;
    *) fail "PRECISIONS: unknown '$prec' (fp32, fp16, bf16)" ;;
  esac
  measure "rust-$prec" "$BIN" "${common[@]}" "${rust[@]}"
  if [[ " $FIT_EXTRAS " == *" $prec "* ]]; then
    measure "rust-${prec}_fit" "$BIN" "${common[@]}" "${rust[@]}" --fit-extras
  fi
  if [[ " $FUSED " == *" $prec "* ]]; then
    measure "rust-${prec}_fused" "$BIN" "${common[@]}" "${rust[@]}" --fused
  fi
  if [[ " $PER_WEIGHT " == *" $prec "* && "$prec" != fp32 ]]; then
    measure "rust-${prec}_perweight" "$BIN" "${common[@]}" "${rust[@]}" --fused --cast-per-weight
  fi
  if [[ " $GRAPH " == *" $prec "* ]]; then
    measure "rust-${prec}_graph" "$BIN" "${common[@]}" "${rust[@]}" --fused --cuda-graph
  fi
  measure "pytorch-$prec" "$PYTHON" bench/train_step/reference.py "${common[@]}" "${ref[@]}" --attn "$ATTN" \
    --flops-per-step "$FLOPS" "${count[@]}"
  if [[ " $COMPILE " == *" $prec "* ]]; then
    for mode in step encoders; do
      # A fresh inductor cache: a whole-step compile reloaded from the cache
      # of an earlier run failed in AOTAutograd (bench/RESULTS.md).
      measure "pytorch-${prec}_compile" env TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-$prec-$mode" \
        "$PYTHON" bench/train_step/reference.py "${common[@]}" "${ref[@]}" \
        --attn "$ATTN" --flops-per-step "$FLOPS" --compile "$mode"
      [ -f "$WORK/pytorch-${prec}_compile.json" ] && break
    done
  fi
  # One count is enough: the FLOPs do not depend on the precision.
  [ -f "$WORK/pytorch-$prec.json" ] && count=()
done

if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
  DEVICE_NAME=$(nvidia-smi -L | head -1)
else
  DEVICE_NAME="cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), nproc $(nproc)"
fi
COMMAND="DEVICE=$DEVICE PRESET=$PRESET BATCH=$BATCH STEPS=$STEPS WARMUP=$WARMUP PRECISIONS=\"$PRECISIONS\"${THREADS:+ THREADS=$THREADS} bash bench/train_step/run.sh $BIN"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

"$PYTHON" - "$WORK" "$DEVICE_NAME" "$COMMAND" "$COMMIT" "$(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT_MD" <<'PY'
import datetime, glob, json, os, sys
work, device_name, command, commit, load = sys.argv[1:]
runs = {}
for path in sorted(glob.glob(f"{work}/*-*.json"), key=lambda p: "pytorch" in p):
    side, prec = os.path.basename(path)[:-5].split("-", 1)
    runs[(side, prec)] = json.load(open(path))

def smi_peak(side, prec):
    try:
        used = [int(x) for x in open(f"{work}/smi-{side}-{prec}.txt").read().split() if x.isdigit()]
        idle = int(open(f"{work}/idle.txt").read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return max(used) - idle if used else None

fmt = lambda x, spec: "" if x is None else format(x, spec)
any_run = next(iter(runs.values()), None)
print(f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `{command}`, "
      f"commit {commit} (plus the working tree); device {device_name}; "
      f"torch {next((r['torch'] for r in runs.values() if 'torch' in r), '?')}; "
      f"load average at the end {load}.\n")
if any_run is None:
    print("**No run finished.**")
    any_run = {"preset": "?", "batch": "?", "paired": "?", "steps": "?", "warmup": "?"}
print(f"Preset {any_run['preset']}, batch {any_run['batch']} ({any_run['paired']} paired), "
      f"{any_run['steps']} timed steps after {any_run['warmup']} untimed; each step = zero_grad, forward "
      f"(joint phase), backward, SGD momentum 0.9; CUDA synchronised before each clock read.\n")
print("| run | precision | images/s | ms/step mean / median / min | host ms to queue a step (median) | TFLOP/s | MFU | peak GPU MiB (nvidia-smi − idle) | torch max allocated MiB | ours ÷ PyTorch (images/s) |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
names = {"rust": "ours (tch)", "pytorch": "PyTorch eager"}
for prec in ("fp32", "fp16", "bf16"):
    for side, key in (("rust", prec), ("rust", prec + "_fit"), ("rust", prec + "_fused"),
                      ("rust", prec + "_perweight"), ("rust", prec + "_graph"),
                      ("pytorch", prec), ("pytorch", prec + "_compile")):
        r = runs.get((side, key))
        if not r:
            continue
        label = names[side] + (f" ({r['attn']} attention)" if side == "pytorch" else "")
        if key.endswith("_compile"):
            label = f"PyTorch, torch.compile of the {'whole step' if r['compile'] == 'step' else 'CLIP encoders'} ({r['attn']} attention)"
        if key.endswith("_fit"):
            label += ", plus fit.rs's host reads (losses, gradient norm)"
        if key.endswith("_fused"):
            label += ", fused SGD update (`[optim] fused`)"
        if key.endswith("_perweight"):
            label += ", fused SGD update, autocast's cast per weight (`--cast-per-weight`)"
        if key.endswith("_graph"):
            label += ", whole step in a CUDA graph (fused update)"
        dtype = r.get("autocast_dtype") or "float32"
        ratio = ""
        if side == "pytorch":
            ours = runs.get(("rust", prec)) or (runs.get(("rust", "fp16")) if prec == "bf16" else None)
            if ours:
                ratio = f"{ours['images_per_s'] / r['images_per_s']:.2f}×" + ("" if ("rust", prec) in runs else " (ours in float16)")
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else ""
        print(f"| {label} | {dtype} | {r['images_per_s']:.1f} | {r['ms_per_step_mean']:.1f} / {r['ms_per_step_median']:.1f} / {r['ms_per_step_min']:.1f} "
              f"| {fmt(r.get('host_ms_per_step_median'), '.1f')} "
              f"| {fmt(r['tflops_achieved'], '.3g')} | {mfu} "
              f"| {fmt(smi_peak(side, key), 'd')} | {fmt(r.get('peak_gpu_mib'), '.0f')} | {ratio} |")

rust = next((r for (s, _), r in runs.items() if s == "rust"), None)
counted = next((r["flops_counted"] for (s, _), r in runs.items() if s == "pytorch" and r.get("flops_counted")), None)
if rust:
    f = rust["flops_per_step"]
    print(f"\nModel FLOPs per step (ours, analytic, `step_flops` in step_bench.rs): **{f / 1e12:.4g} TFLOP** "
          f"({f / rust['batch'] / 1e9:.4g} GFLOP per image)"
          + (f"; MFU = these ÷ time ÷ {rust['peak_tflops']} TFLOP/s peak." if rust["peak_tflops"] else "."))
    if counted:
        print(f"Counted in the reference by `torch.utils.flop_counter` (matrix ops autograd ran): {counted / 1e12:.3f} TFLOP "
              f"(analytic ÷ counted = {f / counted:.4f}).")
    print("\n| pass | GFLOP per step | share |\n| --- | ---: | ---: |")
    for k, v in sorted(rust["flops_breakdown"].items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v / 1e9:,.2f} | {100 * v / f:.1f}% |")
params = {s: r["params"] for (s, _), r in runs.items()}
sel = {s: r["mlm_selected"] for (s, _), r in runs.items()}
plen = {s: r["prompt_len"] for (s, _), r in runs.items()}
print(f"\nTrainable parameters: {params}; EntMLM-selected tokens per step: {sel}; prompt pass width: {plen}.")
print("Last-step losses: " + "; ".join(
    f"{'PyTorch torch.compile' if p.endswith('_compile') else names[s]} {p.split('_')[0]}{'' if '_' not in p or p.endswith('_compile') else ' ' + p.split('_', 1)[1]}: total {r['loss_total']:.4f} (align {fmt(r.get('loss_align'), '.4f')}, mim {fmt(r.get('loss_mim'), '.4f')}, mlm {fmt(r.get('loss_mlm'), '.4f')})"
    for (s, p), r in runs.items()) + ".")
for prec in ("fp32", "fp16", "bf16"):
    best = max((runs[k] for k in runs if k[0] == "rust" and k[1].split("_")[0] == prec
                and not k[1].endswith("_fit")), key=lambda r: r["images_per_s"], default=None)
    for key in (prec, prec + "_compile"):
        r = runs.get(("pytorch", key))
        if best and r:
            print(f"\nOurs at its fastest ({'CUDA graph' if best.get('cuda_graph') else 'fused update' if best.get('fused_optimizer') else 'eager'}, {prec}) "
                  f"÷ PyTorch {'eager' if key == prec else 'torch.compile (' + r['compile'] + ')'}: "
                  f"**{best['images_per_s'] / r['images_per_s']:.2f}×** images/s.")
for (s, p), r in runs.items():
    g = r.get("graph_parity")
    if g:
        print(f"\nCUDA graph ({p}) against eager steps of a second model with the same weights, "
              f"{g['steps_compared']} steps: largest relative difference of the loss {g['max_loss_rel_diff']:.2e}, "
              f"of the gradient norm {g['max_grad_norm_rel_diff']:.2e}; largest weight difference at the end "
              f"{g['max_weight_abs_diff']:.2e}.")
parity = os.path.join(work, "parity.txt")
if os.path.exists(parity):
    lines = open(parity).read().splitlines()
    print(f"\nParity with the PyTorch reference (`step_parity`, bf16 autocast, both sides on {device_name}; "
          "tolerances: losses 1e-2, gradient norms 5e-2 relative):\n")
    for i, line in enumerate(lines):
        if "relative differences" in line or line.startswith("test result") or "panicked" in line:
            print(f"- {line.strip()}" + (f" {lines[i + 1].strip()}" if "panicked" in line and i + 1 < len(lines) else ""))
failures = os.path.join(work, "failures.txt")
if os.path.exists(failures):
    print("\n**Failed runs** (their output is in the run's log):\n")
    for line in open(failures):
        print(f"- {line.strip()}")
print("\nJSON lines:\n\n```")
for (s, p), r in runs.items():
    print(json.dumps(r))
print("```")
PY
cat "$OUT_MD"
if [ -n "${COPY_TO:-}" ]; then
  # The third of three files (the device tool brings back at most eight);
  # the runs' lines and logs are there already (see `measure`).
  cp "$OUT_MD" "$COPY_TO"/
fi

# Both sides must have built the same model and finished with finite losses.
"$PYTHON" - "$WORK" <<'PY' || fail "a run failed or the two sides disagree (see above)"
import glob, json, math, sys
runs = [json.load(open(p)) for p in glob.glob(f"{sys.argv[1]}/*-*.json")]
bad = [f"{r['impl']} {r.get('autocast_dtype') or 'float32'}: non-finite loss" for r in runs if not r["losses_finite"]]
try:
    bad += [f"failed: {line.strip()}" for line in open(f"{sys.argv[1]}/failures.txt")]
except OSError:
    pass
for key in ("params", "mlm_selected", "report_len", "paired"):
    if len({r[key] for r in runs}) > 1:
        bad.append(f"{key} differs: " + ", ".join(f"{r['impl']} {r[key]}" for r in runs))
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
PY
