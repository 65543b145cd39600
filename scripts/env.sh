# Sourced by the project's scripts (and by hand before plain cargo commands):
# the `model` crate builds against libtorch from the project's .venv
# (torch==2.11.0 from PyPI). torch-sys and crates/model/build.rs ask the
# first `python` on PATH where torch lives; the binaries then carry that
# folder as their library search path, so running them needs nothing more.
_mmclip_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LIBTORCH_USE_PYTORCH=1
export PATH="$_mmclip_root/.venv/bin:$PATH"
unset _mmclip_root
