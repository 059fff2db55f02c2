#!/usr/bin/env bash
# The GPU check: builds loratune against this machine's own CUDA torch, then
# runs scripts/gpu_bench.py (logits and training parity vs transformers +
# PEFT on the GPU, throughput and memory at the Llama-3.1-8B shape vs HF
# PEFT) and writes OUT_DIR/report.md and OUT_DIR/report.json. Meant for a
# bare GPU machine with no network, in under 10 minutes.
#
#   bash scripts/gpu_check.sh OUT_DIR [--parts logits,train,bench]
#   bash scripts/gpu_check.sh OUT_DIR --cpu-dry-run   # the same pipeline, tiny, on the CPU
#   bash scripts/gpu_check.sh --fetch-debs            # prep, on a networked Debian machine
#
# Exit status: 0 all checks passed; 1 a check or the build failed; 2 no GPU.
#
# Libraries: the build needs yaml-cpp, sentencepiece, pcre2, utf8proc, CLI11,
# nlohmann-json and pkg-config (not gtest: tests are not built). Those the
# machine lacks come from the .deb files that --fetch-debs puts into
# build-debs/ (git-ignored: name it in the device tool's `carry`), unpacked
# with dpkg-deb -x into BUILD_DIR/deps, never into /.
#
# Environment:
#   LORATUNE_GPU_PYTHON  python with torch (CUDA), transformers, peft (default python3;
#                        the dry run uses .venv/bin/python)
#   LORATUNE_BUILD_DIR   build folder (default build-gpu; dry run build-gpu-dry)
#   LORATUNE_BIN         use this loratune executable instead of building one
#   LORATUNE_JOBS        parallel build jobs (default: all cores)
#   LORATUNE_FORCE_DEBS=1      use the .deb files even when the system has the libraries
#   LORATUNE_CONFIGURE_ONLY=1  stop after configuring (a check of the two variables above)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
SECONDS=0
log() { printf '[gpu_check %3ds] %s\n' "$SECONDS" "$*"; }
deb_dir=$root/build-debs
deb_packages=(libyaml-cpp-dev libyaml-cpp0.7 libsentencepiece-dev libsentencepiece0
              libprotobuf-lite32 libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0
              libpcre2-posix3 libutf8proc-dev libutf8proc2 libcli11-dev nlohmann-json3-dev
              pkgconf pkgconf-bin libpkgconf3 pkg-config)

if [[ ${1:-} == --fetch-debs ]]; then
  mkdir -p "$deb_dir"
  (cd "$deb_dir" && apt-get download "${deb_packages[@]}")
  du -sh "$deb_dir"
  exit 0
fi
if [[ $# -lt 1 || $1 == -* ]]; then
  echo "usage: bash scripts/gpu_check.sh OUT_DIR [--cpu-dry-run] [--parts LIST] | --fetch-debs" >&2
  exit 1
fi
out=$1
shift
dry=0
parts=logits,train,bench
while (($#)); do
  case $1 in
    --cpu-dry-run) dry=1 ;;
    --parts) parts=$2; shift ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 1 ;;
  esac
  shift
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- a GPU, or stop at once ------------------------------------------------------
if ((dry)); then
  python=${LORATUNE_GPU_PYTHON:-$root/.venv/bin/python}
  device=cpu
  build_dir=${LORATUNE_BUILD_DIR:-build-gpu-dry}
else
  python=${LORATUNE_GPU_PYTHON:-python3}
  device=cuda
  build_dir=${LORATUNE_BUILD_DIR:-build-gpu}
  why=""
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    why="nvidia-smi finds no GPU"
  elif ! "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
      >/dev/null 2>&1; then
    why="$python's torch sees no CUDA device"
  fi
  if [[ -n $why ]]; then
    echo "gpu_check: no GPU on this machine ($why); nothing was run" | tee "$out/report.md" >&2
    printf '{"ok": false, "error": "no GPU: %s"}\n' "$why" > "$out/report.json"
    exit 2
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/[gpu_check] /'
fi
"$python" -c 'import torch, transformers, peft; print("[gpu_check] torch", torch.__version__, "CUDA", torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__)'

# --- build -----------------------------------------------------------------------
missing_libs() {
  local m=()
  command -v pkg-config >/dev/null || m+=(pkg-config)
  if command -v pkg-config >/dev/null; then
    for p in libpcre2-8 sentencepiece libutf8proc; do pkg-config --exists $p || m+=("$p"); done
  fi
  for c in yaml-cpp CLI11 nlohmann_json; do
    compgen -G "/usr/lib/x86_64-linux-gnu/cmake/$c*" >/dev/null ||
      compgen -G "/usr/share/cmake/$c*" >/dev/null || compgen -G "/usr/lib/cmake/$c*" >/dev/null ||
      compgen -G "/usr/local/lib/cmake/$c*" >/dev/null || compgen -G "/usr/local/share/cmake/$c*" \
      >/dev/null || m+=("$c")
  done
  echo "${m[*]}"
}

if [[ -n ${LORATUNE_BIN:-} ]]; then
  bin=$LORATUNE_BIN
  log "using $bin (LORATUNE_BIN; not building)"
else
  mkdir -p "$build_dir"
  build_dir=$(cd "$build_dir" && pwd)
  cmake_args=(-S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORATUNE_BUILD_TESTS=OFF
              "-DLORATUNE_PYTHON=$(command -v "$python")")
  for tool in cmake ninja c++; do
    command -v $tool >/dev/null || { echo "gpu_check: $tool is not on PATH" >&2; exit 1; }
  done
  missing=$(missing_libs)
  [[ -n ${LORATUNE_FORCE_DEBS:-} ]] && missing="(forced) $(missing_libs)"
  if [[ -n $missing ]]; then
    if ! compgen -G "$deb_dir/*.deb" >/dev/null; then
      echo "gpu_check: missing libraries ($missing) and no .deb files in $deb_dir" \
        "(run scripts/gpu_check.sh --fetch-debs where apt works, and carry build-debs)" >&2
      exit 1
    fi
    deps=$build_dir/deps
    log "missing: $missing; unpacking $(ls "$deb_dir"/*.deb | wc -l) .deb files into $deps"
    rm -rf "$deps"
    mkdir -p "$deps"
    for f in "$deb_dir"/*.deb; do dpkg-deb -x "$f" "$deps"; done
    # .pc files name prefix=/usr: point them at the unpacked tree.
    find "$deps" -name '*.pc' -exec sed -i "s#^prefix=/usr#prefix=$deps/usr#" {} +
    multi=$deps/usr/lib/x86_64-linux-gnu
    export PATH=$deps/usr/bin:$PATH
    export PKG_CONFIG_PATH=$multi/pkgconfig:$deps/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}
    export LD_LIBRARY_PATH=$multi:${LD_LIBRARY_PATH:-}
    cmake_args+=("-DCMAKE_PREFIX_PATH=$deps/usr;$multi/cmake;$deps/usr/share/cmake"
                 "-DPKG_CONFIG_EXECUTABLE=$(command -v pkg-config || echo "$deps/usr/bin/pkgconf")")
  fi
  if ((!dry)); then
    # shellcheck source=scripts/cuda_env.sh
    source scripts/cuda_env.sh
    cuda_cmake_args "$python" "$build_dir"
    cmake_args+=("${CUDA_CMAKE_ARGS[@]}")
  fi
  log "configuring $build_dir"
  if ! cmake "${cmake_args[@]}" > "$out/configure.log" 2>&1; then
    tail -25 "$out/configure.log" >&2
    echo "gpu_check: configure failed (log: $out/configure.log)" >&2
    exit 1
  fi
  grep 'loratune:' "$out/configure.log" | sed 's/^-- /[gpu_check] /'
  if [[ -n ${LORATUNE_CONFIGURE_ONLY:-} ]]; then log "configured (LORATUNE_CONFIGURE_ONLY)"; exit 0; fi
  log "building loratune ($(nproc) jobs)"
  if ! cmake --build "$build_dir" -j "${LORATUNE_JOBS:-$(nproc)}" --target loratune \
      > "$out/build.log" 2>&1; then
    grep -m5 -B2 -A8 'error' "$out/build.log" >&2 || tail -30 "$out/build.log" >&2
    echo "gpu_check: build failed (log: $out/build.log)" >&2
    exit 1
  fi
  bin=$build_dir/loratune
  log "built $bin"
fi

# --- checks and measurements ---------------------------------------------------------
work=${LORATUNE_GPU_WORK:-$build_dir/gpu-work}
mkdir -p "$work"
args=(--loratune "$bin" --work "$work" --out "$out" --device "$device" --parts "$parts")
((dry)) && args+=(--dry-run)
rc=0
PYTHONUNBUFFERED=1 "$python" scripts/gpu_bench.py "${args[@]}" 2>&1 | tee "$out/bench.log" || rc=$?
log "done (exit $rc); report: $out/report.md"
exit $rc
