// Merge parity after a real loratune training run, for every tiny variant
// (llama, mistral, qwen2, qwen3 families): `loratune train` for a few steps,
// `loratune merge` of the adapter it wrote, `loratune logits --adapter`; then
// tests/python/ref_merge.py check-trained holds them against transformers +
// PEFT (merged and unmerged logits within 1e-4, float32) and checks that
// training made lora_B non-zero (else the merge would be the identity).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

#include "common/test_env.h"

namespace fs = std::filesystem;
using namespace loratune;

namespace {

// rsLoRA for one variant so both scale formulas go through train and merge.
std::string train_config(const std::string& dir, bool rslora) {
  return "model: {path: " + dir + "/model, dtype: float32}\n" +
         "device: cpu\nseed: 11\n"
         "lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear, use_rslora: " +
         (rslora ? "true" : "false") + "}\n" + "data: {train: " + dir +
         "/train.jsonl, format: tokenized, max_seq_len: 32}\n"
         "train:\n  max_steps: 4\n  micro_batch_size: 2\n"
         "  optimizer: {lr: 1.0e-2}\n  scheduler: {name: constant, warmup_steps: 0}\n"
         "output: {dir: " +
         dir + "/run}\n";
}

TEST(MergeTrained, TransformersLoadsMergeOfTrainedAdapterWithPeftLogitsForEveryVariant) {
  const std::string models = test::testdata_dir() + "/models";
  const std::string root = test::make_temp_dir("merge-trained");
  test::run_python("tests/python/ref_merge.py", "prepare-trained --models " + test::quote(models) +
                                                    " --out " + test::quote(root));
  const std::string bin = test::quote(test::loratune_bin());
  nlohmann::json cases = nlohmann::json::array();
  const std::string ids = "5 17 250 3 999 42 8 600 71 12 1 300";
  int n = 0;
  for (const auto& e : fs::directory_iterator(root)) {
    if (!fs::exists(e.path() / "train.jsonl")) continue;
    const std::string variant = e.path().filename().string(), dir = e.path().string();
    SCOPED_TRACE(variant);
    test::write_file(dir + "/cfg.yaml", train_config(dir, variant == "qwen3"));
    auto tr = test::run(bin + " train --plain " + test::quote(dir + "/cfg.yaml") + " 2>&1");
    ASSERT_EQ(tr.status, 0) << tr.out;
    const std::string adapter = dir + "/run/adapter";
    ASSERT_TRUE(fs::exists(adapter + "/adapter_model.safetensors")) << tr.out;
    auto mg = test::run(bin + " merge --model " + test::quote(dir + "/model") + " --adapter " +
                        test::quote(adapter) + " --out " + test::quote(dir + "/merged") +
                        " --dtype float32 2>&1");
    ASSERT_EQ(mg.status, 0) << mg.out;
    auto lg = test::run(bin + " logits --model " + test::quote(dir + "/model") + " --adapter " +
                        test::quote(adapter) + " --ids '" + ids + "' --out " +
                        test::quote(dir + "/logits.safetensors") + " 2>&1");
    ASSERT_EQ(lg.status, 0) << lg.out;
    cases.push_back({{"variant", variant},
                     {"model", dir + "/model"},
                     {"adapter", adapter},
                     {"merged", dir + "/merged"},
                     {"ids", {5, 17, 250, 3, 999, 42, 8, 600, 71, 12, 1, 300}},
                     {"logits", dir + "/logits.safetensors"}});
    ++n;
  }
  // Every family of the fixture: llama (3 variants), mistral, qwen2 (2), qwen3.
  ASSERT_GE(n, 7);
  test::write_file(root + "/cases.json", cases.dump(1));
  std::cout << test::run_python("tests/python/ref_merge.py",
                                "check-trained --dir " + test::quote(root));
}

}  // namespace
