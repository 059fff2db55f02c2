// trainer/model/loader.h — a Hugging Face model directory → CausalLM.
//
// Reads DIR/config.json and the safetensors weights (model.safetensors or the
// shards named by model.safetensors.index.json) through io::Checkpoint.
// Weights go from the mmap straight to their final place, one tensor at a
// time, without a second full copy in host memory:
//   * CPU, same dtype as the file: the parameter IS the zero-copy view of the
//     mapping (pages are read on first use, never copied);
//   * otherwise each tensor is converted/copied into its parameter, then the
//     source pages are released (SafetensorsFile::release). On CUDA a tensor
//     whose file dtype differs is uploaded as stored and converted on the
//     GPU, so the host holds no converted copy (a float32 file loaded as
//     bfloat16 costs one tensor's float32 size of GPU memory, briefly).
// Every parameter must match a checkpoint tensor by name and shape, and every
// checkpoint tensor must be used (besides ones transformers ignores too: a
// rotary_emb.inv_freq buffer, lm_head.weight of a tied model, and the vision
// tower and projector of a multimodal Gemma 3, whose language model alone is
// loaded: see ModelConfig::multimodal); otherwise an
// Error lists the missing, unexpected and misshapen tensors with counts.
// Loaded parameters have requires_grad false.
//
// config.json is never trusted with sizes: before anything is allocated,
// check_checkpoint compares the config with the safetensors headers (read
// without touching the data), so a config.json that lies (1e6 layers, a
// hidden_size of 1e12) is a one-line kCorrupt error instead of an
// allocation.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/model/config.h"
#include "trainer/model/model.h"

namespace loratune::io {
class Checkpoint;
}

namespace loratune::model {

// A tensor a model of some config has, under its checkpoint name. `dims`
// names where each dimension comes from ("hidden_size",
// "num_attention_heads*head_dim", ...), for error messages.
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<std::string> dims;
};

// Every parameter CausalLM(config) registers, in registration order, with the
// checkpoint name it loads from. Pure arithmetic on a config parse_config
// accepted (its size caps keep every product in range); allocates nothing
// but the list (about 12 entries per layer).
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& config);

// One projection (model::Linear) of CausalLM(config): its module path
// ("model.layers.0.self_attn.q_proj") and sizes, in registration order.
struct LinearShape {
  std::string path;
  int64_t in_features = 0;
  int64_t out_features = 0;
};
std::vector<LinearShape> linear_shapes(const ModelConfig& config);

// The number of parameters CausalLM(config) has, without building it.
int64_t parameter_count(const ModelConfig& config);

// Where config.json and the checkpoint's headers disagree, one line each,
// most telling first; empty when they agree. Checks, in order: the layer
// count against the model.layers.N indices the checkpoint holds (before any
// per-layer work, so a config claiming 1e6 layers costs nothing), then every
// expected tensor's presence, shape and floating dtype, then tensors nothing
// expects (ignoring what transformers ignores: rotary inv_freq buffers,
// lm_head.weight of a tied model). Each line names the key, its value and
// what the checkpoint holds, e.g. "num_hidden_layers is 1000000 but the
// checkpoint has 2 layers (model.layers.0 .. model.layers.1)".
std::vector<std::string> checkpoint_problems(const ModelConfig& config, const io::Checkpoint& ckpt);

// A pre-quantized bitsandbytes NF4 checkpoint (config.bnb_nf4) is
// described too: its 4-bit weights must be uint8 [ceil(out*in/2), 1] and
// their state tensors count as used (bnb_checkpoint.h checks their contents
// at load); 4-bit weights without a quantization_config are a problem.
//
// Throws Error (kCorrupt) "<config_path>: <first problems>" when
// checkpoint_problems is not empty. A caller that cannot read a
// pre-quantized checkpoint (one that writes the stored tensors as they are)
// leaves `reads_bnb_nf4` false: such a checkpoint is then refused
// (kUnsupported) in one line.
void check_checkpoint(const std::string& config_path, const ModelConfig& config,
                      const io::Checkpoint& ckpt, bool reads_bnb_nf4 = false);

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // float32, bfloat16 or float16
  std::string device = "cpu";         // "cpu", "cuda", "cuda:N"
  // NF4 (QLoRA): every projection weight inside the decoder layers (not the
  // embeddings, lm_head or norms) is cast to `dtype` as loaded, quantized
  // on the host (nf4.h, bitsandbytes' layout) and kept only in NF4; forward
  // dequantizes it in the activation dtype. With a GPU the model is built on
  // the host (untouched parameters cost nothing there) and moved once
  // quantized, so the GPU never holds the float projection weights.
  // A pre-quantized bitsandbytes NF4 checkpoint (config.json's
  // quantization_config) ignores `quantize`: its stored 4-bit states are
  // used as they are (bnb_checkpoint.h), its float tensors stay float.
  QuantizeOptions quantize = {};
  // For a caller that shards them over ranks (train.shard_base): on a GPU,
  // the projection weights inside the decoder layers stay on the host as
  // loaded (zero-copy views of the mapping when the file holds `dtype`)
  // while everything else goes to the device, so no GPU ever holds a whole
  // layer set; the caller moves its share. No effect on the CPU or with NF4.
  bool layer_projections_on_host = false;
};

// Whether a quantized load stores the projection at `module_path` in NF4:
// those inside the decoder layers ("model.layers.N.").
bool is_quantized_projection(const std::string& module_path);

// Parses "float32"/"fp32"/"f32", "bfloat16"/"bf16", "float16"/"fp16"/"f16".
at::ScalarType parse_dtype(const std::string& name);
std::string dtype_string(at::ScalarType t);  // "float32", "bfloat16", "float16"

CausalLM load_model(const std::string& dir, const LoadOptions& options = {});

// The checkpoint tensor name a parameter is loaded from. The one place where
// model parameter names and file names meet. For a multimodal Gemma 3
// (config.multimodal) "model.<rest>" is config.checkpoint_prefix + <rest>
// and lm_head.weight is "language_model.lm_head.weight" under the prefix
// "language_model.model.", else "lm_head.weight".
std::string checkpoint_name(const ModelConfig& config, const std::string& param_name);

// For a multimodal config: sets config.checkpoint_prefix to the layout
// `ckpt` uses, the prefix under which it holds embed_tokens.weight
// ("language_model.model." or "model.language_model."); leaves the default
// ("language_model.model.") when it holds neither, so that
// checkpoint_problems names what is missing. No effect on a text-only config.
void detect_checkpoint_layout(ModelConfig& config, const io::Checkpoint& ckpt);

// Whether checkpoint tensor `name` belongs to the parts of a multimodal
// checkpoint that loratune does not load (the vision tower and the
// multimodal projector, under either layout): the loader and
// checkpoint_problems ignore them, `loratune merge` copies them unchanged.
// Always false for a text-only config.
bool is_multimodal_extra(const ModelConfig& config, const std::string& name);

// The module path PEFT uses for the model module at `module_path` (the
// names of adapter_model.safetensors and of adapter_config.json's patterns
// are these): the path itself, except for a multimodal Gemma 3, whose
// language model is "model.language_model." in transformers 5's module
// tree ("model.layers.0.self_attn.q_proj" ->
// "model.language_model.layers.0.self_attn.q_proj"; lm_head stays).
std::string peft_module_path(const ModelConfig& config, const std::string& module_path);
// The inverse of peft_module_path; a path it cannot have produced is
// returned unchanged.
std::string module_path_of_peft(const ModelConfig& config, const std::string& peft_path);

}  // namespace loratune::model
