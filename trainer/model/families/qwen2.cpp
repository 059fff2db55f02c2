// trainer/model/families/qwen2.cpp — Qwen2 / Qwen2.5 (transformers Qwen2Config).
//
// q/k/v projections always have a bias, o_proj and the MLP never; sliding
// windows per resolve_qwen_windows (off unless use_sliding_window).
#include "trainer/model/family.h"

namespace loratune::model {
namespace {

void resolve(const ConfigJson& j, ModelConfig& c) {
  c.q_bias = c.k_bias = c.v_bias = true;
  c.o_bias = c.mlp_bias = false;
  c.qk_norm = false;
  resolve_qwen_windows(j, c);
}

}  // namespace

FamilySpec qwen2_family() {
  FamilySpec f;
  f.model_type = "qwen2";
  f.defaults = {
      {"vocab_size", 151936},    {"hidden_size", 4096},          {"intermediate_size", 22016},
      {"num_hidden_layers", 32}, {"num_attention_heads", 32},    {"num_key_value_heads", 32},
      {"head_dim", nullptr},     {"hidden_act", "silu"},         {"max_position_embeddings", 32768},
      {"rms_norm_eps", 1e-6},    {"tie_word_embeddings", false}, {"use_sliding_window", false},
      {"sliding_window", 4096},  {"max_window_layers", 28},      {"bos_token_id", nullptr},
      {"eos_token_id", nullptr},
  };
  f.resolve = resolve;
  return f;
}

}  // namespace loratune::model
