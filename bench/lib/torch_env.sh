# Sourced by the benchmark scripts: PYTHON (.venv/bin/python where it
# exists, else python3) and, with `use_torch_libs`, LD_LIBRARY_PATH led by
# that torch's lib folder, where binaries built here and carried to another
# machine find libtorch.
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

use_torch_libs() {
  TORCH_LIB=$("$PYTHON" -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
  export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}
