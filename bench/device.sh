#!/usr/bin/env bash
# Every GPU check and measurement of the project, in parts that each fit
# the device tool (one H200, no Rust toolchain, 10 minutes a command):
#   cuda      the model crate's CUDA tests: a CUDA graph captured and
#             replayed with a backward pass and an update, the copies
#             between host and device (pinned, on a copy stream), and the
#             weights cast in groups (model::cast), seconds
#   nccl      NCCL's collectives and the gradient reducer on every GPU
#             (crates/model/tests/dist.rs), seconds
#   step      the bf16 parity of the training step, then its benchmark:
#             ours eager, with fit.rs's host reads, fused, and as a CUDA
#             graph checked against eager; PyTorch eager and torch.compile
#             (bench/train_step/run.sh), a few minutes
#   step256   the same at batch 256, without the parity check and the
#             host-reads row (not in the default PARTS)
#   train     `train` on synthetic shards, eager and --cuda-graph, against
#             the step's figures (bench/train_step/train_run.sh)
#   scale     `train` under torchrun on 1, 2, 4, 8 GPUs (as many as there
#             are; bench/scale/run.sh), for a multi-GPU machine (not in
#             the default PARTS)
#   finetune  fine-tuning on CUDA against the CPU (bench/finetune/run.sh)
# PARTS picks them (default cuda, nccl, step, train, finetune, in that
# order); a part that fails or times out is recorded and the next one runs.
# Results go to $OUT (the device tool's folder) or COPY_TO. They may not
# all fit one 10-minute call: run `PARTS="cuda nccl step"` first, then
# `PARTS="train finetune"`, then `PARTS=step256`. The train part compares
# with the step part's train_step_runs.jsonl in COPY_TO; in a later call,
# copy that file from the first call's output into the tree and point
# STEP_RUNS at it.
#
# Prepare here, then carry `target/carry`:
#   source scripts/env.sh
#   cargo build --release --bins && cargo build --release -p train --example step_bench
#   cargo test --release -p model --lib --test step_parity --test dist --no-run
#   mkdir -p target/carry
#   for b in synth ingest train; do strip -o target/carry/$b target/release/$b; done
#   strip -o target/carry/step_bench target/release/examples/step_bench
#   strip -o target/carry/step_parity "$(ls -t target/release/deps/step_parity-* | grep -v '\.d$' | head -1)"
#   strip -o target/carry/dist "$(ls -t target/release/deps/dist-* | grep -v '\.d$' | head -1)"
#   strip -o target/carry/model_lib "$(ls -t target/release/deps/model-* | grep -v '\.d$' | head -1)"
#   cp .cache/clip/tokenizer.json target/carry/
# (61 MB in all on 2026-12-01, within the device tool's 64 MiB carry.)
# On the device: bash bench/device.sh
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=${CARRY:-target/carry}
COPY_TO=${COPY_TO:-${OUT:-bench/device-out}}
mkdir -p "$COPY_TO"
status=0
PARTS=${PARTS:-"cuda nccl step train finetune"}
# shellcheck source=lib/torch_env.sh
source bench/lib/torch_env.sh
for part in $PARTS; do
  case $part in
    cuda)
      echo "== CUDA graph capture and replay, host-device copies, group casts (crates/model/src/{graph,transfer,cast}.rs)"
      (use_torch_libs && timeout 120 "$CARRY/model_lib" --ignored --exact \
        graph::tests::a_captured_step_replays_on_new_inputs \
        transfer::tests::cuda_copies_do_not_block_and_arrive_whole \
        cast::tests::cuda_group_casts_are_the_per_weight_casts --nocapture) \
        >"$COPY_TO/cuda.txt" 2>&1 || { status=1; echo "CUDA checks failed (cuda.txt)"; }
      tail -3 "$COPY_TO/cuda.txt"
      ;;
    nccl)
      echo "== NCCL collectives and the gradient reducer on every GPU (crates/model/tests/dist.rs)"
      (use_torch_libs && timeout 120 "$CARRY/dist" --ignored --exact nccl_collectives_and_reducer_on_every_gpu \
        --nocapture) >"$COPY_TO/nccl.txt" 2>&1 || { status=1; echo "NCCL check failed (nccl.txt)"; }
      tail -3 "$COPY_TO/nccl.txt"
      ;;
    step)
      echo "== training step: parity, then bf16 batch 64 (bench/train_step/run.sh)"
      COPY_TO=$COPY_TO PARITY_BIN=$CARRY/step_parity PRECISIONS=${PRECISIONS:-bf16} \
        timeout 480 bash bench/train_step/run.sh "$CARRY/step_bench" || status=1
      ;;
    step256)
      echo "== training step at batch 256, bf16, no parity check (bench/train_step/run.sh)"
      mkdir -p "$COPY_TO/b256"
      COPY_TO=$COPY_TO/b256 BATCH=256 PRECISIONS=bf16 FIT_EXTRAS= \
        timeout 480 bash bench/train_step/run.sh "$CARRY/step_bench" || status=1
      ;;
    train)
      echo "== train on synthetic shards, eager and --cuda-graph (bench/train_step/train_run.sh)"
      BIN=$CARRY COPY_TO=$COPY_TO STEP_RUNS=${STEP_RUNS:-$COPY_TO/train_step_runs.jsonl} \
        timeout 300 bash bench/train_step/train_run.sh || status=1
      ;;
    scale)
      echo "== data-parallel scaling over the GPUs present (bench/scale/run.sh)"
      BIN=$CARRY COPY_TO=$COPY_TO timeout 540 bash bench/scale/run.sh || status=1
      ;;
    finetune)
      echo "== fine-tuning, CUDA bf16 against CPU fp32 (bench/finetune/run.sh)"
      BIN=$CARRY COPY_TO=$COPY_TO timeout 240 bash bench/finetune/run.sh || status=1
      ;;
    *) echo "PARTS: unknown part '$part' (cuda, nccl, step, step256, train, scale, finetune)"; status=1 ;;
  esac
done
exit $status
