#!/usr/bin/env bash
# Settles the storage encoding of the image column: bytes on disk and the
# loader's cost to read and decode each stored image, for raw+zstd, PNG and
# JPEG, on the 249 real images of ../shared/data/covid and on the synthetic
# world. Usage: bash bench/encoding/run.sh  (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh >/dev/null
cargo build --release -q --bins --example encoding_bench -p ingest -p synth
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TOK=.cache/clip/tokenizer.json
.venv/bin/python bench/encoding/covid_tree.py ../shared/data/covid "$WORK/covid"
target/release/ingest mimic --root "$WORK/covid" --views all --tokenizer $TOK --out "$WORK/covid-shards" >/dev/null
target/release/synth --out "$WORK/world" --studies 200 --padchest-images 0 --size 1024 >/dev/null
target/release/ingest mimic --root "$WORK/world/mimic-cxr" --tokenizer $TOK --out "$WORK/synth-shards" >/dev/null
echo "## real images (covid, 249)"
target/release/examples/encoding_bench "$WORK/covid-shards"
echo
echo "## synthetic world (200 studies)"
target/release/examples/encoding_bench "$WORK/synth-shards"
