#!/usr/bin/env bash
# Prepare, on the development machine, what benchmarks/gpu.sh needs on the NVIDIA machine, which
# reaches no package registry (see ../shared/gpu-machine.md):
#   - onnxruntime-gpu 1.31.1 for CPython 3.12 (one ~255 MB wheel, CUDA 13): downloaded from PyPI,
#     split into 50 MB parts, one part per folder .ortgpu-aa, .ortgpu-ab, ... at the repository
#     root (git-ignored through .git/info/exclude), each folder with a MANIFEST (the wheel's name,
#     size, SHA-256 and its parts) so that gpu.sh can join and check them;
#   - open_clip_torch, ftfy and wcwidth (pure Python, small): wheels in benchmarks/wheels/
#     (git-ignored).
# Both are git-ignored, so each must be named in the device tool's `carry`: benchmarks/wheels with
# every call, one .ortgpu-XX folder per call (64 MiB at most travels at a time).
# Idempotent: what is already there (and checks out) is kept; --force downloads again.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ORT_VERSION="${ORT_VERSION:-1.31.1}"
OPEN_CLIP_VERSION="${OPEN_CLIP_VERSION:-}"  # default: the newest on PyPI
PART_SIZE=50M
python="${PYTHON:-python3}"
force=0
[[ "${1:-}" == "--force" ]] && force=1

# 1. keep the parts and the wheels out of git
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.ortgpu-*/' "$exclude" 2>/dev/null || { echo '/.ortgpu-*/' >> "$exclude"; echo "gpu-prepare: added /.ortgpu-*/ to $exclude"; }
grep -qxF '/benchmarks/wheels/' "$exclude" 2>/dev/null || { echo '/benchmarks/wheels/' >> "$exclude"; echo "gpu-prepare: added /benchmarks/wheels/ to $exclude"; }

# 2. open_clip_torch and the two pure-Python packages it imports that the GPU machine lacks (ftfy
#    and its wcwidth), --no-deps: torch, torchvision, timm, regex ... are there already
mkdir -p benchmarks/wheels
for spec in "open_clip_torch${OPEN_CLIP_VERSION:+==$OPEN_CLIP_VERSION}" ftfy wcwidth; do
  name=${spec%%=*}
  if [[ $force == 0 ]] && ls benchmarks/wheels/"$name"-*.whl >/dev/null 2>&1; then
    echo "gpu-prepare: have $(ls benchmarks/wheels/"$name"-*.whl)"
    continue
  fi
  rm -f benchmarks/wheels/"$name"-*.whl
  echo "gpu-prepare: pip download $spec"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    -d benchmarks/wheels "$spec"
  echo "gpu-prepare: have $(ls benchmarks/wheels/"$name"-*.whl)"
done

# 3. onnxruntime-gpu, in parts
manifest_ok() {  # every part there, and the parts join to the manifest's SHA-256
  local m=.ortgpu-aa/MANIFEST
  [[ -f $m ]] || return 1
  local sha parts p
  sha=$(sed -n 's/^sha256=//p' "$m")
  parts=$(sed -n 's/^parts=//p' "$m")
  for p in $parts; do [[ -f .ortgpu-${p#part-}/$p ]] || return 1; done
  [[ "$(for p in $parts; do cat ".ortgpu-${p#part-}/$p"; done | sha256sum | cut -d' ' -f1)" == "$sha" ]]
}
if [[ $force == 0 ]] && manifest_ok; then
  echo "gpu-prepare: have $(sed -n 's/^wheel=//p' .ortgpu-aa/MANIFEST) in parts: $(ls -d .ortgpu-* | tr '\n' ' ')"
else
  w=$(mktemp -d)
  trap 'rm -rf "$w"' EXIT
  echo "gpu-prepare: pip download onnxruntime-gpu==$ORT_VERSION (cp312, manylinux_2_28_x86_64; ~255 MB)"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    -d "$w" "onnxruntime-gpu==$ORT_VERSION"
  wheel=$(ls "$w"/onnxruntime_gpu-*.whl)
  rm -rf .ortgpu-*
  split -b "$PART_SIZE" "$wheel" "$w/part-"
  parts=$(cd "$w" && ls part-* | tr '\n' ' ')
  {
    echo "wheel=$(basename "$wheel")"
    echo "size=$(stat -c %s "$wheel")"
    echo "sha256=$(sha256sum "$wheel" | cut -d' ' -f1)"
    echo "parts=${parts% }"
  } > "$w/MANIFEST"
  for p in $parts; do
    d=.ortgpu-${p#part-}
    mkdir -p "$d" && cp "$w/$p" "$w/MANIFEST" "$d/"
  done
  manifest_ok || { echo "gpu-prepare: error: the parts do not join to the wheel" >&2; exit 1; }
  echo "gpu-prepare: $(basename "$wheel") in parts: $(ls -d .ortgpu-* | tr '\n' ' ')"
fi

echo "gpu-prepare: ready. With the device tool, from the repository root, one call per part:"
for d in .ortgpu-*; do
  echo "  run(command='bash benchmarks/gpu.sh', carry=['benchmarks/wheels', '$d'])"
done
echo "  (the last call, with every part on the machine, joins them, installs and benchmarks;"
echo "   later calls on the same warm machine: carry=['benchmarks/wheels'] only)"
