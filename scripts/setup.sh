#!/usr/bin/env bash
# One-time (and idempotent) setup of everything the project needs beyond the
# Rust toolchain: Debian build tools for the JPEG-LS codec, a project-local
# Python environment (.venv), and CLIP's tokenizer built from the vocabulary
# in the open_clip_torch wheel. Safe to run again: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.cache
OPEN_CLIP=open_clip_torch==3.3.0

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# charls (JPEG-LS) builds with cmake.
if ! command -v cmake >/dev/null; then
  say "installing cmake (Debian package)"
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq cmake >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! cmp -s python/requirements.txt .venv/.requirements; then
  say "creating .venv with python/requirements.txt"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r python/requirements.txt
  cp python/requirements.txt .venv/.requirements
fi

mkdir -p "$CACHE/clip"
VOCAB=$CACHE/clip/bpe_simple_vocab_16e6.txt.gz
if [ ! -s "$VOCAB" ]; then
  say "fetching CLIP's BPE vocabulary from the $OPEN_CLIP wheel"
  rm -rf "$CACHE/wheel" && mkdir -p "$CACHE/wheel"
  .venv/bin/pip download -q --no-deps "$OPEN_CLIP" -d "$CACHE/wheel"
  .venv/bin/python - "$CACHE/wheel" "$CACHE/clip" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/open_clip_torch-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    for name in ("open_clip/bpe_simple_vocab_16e6.txt.gz", "open_clip/tokenizer.py"):
        with open(sys.argv[2] + "/" + name.split("/")[1], "wb") as f:
            f.write(z.read(name))
PY
fi

if [ ! -s "$CACHE/clip/tokenizer.json" ]; then
  say "building tokenizer.json"
  # The dev profile: the test command builds it anyway (dependencies optimised).
  cargo run -q -p ingest -- tokenizer --vocab "$VOCAB" --out "$CACHE/clip/tokenizer.json"
fi
say "ready"
