// trainer/export/merge.h — a base model plus a LoRA adapter → a merged model
// in the Hugging Face layout (what transformers, vLLM, TGI and llama.cpp's
// converter read).
//
// For every adapted projection W' = W + s·(B @ A), computed in float32 and
// cast once to the output dtype; every other tensor is cast (or copied) as
// is. The merge streams tensor by tensor from the mmap'd base shards into a
// ShardedWriter, so the memory it holds is about one output shard, not the
// model. Output: sharded safetensors + model.safetensors.index.json,
// config.json (its dtype key updated, nothing else changed),
// generation_config.json and every tokenizer file copied, and a README.md
// model card. Everything is written into a temp directory beside `out_dir`
// and renamed into place at the end, so a crash never leaves a half-written
// model under the final name.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace loratune::exporter {

// Facts for the model card that only the training run knows.
struct TrainingFacts {
  std::vector<std::string> data_files;  // their SHA-256 is recorded
  std::optional<double> final_train_loss;
  std::optional<double> final_val_loss;
  int64_t steps = 0;
};

struct MergeOptions {
  std::string model_dir;    // base model (HF layout)
  std::string adapter_dir;  // PEFT adapter
  std::string out_dir;
  // Output dtype; default: the base model's config dtype, else its files'.
  std::optional<c10::ScalarType> dtype;
  uint64_t max_shard_bytes = 5'000'000'000ULL;  // transformers' default "5GB"
  bool overwrite = false;
  TrainingFacts facts;
};

// Merges and writes `opt.out_dir`. Throws loratune::Error naming the file or
// tensor at fault (adapter tensors that match no base weight, shape
// mismatches, an existing out_dir without overwrite).
void merge_adapter(const MergeOptions& opt);

// Files besides the weights that a model directory carries and the merged
// model keeps (tokenizer files, generation_config.json, chat_template.jinja...).
std::vector<std::string> companion_files(const std::string& model_dir);

}  // namespace loratune::exporter
