// trainer/model/config.h — a model's architecture, read from its config.json.
//
// ModelConfig is family-independent: parsing resolves every family rule
// (which projections have biases, qk-norm, which layers use a sliding window,
// the family's defaults for absent keys) into plain fields, so the decoder
// never branches on model_type. The rules of each family live in one file
// under trainer/model/families/ (see family.h).
//
// Both spellings transformers has written are accepted:
//   4.x: "rope_theta": 500000, "rope_scaling": {"rope_type"|"type": ..., "factor": ...}
//   5.x: "rope_parameters": {"rope_type": ..., "rope_theta": ..., "factor": ...}
// and "torch_dtype" (4.x) or "dtype" (5.x).
//
// Errors are loratune::Error naming the file, the key, the bad value and what
// is supported ("did you mean" where a close spelling exists).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace loratune::model {

// Rotary position embedding. Supported rope_type: "default", "linear",
// "llama3", "longrope" (Phi-3; its older names "su" and "yarn" are read as it).
struct RopeConfig {
  std::string type = "default";
  double theta = 10000.0;
  double factor = 1.0;            // linear, llama3
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings =
      0;  // llama3, longrope (default: max_position_embeddings)
  // longrope: per-frequency divisors [rotary_dim/2]; a forward call whose
  // largest position + 1 exceeds original_max_position_embeddings uses
  // long_factor, else short_factor. cos and sin are multiplied by
  // attention_factor (default sqrt(1 + ln f / ln orig), f = max_pos / orig).
  std::vector<double> short_factor, long_factor;
  double attention_factor = 1.0;
  // Fraction of head_dim that is rotated (the first dims); the rest pass
  // through (Phi-4-mini: 0.75).
  double partial_rotary_factor = 1.0;
};

// A checkpoint that bitsandbytes saved already quantized to 4-bit NF4
// (config.json "quantization_config": quant_method "bitsandbytes",
// load_in_4bit, bnb_4bit_quant_type "nf4"; a model.save_pretrained() of a
// model loaded with BitsAndBytesConfig). Which projections are quantized is
// read from the checkpoint (bnb_checkpoint.h), not from skip lists.
struct BnbNf4Config {
  bool double_quant = false;  // bnb_4bit_use_double_quant
  std::string compute_dtype;  // bnb_4bit_compute_dtype as written ("" when absent); informative:
                              // loratune computes in the load dtype (model.dtype)
  std::vector<std::string> skip_modules;  // llm_int8_skip_modules (informative)
};

struct ModelConfig {
  std::string model_type;  // "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // divides num_attention_heads
  int64_t head_dim = 0;             // independent of hidden_size / heads
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";  // "silu" or "gelu_pytorch_tanh" (GeGLU)

  // Resolved per-family structure.
  bool q_bias = false, k_bias = false, v_bias = false, o_bias = false;
  bool mlp_bias = false;
  bool qk_norm = false;  // RMSNorm over head_dim on q and k before RoPE (qwen3)
  // Phi-3: one qkv_proj whose output is [q | k | v], and one gate_up_proj
  // whose output is [gate | up]. Adapters then target the fused modules, as
  // PEFT does on the Hugging Face model.
  bool fused_qkv = false;
  bool fused_gate_up = false;
  // Sliding-window size per layer; 0 = full causal attention. A key j is
  // visible to query i when i - W < j <= i (W tokens including itself).
  std::vector<int64_t> layer_window;

  // Gemma-style structure; the defaults are Llama's.
  // RMSNorm scales by (1 + weight), multiplied in float32 before the cast
  // back (Llama casts first, then multiplies by weight). Also q/k norms.
  bool norm_unit_offset = false;
  // "Sandwich" norms: post_attention_layernorm normalises the attention
  // output before its residual add, and pre_feedforward_layernorm /
  // post_feedforward_layernorm wrap the MLP (four norms per layer).
  bool sandwich_norms = false;
  double embed_scale = 1.0;    // embeddings x this, the factor cast to the model dtype first
  double attn_scale = 0.0;     // scores x this; 0: 1/sqrt(head_dim)
  double attn_softcap = 0.0;   // scores = c*tanh(scores/c) before the mask; 0: off
  double final_softcap = 0.0;  // logits = c*tanh(logits/c); 0: off
  // RoPE of the "sliding_attention" layers when it differs from `rope`
  // (Gemma 3: rope_local_base_freq); nullopt: every layer uses `rope`.
  std::optional<RopeConfig> rope_local;
  // Per layer: a "sliding_attention" layer (usually layer_window > 0, but a
  // null sliding_window leaves the layer type without a window).
  std::vector<bool> layer_sliding;

  std::string dtype;  // "float32", "bfloat16", ... or "" if absent
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // config.json allows an int or a list
  // Set for a pre-quantized bitsandbytes NF4 checkpoint. Any other
  // quantization_config (8-bit, fp4, GPTQ, AWQ, ...) is refused by
  // parse_config (kUnsupported).
  std::optional<BnbNf4Config> bnb_nf4;

  // The multimodal Gemma 3 (config.json model_type "gemma3",
  // Gemma3ForConditionalGeneration): the fields above describe its language
  // model (parsed from "text_config"); the vision tower and projector are not
  // loaded, and `loratune merge` copies them unchanged. Its tensors live under
  // checkpoint_prefix: "language_model.model." (hub checkpoints of
  // transformers 4.50, and what transformers 5 save_pretrained writes) or
  // "model.language_model." (saves of transformers 4.52 .. 4.57);
  // detect_checkpoint_layout (loader.h) picks the one a checkpoint uses.
  // Empty for a text-only model, whose names are the parameter names.
  bool multimodal = false;
  std::string checkpoint_prefix;

  int64_t q_dim() const { return num_attention_heads * head_dim; }   // H*Dh
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }  // K*Dh
  // The rotated dims of a head: head_dim * partial_rotary_factor.
  int64_t rotary_dim() const {
    return static_cast<int64_t>(static_cast<double>(head_dim) * rope.partial_rotary_factor);
  }
};

// Parses a config.json object. `source` names it in errors (usually the path).
ModelConfig parse_config(const nlohmann::json& j, const std::string& source);
// Reads DIR/config.json (or a path to a .json file). Sizes are checked
// against hard caps far above any real model (errors kCorrupt), so that a
// ModelConfig never describes an allocation that cannot exist; whether the
// weights agree is loader.h's check_checkpoint.
ModelConfig load_config(const std::string& path);
// The file load_config reads for `path`: DIR/config.json, or `path` itself.
std::string config_json_path(const std::string& path);

// The model_type values loratune supports, sorted.
std::vector<std::string> supported_model_types();

}  // namespace loratune::model
