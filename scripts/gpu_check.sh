#!/usr/bin/env bash
# The GPU check: runs scripts/gpu_bench.py (logits and training parity vs
# transformers + PEFT on the GPU, throughput and memory at the Llama-3.1-8B
# shape vs HF PEFT) with a loratune built against this machine's own CUDA
# torch, and writes OUT_DIR/report.md and OUT_DIR/report.json. Meant for a
# bare GPU machine with no network, in under 10 minutes.
#
#   bash scripts/gpu_check.sh OUT_DIR [--parts logits,train,bench]
#   bash scripts/gpu_check.sh OUT_DIR --cpu-dry-run   # the same pipeline, tiny, on the CPU
#   bash scripts/gpu_check.sh --prebuild              # prep, on a networked CPU machine
#   bash scripts/gpu_check.sh --fetch-debs            # prep, on a networked Debian machine
#   bash scripts/gpu_check.sh --check-bundle          # does the bundle load here? (no GPU needed)
#
# Exit status: 0 all checks passed; 1 a check or the build failed; 2 no GPU.
#
# Which loratune: LORATUNE_BIN if set; else the prebuilt bundle build-gpu-bundle/
# when it fits (below); else a build on the spot (about 5 minutes with 16 cores).
#
# The bundle (--prebuild, git-ignored: name build-gpu-bundle in the device
# tool's `carry`, ~10 MB): loratune compiled here against the GPU machine's
# torch version (LORATUNE_GPU_TORCH_SPEC, default torch==2.11.0, the CUDA 13.0
# wheel its image holds; a venv .venv-gpu of ~5 GB and scripts/build_cuda.sh
# in build-gpu-prebuild), the shared libraries it needs beyond glibc,
# libstdc++ and torch (yaml-cpp, sentencepiece, protobuf-lite, pcre2,
# utf8proc), and a stamp: the torch version and a hash of the sources
# (trainer/, cmake/, CMakeLists.txt). It is used only when the machine's torch
# version and the working tree's sources equal the stamp and `loratune
# --version` then loads; it runs through a wrapper that puts lib/ and that
# torch's libraries on LD_LIBRARY_PATH for loratune alone.
#
# Building there needs yaml-cpp, sentencepiece, pcre2, utf8proc, CLI11,
# nlohmann-json and pkg-config (not gtest: tests are not built). Those the
# machine lacks come from the .deb files that --fetch-debs puts into
# build-debs/ (git-ignored, 3.3 MB: carry it too), unpacked with dpkg-deb -x
# into BUILD_DIR/deps, never into /.
#
# Environment:
#   LORATUNE_GPU_PYTHON  python with torch (CUDA), transformers, peft (default python3;
#                        the dry run uses .venv/bin/python)
#   LORATUNE_BUILD_DIR   build folder (default build-gpu; dry run build-gpu-dry)
#   LORATUNE_BIN         use this loratune executable instead of the bundle or a build
#   LORATUNE_NO_BUNDLE=1 build even when the bundle fits
#   LORATUNE_GPU_TORCH_SPEC    the torch that --prebuild builds against (default torch==2.11.0)
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

bundle=$root/build-gpu-bundle

# A hash of the sources loratune is built from (paths and contents).
source_hash() {
  (cd "$root" && find trainer cmake CMakeLists.txt -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum | sha256sum | cut -c1-16)
}

# bundle_wrapper PYTHON WRAPPER: prints why the bundle cannot serve PYTHON's
# torch here, or nothing when it can; then WRAPPER runs it (a shell script
# that puts the bundle's lib/ and that torch's libraries on LD_LIBRARY_PATH).
bundle_wrapper() {
  local python=$1 wrapper=$2 want_torch want_src have_torch libs err
  if [[ ! -x $bundle/loratune || ! -f $bundle/stamp ]]; then
    echo "no bundle in $bundle (scripts/gpu_check.sh --prebuild makes one)"
    return
  fi
  want_torch=$(sed -n 's/^torch=//p' "$bundle/stamp")
  want_src=$(sed -n 's/^sources=//p' "$bundle/stamp")
  if ! have_torch=$("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    echo "$python has no torch"
    return
  fi
  if [[ $have_torch != "$want_torch" ]]; then
    echo "the bundle is built for torch $want_torch, $python has $have_torch"
    return
  fi
  if [[ $(source_hash) != "$want_src" ]]; then
    echo "trainer/, cmake/ or CMakeLists.txt changed since the bundle was built"
    return
  fi
  libs=$("$python" -c 'import glob, os, torch
d = os.path.dirname(torch.__file__)
print(":".join([os.path.join(d, "lib")] + sorted(glob.glob(os.path.join(os.path.dirname(d), "nvidia", "*", "lib")))))')
  mkdir -p "$(dirname "$wrapper")"
  cat > "$wrapper" <<WRAP
#!/bin/sh
# loratune of $bundle with the torch of $python (written by scripts/gpu_check.sh)
LD_LIBRARY_PATH="$bundle/lib:$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$bundle/loratune" "\$@"
WRAP
  chmod +x "$wrapper"
  if ! err=$("$wrapper" --version 2>&1); then
    echo "the bundle does not load here: $(printf '%s\n' "$err" | head -3)"
  fi
}

if [[ ${1:-} == --prebuild ]]; then
  # Builds loratune against the GPU machine's torch here and packs it (header).
  spec=${LORATUNE_GPU_TORCH_SPEC:-torch==2.11.0}
  pre_dir=$root/build-gpu-prebuild
  venv=$root/.venv-gpu
  sources=$(source_hash)
  LORATUNE_CUDA_TORCH_SPEC=$spec LORATUNE_CUDA_VENV=$venv LORATUNE_BUILD_DIR=$pre_dir \
    bash scripts/build_cuda.sh loratune
  if [[ $(source_hash) != "$sources" ]]; then
    echo "gpu_check: the sources changed during the build; run --prebuild again" >&2
    exit 1
  fi
  rm -rf "$bundle"
  mkdir -p "$bundle/lib"
  cp "$pre_dir/loratune" "$bundle/"
  # Shared libraries beyond glibc, libstdc++/libgcc, torch's venv and the CUDA toolkit.
  ldd "$bundle/loratune" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r lib; do
    case $(basename "$lib") in
      libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | libutil.so* | libresolv.so* | \
        ld-linux* | libstdc++.so* | libgcc_s.so*) continue ;;  # glibc and the compiler runtime
    esac
    [[ $lib == "$venv"/* || $lib == "$pre_dir"/* || $lib == /usr/local/cuda* ]] && continue
    cp -L "$lib" "$bundle/lib/"
  done
  {
    "$venv/bin/python" -c 'import torch; print("torch=" + torch.__version__); print("cuda=" + torch.version.cuda)'
    echo "sources=$sources"
    echo "built=$(date -u '+%Y-%m-%d %H:%M UTC') on $(. /etc/os-release && echo "$PRETTY_NAME"), $(c++ --version | head -1)"
  } > "$bundle/stamp" 2>/dev/null
  echo "[gpu_check] bundle $bundle ($(du -sh "$bundle" | cut -f1)): loratune, lib/{$(ls "$bundle/lib" | paste -sd,)}"
  cat "$bundle/stamp"
  echo "[gpu_check] carry build-gpu-bundle (and build-debs, for a build there if it does not fit)"
  exit 0
fi
if [[ ${1:-} == --check-bundle ]]; then
  why=$(bundle_wrapper "${LORATUNE_GPU_PYTHON:-python3}" "$bundle/run-loratune")
  if [[ -n $why ]]; then
    echo "gpu_check: $why" >&2
    exit 1
  fi
  echo "[gpu_check] the bundle loads: $("$bundle/run-loratune" --version) ($(sed -n 's/^torch=//p' "$bundle/stamp"))"
  exit 0
fi
if [[ ${1:-} == --fetch-debs ]]; then
  mkdir -p "$deb_dir"
  (cd "$deb_dir" && apt-get download "${deb_packages[@]}")
  du -sh "$deb_dir"
  exit 0
fi
if [[ $# -lt 1 || $1 == -* ]]; then
  echo "usage: bash scripts/gpu_check.sh OUT_DIR [--cpu-dry-run] [--parts LIST]" \
    "| --prebuild | --fetch-debs | --check-bundle" >&2
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

why_not=""
if [[ -z ${LORATUNE_BIN:-} ]]; then
  if [[ -n ${LORATUNE_NO_BUNDLE:-} ]]; then
    why_not="LORATUNE_NO_BUNDLE is set"
  else
    why_not=$(bundle_wrapper "$python" "$bundle/run-loratune")
  fi
fi
if [[ -n ${LORATUNE_BIN:-} ]]; then
  bin=$LORATUNE_BIN
  log "using $bin (LORATUNE_BIN; not building)"
elif [[ -z $why_not ]]; then
  bin=$bundle/run-loratune
  log "using the prebuilt bundle ($(grep -E '^(torch|built)=' "$bundle/stamp" | paste -sd' '); not building)"
else
  log "building here: $why_not"
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
