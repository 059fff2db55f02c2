// tests/llamacpp/check.mjs — the llama.cpp side of tests/llamacpp/check_llamacpp.py:
// a real llama.cpp (npm node-llama-cpp@3.21.1, its prebuilt CPU binary)
// loads GGUF files loratune wrote and reports what it computes.
//
// usage: node check.mjs LIB_DIR JOB.json OUT_DIR
//   LIB_DIR   where `npm i -E node-llama-cpp@3.21.1 --prefix LIB_DIR` installed it
//   JOB.json  {"runs": [{"name", "model", "lora"?: adapter.gguf, "vocab": V, "prompts": [[ids]],
//                        "greedy": [ids], "n_greedy": N, "texts": [strings]}]}
// For each run writes OUT_DIR/NAME.json:
//   {"vocab": V, "top": [[id, p] x 5 per prompt], "greedy": [ids], "tokens": [[ids] per text]
//    (model.tokenize(text, true): special-token text becomes its token, no BOS),
//    "prob_sum": [per prompt], "add_bos": bool, "add_eos": bool, "retyped": [ids llama.cpp
//    made control tokens on load]}
// and OUT_DIR/NAME.probs.f32: the full next-token distribution after the last
// id of each prompt, float32 little-endian, prompts x V.
import {readFileSync, writeFileSync} from "node:fs";
import {join} from "node:path";

const [libDir, jobPath, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node check.mjs LIB_DIR JOB.json OUT_DIR");
  process.exit(2);
}
const {getLlama} = await import(join(libDir, "node_modules/node-llama-cpp/dist/index.js"));
const job = JSON.parse(readFileSync(jobPath, "utf8"));
// llama.cpp announces the vocabulary entries it re-types on load ("control-looking
// token: ID '...' was not control-type"); they are reported, since llama.cpp then
// parses their text as the special token where transformers does not.
let retyped = [];
const llama = await getLlama({
  gpu: false,
  build: "never",
  logLevel: "warn",
  logger(level, message) {
    const m = /control-looking token: *(\d+)/.exec(message);
    if (m) retyped.push(Number(m[1]));
    else if (level === "error") console.error(message);
  },
});

for (const run of job.runs) {
  retyped = [];
  const model = await llama.loadModel({modelPath: run.model});
  // An F32 KV cache (llama.cpp's default is F16) and no flash attention (on by
  // default; on the CPU it rounds Q to F16: max |dp| 5e-4 instead of 8e-5 on
  // SmolLM2), so that what differs is the file.
  const contextOptions = {
    contextSize: 256,
    flashAttention: false,
    threads: 1,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
  };
  if (run.lora) contextOptions.lora = {adapters: [{filePath: run.lora, scale: 1}]};
  const context = await model.createContext(contextOptions);
  const seq = context.getSequence();
  const vocab = run.vocab;  // the embedding rows (the caller knows them)

  const probs = new Float32Array(run.prompts.length * vocab);
  const top = [], probSum = [];
  for (let p = 0; p < run.prompts.length; ++p) {
    const ids = run.prompts[p];
    await seq.clearHistory();
    const res = await seq.controlledEvaluate([
      ...ids.slice(0, -1),
      [ids[ids.length - 1], {generateNext: {probabilities: true, token: true}}],
    ]);
    const map = res[ids.length - 1].next.probabilities;
    let sum = 0;
    for (const [id, v] of map) {
      probs[p * vocab + id] = v;
      sum += v;
    }
    probSum.push(sum);
    top.push([...map.entries()].slice(0, 5));
  }
  writeFileSync(join(outDir, `${run.name}.probs.f32`), Buffer.from(probs.buffer));

  const greedy = [];
  if (run.greedy) {
    await seq.clearHistory();
    for await (const token of seq.evaluate(run.greedy, {temperature: 0})) {
      greedy.push(token);
      if (greedy.length >= run.n_greedy) break;
    }
  }
  const tokens = (run.texts ?? []).map((t) => Array.from(model.tokenize(t, true)));
  writeFileSync(join(outDir, `${run.name}.json`),
                JSON.stringify({vocab, top, greedy, tokens, prob_sum: probSum, retyped,
                                add_bos: model.tokens.shouldPrependBosToken,
                                add_eos: model.tokens.shouldAppendEosToken}));
  await context.dispose();
  await model.dispose();
  console.log(`${run.name}: ${run.prompts.length} prompts, ${greedy.length} greedy tokens, ` +
              `${tokens.length} texts`);
}
await llama.dispose();
