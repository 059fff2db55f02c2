#!/bin/sh
# Fixture for tests/llamacpp: installs node-llama-cpp@3.21.1 (a real llama.cpp
# with a prebuilt CPU binary, ~730 MB) once into $1 (default
# ~/.cache/loratune/npm-llamacpp). Without node or npm it does nothing: the
# test then skips. npm 11 may block the package's postinstall script; the
# prebuilt binary works without it.
set -eu
dir=${1:-$HOME/.cache/loratune/npm-llamacpp}
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node/npm not found: the llama.cpp check will be skipped"
  exit 0
fi
if [ -f "$dir/node_modules/node-llama-cpp/package.json" ] &&
   grep -q '"version": "3.21.1"' "$dir/node_modules/node-llama-cpp/package.json"; then
  echo "node-llama-cpp 3.21.1 already in $dir"
  exit 0
fi
mkdir -p "$dir"
npm i -E node-llama-cpp@3.21.1 --prefix "$dir" --no-audit --no-fund
