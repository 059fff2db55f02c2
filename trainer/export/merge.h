// trainer/export/merge.h — a base model plus a LoRA adapter → a merged model
// in the Hugging Face layout (what transformers, vLLM, TGI and llama.cpp's
// converter read).
//
// For every adapted projection W' = W + s·(B @ A), computed in float32 and
// cast once to the output dtype; every other tensor is cast (or copied) as
// is. The merge streams tensor by tensor from the mmap'd base shards into a
// ShardedWriter, so the memory it holds is about one output shard, not the
// model. Output: model.safetensors, or shards + model.safetensors.index.json
// when the model is larger than one shard,
// config.json (its dtype key updated, nothing else changed),
// generation_config.json and every tokenizer file copied, and a README.md
// model card. Everything is written into a temp directory beside `out_dir`
// and renamed into place at the end, so a crash never leaves a half-written
// model under the final name.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainer/model/nf4.h"

namespace loratune::model {
struct ModelConfig;
}
namespace loratune::lora {
struct CheckedAdapter;
}

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
  // The adapter was trained on an NF4 base (QLoRA, model.quantize: nf4) that
  // was loaded in `quantized_dtype`. Every projection weight the load
  // quantized (model::is_quantized_projection) is then written as
  // dequantize(quantize(W)) in float32, plus the LoRA delta where adapted,
  // cast once to the output dtype: the model the run trained and evaluated,
  // never re-quantized. Without it (the default, and `loratune merge`) the
  // original full-precision W is used. The model card says which.
  model::QuantizeOptions base_quantize;
  c10::ScalarType quantized_dtype = c10::ScalarType::Float;
  // Polled before every tensor and before the final rename; nonzero (the
  // number of a signal the caller caught) stops the merge with Interrupted.
  const std::atomic<int>* stop_signal = nullptr;
};

// A merge stopped by MergeOptions::stop_signal: its temp directory is
// removed and out_dir is as it was.
class Interrupted : public std::runtime_error {
 public:
  explicit Interrupted(int signal)
      : std::runtime_error("stopped by signal " + std::to_string(signal)), signal_(signal) {}
  int signal() const { return signal_; }

 private:
  int signal_;
};

// Merges and writes `opt.out_dir`. Throws loratune::Error naming the file or
// tensor at fault (adapter tensors that match no base weight, shape
// mismatches, an existing out_dir without overwrite), Interrupted on a stop.
void merge_adapter(const MergeOptions& opt);

// One adapted projection: its two factors and scale (from the adapter file).
struct LoraFactors {
  at::Tensor A, B;       // [r, in], [out, r], as stored
  at::Tensor magnitude;  // DoRA's [out], or undefined
  int64_t r = 0;
  double alpha = 0;
  double scale = 1.0;  // lora::lora_scale(alpha, r, use_rslora)
};

// Base checkpoint weight name ("model.layers.0.self_attn.q_proj.weight") ->
// its factors, for exactly the LoRA layers PEFT would create
// (lora::open_adapter checked the file). Tensors view the adapter's mapping.
std::map<std::string, LoraFactors> read_factors(const model::ModelConfig& config,
                                                const lora::CheckedAdapter& adapter);

// W' = W + s * (B @ A) computed in float32, cast once to `dtype`; with a
// DoRA magnitude m, W' = (m / ‖W + s·BA‖_row) ⊙ (W + s·BA) as PEFT merges
// it. What merge_adapter and the GGUF export write for an adapted weight. w [out, in] may view a
// mapping; the result owns its memory. Throws kCorrupt naming `name` and
// `adapter_path` when the factors do not fit w.
at::Tensor merged_weight(const at::Tensor& w, const LoraFactors& f, const std::string& name,
                         const std::string& adapter_path, c10::ScalarType dtype);

// Files besides the weights that a model directory carries and the merged
// model keeps (tokenizer files, generation_config.json, chat_template.jinja...).
std::vector<std::string> companion_files(const std::string& model_dir);

}  // namespace loratune::exporter
