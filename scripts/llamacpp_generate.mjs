// scripts/llamacpp_generate.mjs — greedy answers from a GGUF file in a real
// llama.cpp (npm node-llama-cpp@3.21.1, its prebuilt CPU binary; installed by
// tests/llamacpp/fetch_node_llama_cpp.sh). scripts/quickstart.sh runs it on the
// fine-tuned model's Q8_0 GGUF, on the very prompt ids loratune's own chat used.
//
// usage: node scripts/llamacpp_generate.mjs LIB_DIR MODEL.gguf PROMPTS.jsonl MAX_NEW_TOKENS
//   LIB_DIR         where `npm i -E node-llama-cpp@3.21.1 --prefix LIB_DIR` installed it
//   PROMPTS.jsonl   one JSON object per line with "prompt_ids": [ids] (the
//                   chat-formatted prompt, as `loratune generate --json` reports it)
// Prints one JSON object per prompt: {"ids": [generated ids, without the
// end-of-generation token], "text": their text, "stop": "eog" | "length"}.
// Greedy (temperature 0), stopping at the model's end-of-generation tokens or
// after MAX_NEW_TOKENS tokens, as `loratune generate` does.
import {readFileSync} from "node:fs";
import {availableParallelism} from "node:os";
import {join} from "node:path";

const [libDir, modelPath, promptsPath, maxArg] = process.argv.slice(2);
const maxNew = Number(maxArg);
if (!promptsPath || !Number.isInteger(maxNew) || maxNew < 1) {
  console.error("usage: node llamacpp_generate.mjs LIB_DIR MODEL.gguf PROMPTS.jsonl MAX_NEW_TOKENS");
  process.exit(2);
}
const {getLlama} = await import(join(libDir, "node_modules/node-llama-cpp/dist/index.js"));
const prompts = readFileSync(promptsPath, "utf8")
                    .split("\n")
                    .filter((l) => l.trim())
                    .map((l, i) => {
                      const ids = JSON.parse(l).prompt_ids;
                      if (!Array.isArray(ids) || ids.length === 0) {
                        console.error(`${promptsPath}:${i + 1}: no "prompt_ids" list`);
                        process.exit(2);
                      }
                      return ids;
                    });
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
const longest = Math.max(...prompts.map((p) => p.length));
// More threads than cores makes llama.cpp's spinning workers crawl on a busy machine.
const context = await model.createContext({
  contextSize: longest + maxNew + 8,
  threads: Math.min(4, availableParallelism()),
});
const seq = context.getSequence();
for (const ids of prompts) {
  await seq.clearHistory();
  const out = [];
  let stop = "length";
  for await (const token of seq.evaluate(ids, {temperature: 0, yieldEogToken: true})) {
    if (model.isEogToken(token)) {
      stop = "eog";
      break;
    }
    out.push(token);
    if (out.length >= maxNew) break;
  }
  console.log(JSON.stringify({ids: out, text: model.detokenize(out), stop}));
}
await context.dispose();
await model.dispose();
await llama.dispose();
