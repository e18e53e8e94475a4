#!/usr/bin/env bash
# The GPU benchmark: one call on the NVIDIA machine (../shared/gpu-machine.md), results under $OUT.
#
# That machine has Python 3.12, torch (CUDA 13), transformers 5.x, onnx, onnxscript, tokenizers,
# Pillow, numpy and the CPU onnxruntime, and reaches no package registry. It lacks
#   - onnxruntime-gpu: benchmarks/gpu-prepare.sh (on the development machine) splits its wheel into
#     50 MB parts in .ortgpu-aa, .ortgpu-ab, ...; carry one folder per call. Each call copies the
#     parts it finds to /tmp/ortgpu and, while some are missing, says which and exits 3 (quickly);
#     once all are there it joins them, checks the SHA-256, installs into /tmp/ortsite (never over
#     the CPU build) and puts that first on PYTHONPATH;
#   - open_clip_torch (+ ftfy, wcwidth): wheels in benchmarks/wheels/, carried with every call,
#     installed with --no-deps --target /tmp/benchsite.
# Then it checks that an ONNX Runtime session really runs on CUDAExecutionProvider (ONNX Runtime
# falls back to the CPU silently), and runs, with a timeout, from the working tree:
#   python -m clipcap.cli bench --provider cuda --backends onnxruntime,pytorch --precisions fp32,fp16
# writing $OUT/bench-gpu.{json,md} (and .png where matplotlib is), plus $OUT/nvidia-smi.txt,
# $OUT/env.txt and $OUT/gpu.log.
#
#   bash benchmarks/gpu.sh [EXTRA clipcap bench OPTIONS]   # e.g. --batch-sizes 1,8,32
# Settings (environment): BENCH_TIMEOUT (seconds, default 240), BACKENDS, PRECISIONS, PYTHON.
# Exit status: 0 done; 3 onnxruntime-gpu parts still missing (carry the next one); 4 a piece is
# missing or broken (the message says which); else the benchmark's own (124: it timed out).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
OUT="${OUT:-$root/gpu-out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
python="${PYTHON:-python3}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-240}"
BACKENDS="${BACKENDS:-onnxruntime,pytorch}"
PRECISIONS="${PRECISIONS:-fp32,fp16}"
ORTDIR=/tmp/ortgpu
ORTSITE=/tmp/ortsite
BENCHSITE=/tmp/benchsite
start=$SECONDS

say() { echo "gpu.sh [$((SECONDS - start))s]: $*"; }
fail() { echo "gpu.sh: error: $2" >&2; exit "$1"; }

# 0. the machine
if command -v nvidia-smi >/dev/null; then
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit \
    --format=csv >> "$OUT/nvidia-smi.txt" 2>&1
  say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
else
  fail 4 "no nvidia-smi: this is not the NVIDIA machine"
fi

# 1. onnxruntime-gpu: stage the parts carried this time, join when all are there
mkdir -p "$ORTDIR"
for d in .ortgpu-*/; do
  [[ -d $d ]] || continue
  cp "$d"/MANIFEST "$ORTDIR"/ 2>/dev/null
  for p in "$d"/part-*; do
    [[ -f $p ]] && cp "$p" "$ORTDIR"/ && say "staged $(basename "$p") ($(stat -c %s "$p") bytes) in $ORTDIR"
  done
done
if [[ ! -d $ORTSITE/onnxruntime ]]; then
  [[ -f $ORTDIR/MANIFEST ]] || fail 4 "onnxruntime-gpu is not installed and no part of it is here: run \
benchmarks/gpu-prepare.sh on the development machine, then carry .ortgpu-aa, .ortgpu-ab, ... one per call"
  wheel=$(sed -n 's/^wheel=//p' "$ORTDIR/MANIFEST")
  sha=$(sed -n 's/^sha256=//p' "$ORTDIR/MANIFEST")
  parts=$(sed -n 's/^parts=//p' "$ORTDIR/MANIFEST")
  missing=()
  for p in $parts; do [[ -f $ORTDIR/$p ]] || missing+=(".ortgpu-${p#part-}"); done
  if (( ${#missing[@]} )); then
    say "onnxruntime-gpu: $(( $(wc -w <<< "$parts") - ${#missing[@]} )) of $(wc -w <<< "$parts") parts here; carry next: ${missing[*]}"
    exit 3
  fi
  say "joining $parts into /tmp/$wheel"
  (cd "$ORTDIR" && cat $parts) > "/tmp/$wheel"
  got=$(sha256sum "/tmp/$wheel" | cut -d' ' -f1)
  if [[ $got != "$sha" ]]; then
    rm -f "/tmp/$wheel"
    fail 4 "the joined onnxruntime-gpu wheel has SHA-256 $got, the manifest says $sha: carry the parts again"
  fi
  "$python" -m pip install -q --no-index --no-deps --target "$ORTSITE" "/tmp/$wheel" \
    || fail 4 "pip could not install /tmp/$wheel into $ORTSITE"
  say "installed $wheel into $ORTSITE"
fi

# 2. open_clip_torch (+ ftfy, wcwidth) from the carried wheels
shopt -s nullglob
wheels=(benchmarks/wheels/*.whl)
shopt -u nullglob
if ! "$python" -c "import open_clip" 2>/dev/null && [[ ! -d $BENCHSITE/open_clip ]]; then
  (( ${#wheels[@]} )) || fail 4 "open_clip is missing and no wheel was carried: run benchmarks/gpu-prepare.sh, \
then carry benchmarks/wheels"
  "$python" -m pip install -q --no-index --no-deps --target "$BENCHSITE" "${wheels[@]}" \
    || fail 4 "pip could not install ${wheels[*]} into $BENCHSITE"
  say "installed $(basename -a "${wheels[@]}" | tr '\n' ' ')into $BENCHSITE"
fi

# 3. the environment: the GPU onnxruntime first, then the wheels, then this working tree (the
#    package imports from a source checkout as it is: no pip install needed); CUDA 13 and cuDNN
#    from the NVIDIA wheels that torch brings, for ONNX Runtime's CUDA provider
export PYTHONPATH="$ORTSITE:$BENCHSITE:$root${PYTHONPATH:+:$PYTHONPATH}"
nvlibs=$("$python" - <<'PY'
import glob, os, site
dirs = []
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for d in sorted(glob.glob(os.path.join(base, "nvidia", "**", "lib"), recursive=True)):
        if glob.glob(os.path.join(d, "*.so*")):
            dirs.append(d)
print(":".join(dirs))
PY
)
[[ -n $nvlibs ]] && export LD_LIBRARY_PATH="$nvlibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

"$python" - > "$OUT/env.txt" 2>&1 <<'PY'
import sys, tempfile
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("onnxruntime", ort.__version__, ort.__file__)
print("providers", ort.get_available_providers())
if "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit(f"{ort.__file__}: this onnxruntime has no CUDAExecutionProvider (the CPU build came first?)")
import open_clip, transformers
print("open_clip", open_clip.__version__, "transformers", transformers.__version__)
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add", [x], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
model.ir_version = 9
with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
    onnx.save(model, f.name)
    s = ort.InferenceSession(f.name, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    print("session providers", s.get_providers())
    assert s.run(None, {"x": np.ones(2, np.float32)})[0].tolist() == [2.0, 2.0]
    if s.get_providers()[0] != "CUDAExecutionProvider":
        sys.exit("ONNX Runtime fell back to the CPU: CUDA or cuDNN libraries are missing")
PY
rc=$?
cat "$OUT/env.txt"
(( rc == 0 )) || fail 4 "the environment check failed (see $OUT/env.txt): onnxruntime-gpu, CUDA or open_clip"
say "ONNX Runtime runs on CUDAExecutionProvider"

"$python" -m clipcap.cli bench --help > /dev/null 2>&1 \
  || fail 4 "this working tree has no \`clipcap bench\` (python -m clipcap.cli bench --help fails)"

# 4. the benchmark (models and bundles cached in /tmp/clipcap-bench: a second call on the same warm
#    machine skips the exports). The machine has no matplotlib: without it, no --plot here; the
#    plot is drawn afterwards from the JSON on a machine that has it (see benchmarks/README.md).
args=(--provider cuda --backends "$BACKENDS" --precisions "$PRECISIONS" --cache /tmp/clipcap-bench
      --out "$OUT/bench-gpu.json" --markdown "$OUT/bench-gpu.md")
if "$python" -c "import matplotlib" 2>/dev/null; then
  args+=(--plot "$OUT/bench-gpu.png")
else
  say "no matplotlib here: no --plot (draw it from bench-gpu.json afterwards)"
fi
say "clipcap bench ${args[*]} $* (timeout ${BENCH_TIMEOUT}s)"
timeout --kill-after=10 "$BENCH_TIMEOUT" "$python" -m clipcap.cli bench "${args[@]}" "$@"
rc=$?
if (( rc == 124 || rc == 137 )); then
  echo "gpu.sh: error: clipcap bench ran past ${BENCH_TIMEOUT}s (BENCH_TIMEOUT); what it wrote is in $OUT" >&2
elif (( rc != 0 )); then
  echo "gpu.sh: error: clipcap bench exited $rc" >&2
else
  [[ -f $OUT/bench-gpu.md ]] && cat "$OUT/bench-gpu.md"
  say "done: $(ls "$OUT" | tr '\n' ' ')"
fi
exit $rc
