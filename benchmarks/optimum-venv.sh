#!/usr/bin/env bash
# Make benchmarks/.venv-optimum: the venv `clipcap bench --backends optimum` runs its worker in
# (benchmarks/optimum_worker.py). optimum-onnx accepts only transformers < 4.58, while the project's
# dev venv has transformers 5.x, so the optimum baseline lives in a venv of its own.
#
# Idempotent: a venv whose stamp lists the same requirements is left as it is; anything else
# (missing, half-made, other requirements) is (re)installed. Run from anywhere; `make bench-venv`.
#   PYTHON=python3.12 benchmarks/optimum-venv.sh     # another interpreter (default: python3)
#   benchmarks/optimum-venv.sh --force               # remake it from scratch
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-optimum"
python="${PYTHON:-python3}"
stamp="$venv/.installed"

# torch and torchvision are named together: each torchvision release pins one torch release, and
# naming both lets pip pick a matching pair (on the development machines a pip constraint caps
# them at the pair on the local disk: torch 2.14.1 + torchvision 0.29.1).
requirements=(
  "optimum-onnx"
  "optimum"
  "transformers==4.57.6"
  "onnx"
  "onnxruntime"
  "torch"
  "torchvision"
  "numpy"
)
want="${requirements[*]}"

if [[ "${1:-}" == "--force" ]]; then
  echo "optimum-venv: --force: removing $venv"
  rm -rf "$venv"
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--force]" >&2
  exit 2
fi

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "optimum-venv: $venv is up to date ($want); nothing to do"
  "$venv/bin/python" - <<'PY'
from importlib.metadata import version
print("optimum-venv: " + ", ".join(f"{p} {version(p)}" for p in
      ("optimum-onnx", "optimum", "transformers", "onnxruntime", "onnx", "torch", "torchvision")))
PY
  exit 0
fi

start=$SECONDS
if [[ ! -x "$venv/bin/python" ]]; then
  echo "optimum-venv: creating $venv with $("$python" --version 2>&1) ($python)"
  "$python" -m venv "$venv"
else
  echo "optimum-venv: $venv exists but its requirements differ or were never completed: installing"
fi
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
echo "optimum-venv: pip install ${requirements[*]}"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
"$venv/bin/python" - <<'PY'
import importlib
from importlib.metadata import version

import transformers

assert transformers.__version__.startswith("4.57."), transformers.__version__
for module in ("optimum.onnxruntime", "optimum.exporters.onnx", "onnxruntime", "torch", "torchvision"):
    importlib.import_module(module)
print("optimum-venv: installed " + ", ".join(f"{p} {version(p)}" for p in
      ("optimum-onnx", "optimum", "transformers", "onnxruntime", "onnx", "torch", "torchvision")))
PY
echo "$want" > "$stamp"
echo "optimum-venv: done in $((SECONDS - start)) s: $venv/bin/python benchmarks/optimum_worker.py --self-test"
