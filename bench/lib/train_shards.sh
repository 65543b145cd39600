# Shared by the benchmarks that run `train` itself (bench/train_step/
# train_run.sh, bench/scale/run.sh): their inputs, synthetic MIMIC- and
# PadChest-shaped shards, and a training config for a throughput run.
# Source it with BIN set and a `fail` function defined.

# shellcheck source=torch_env.sh
source bench/lib/torch_env.sh

# The binaries in BIN and TOKENIZER (default: BIN's tokenizer.json, else
# the one scripts/setup.sh builds).
need_train_inputs() {
  if [ -z "${TOKENIZER:-}" ]; then
    if [ -f "$BIN/tokenizer.json" ]; then TOKENIZER=$BIN/tokenizer.json; else TOKENIZER=.cache/clip/tokenizer.json; fi
  fi
  for b in synth ingest train; do [ -x "$BIN/$b" ] || fail "$BIN/$b is missing"; done
  [ -f "$TOKENIZER" ] || fail "no tokenizer at $TOKENIZER"
}

# synthetic_shards WORK STUDIES PADCHEST: $WORK/mimic and $WORK/padchest.
synthetic_shards() {
  local work=$1 studies=$2 padchest=$3
  "$BIN/synth" --out "$work/world" --studies "$studies" --padchest-images "$padchest" --seed 0 >/dev/null
  "$BIN/ingest" mimic --root "$work/world/mimic-cxr" --tokenizer "$TOKENIZER" --out "$work/mimic" >/dev/null
  "$BIN/ingest" padchest --images-only --root "$work/world/padchest" --out "$work/padchest" >/dev/null
}

# throughput_config FILE PRESET BATCH PAIRED_FRACTION STEPS LOADER_THREADS:
# joint phase from the first step, the fused update, a metrics line every
# 5 steps, no checkpoint but the last.
throughput_config() {
  cat >"$1" <<TOML
[model]
preset = "$2"
[optim]
fused = true
[train]
steps = $5
warmup_steps = 0
batch_size = $3
paired_fraction = $4
loader_threads = $6
prefetch = 8
log_every = 5
checkpoint_every = 100000
keep_last = 1
TOML
}

# The mean images/s of a run's metrics lines after the first (which holds
# the start-up and, with --cuda-graph, the capture), and the mean loader
# wait: "IMAGES_PER_S WAIT WINDOWS", or nothing without later lines.
window_rate() {
  "$PYTHON" - "$1" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])][1:]
if lines:
    print(sum(l["images_per_s"] for l in lines) / len(lines),
          sum(l["loader_wait"] for l in lines) / len(lines), len(lines))
PY
}
