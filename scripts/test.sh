#!/usr/bin/env bash
# Runs every test of the project: Rust unit and end-to-end tests, then the
# Python tests. Sets up what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# The end-to-end tests run the binaries: build them first, in the same profile.
cargo build --workspace --bins
cargo test --workspace
.venv/bin/python -m pytest -q python/tests
