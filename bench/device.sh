#!/usr/bin/env bash
# Every GPU check and measurement of the project in one call of the device
# tool (one H200, no Rust toolchain, under 10 minutes): NCCL's collectives
# and the gradient reducer on every GPU (crates/model/tests/dist.rs), the
# bf16 parity of the training step and its benchmark, eager and as a CUDA
# graph checked against eager (bench/train_step/run.sh), then fine-tuning on
# CUDA against the CPU (bench/finetune/run.sh). Results go to $OUT (the
# device tool's folder) or COPY_TO.
#
# Prepare here, then carry `target/carry`:
#   source scripts/env.sh
#   cargo build --release --bins && cargo build --release -p train --example step_bench
#   cargo test --release -p model --test step_parity --test dist --no-run
#   mkdir -p target/carry
#   for b in synth ingest train; do strip -o target/carry/$b target/release/$b; done
#   strip -o target/carry/step_bench target/release/examples/step_bench
#   strip -o target/carry/step_parity "$(ls -t target/release/deps/step_parity-* | grep -v '\.d$' | head -1)"
#   strip -o target/carry/dist "$(ls -t target/release/deps/dist-* | grep -v '\.d$' | head -1)"
# On the device: bash bench/device.sh
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=${CARRY:-target/carry}
COPY_TO=${COPY_TO:-${OUT:-bench/device-out}}
mkdir -p "$COPY_TO"
status=0
echo "== NCCL collectives and the gradient reducer on every GPU (crates/model/tests/dist.rs)"
TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout 120 \
  "$CARRY/dist" --ignored --exact nccl_collectives_and_reducer_on_every_gpu --nocapture \
  >"$COPY_TO/nccl.txt" 2>&1 || { status=1; echo "NCCL check failed (nccl.txt)"; }
tail -3 "$COPY_TO/nccl.txt"
echo "== training step: parity, then bf16 batch 64 (bench/train_step/run.sh)"
COPY_TO=$COPY_TO PARITY_BIN=$CARRY/step_parity PRECISIONS=${PRECISIONS:-bf16} \
  timeout 420 bash bench/train_step/run.sh "$CARRY/step_bench" || status=1
echo "== fine-tuning, CUDA bf16 against CPU fp32 (bench/finetune/run.sh)"
BIN=$CARRY COPY_TO=$COPY_TO timeout 240 bash bench/finetune/run.sh || status=1
exit $status
