#!/usr/bin/env bash
# Builds loratune against a CUDA LibTorch in its own folder, so that errors in
# the CUDA-only code (LORATUNE_WITH_CUDA) show on a machine without a GPU.
# Compiles and links only: nothing here needs or touches a GPU. Safe to run
# again (the venv is reused, the build is incremental).
#
#   bash scripts/build_cuda.sh [TARGET ...]     # default: every target
#
# Environment:
#   LORATUNE_CUDA_VENV        venv holding the CUDA torch (default .venv-cuda)
#   LORATUNE_CUDA_TORCH_SPEC  pip requirement (default torch==2.14.1, CUDA 13,
#                             ~5.5 GB; its wheels must be reachable by pip)
#   LORATUNE_BUILD_DIR        build folder (default build-cuda)
#   LORATUNE_JOBS             parallel jobs (default 2)
#   CUDA_HOME                 CUDA toolkit with nvcc 13 (default /usr/local/cuda)
#   TORCH_CUDA_ARCH_LIST      default 9.0 (Hopper)
# Assumes the Debian packages of scripts/setup.sh are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${LORATUNE_CUDA_VENV:-.venv-cuda}
spec=${LORATUNE_CUDA_TORCH_SPEC:-torch==2.14.1}
build_dir=${LORATUNE_BUILD_DIR:-build-cuda}
jobs=${LORATUNE_JOBS:-2}
log() { printf '[build_cuda] %s\n' "$*"; }
SECONDS=0
export PYTHONWARNINGS=ignore  # torch without numpy warns on import

if [[ ! -x $venv/bin/python ]]; then
  log "creating $venv"
  python3 -m venv "$venv"
fi
stamp=$venv/.loratune-torch
if [[ ! -f $stamp || $(cat "$stamp") != "$spec" ]]; then
  log "installing $spec into $venv (large: CUDA libraries)"
  "$venv/bin/pip" install -q "$spec"
  echo "$spec" > "$stamp"
fi
"$venv/bin/python" -c 'import torch; assert torch.version.cuda, "not a CUDA build"; print("[build_cuda] torch", torch.__version__, "CUDA", torch.version.cuda)'

# shellcheck source=scripts/cuda_env.sh
source scripts/cuda_env.sh
cuda_cmake_args "$venv/bin/python" "$build_dir"
ref_python=$root/.venv/bin/python
[[ -x $ref_python ]] || ref_python=$root/$venv/bin/python
log "configuring $build_dir"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "-DLORATUNE_PYTHON=$ref_python" \
  "${CUDA_CMAKE_ARGS[@]}" > "$build_dir/configure.log" 2>&1 || {
  tail -30 "$build_dir/configure.log"
  log "configure failed (full log: $build_dir/configure.log)"
  exit 1
}
grep 'loratune:' "$build_dir/configure.log" | sed 's/^-- /[build_cuda] /'
if ! grep -q 'CUDA code 1' "$build_dir/configure.log"; then
  log "error: this LibTorch was not detected as a CUDA build"
  exit 1
fi
log "building ($jobs jobs) ${*:-all targets}"
cmake --build "$build_dir" -j "$jobs" ${1:+--target "$@"}
log "done in ${SECONDS}s: $build_dir/loratune (CUDA LibTorch)"
