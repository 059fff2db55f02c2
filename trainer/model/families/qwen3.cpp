// trainer/model/families/qwen3.cpp — Qwen3 dense (transformers Qwen3Config).
//
// Per-head RMSNorm of q and k over head_dim before RoPE (q_norm, k_norm);
// attention_bias on all four projections (o_proj included); head_dim is
// explicit (default 128, not hidden_size / heads); sliding windows as Qwen2.
#include "trainer/model/family.h"

namespace loratune::model {
namespace {

void resolve(const ConfigJson& j, ModelConfig& c) {
  const bool attn = j.get_bool("attention_bias");
  c.q_bias = c.k_bias = c.v_bias = c.o_bias = attn;
  c.mlp_bias = false;
  c.qk_norm = true;
  resolve_qwen_windows(j, c);
}

}  // namespace

FamilySpec qwen3_family() {
  FamilySpec f;
  f.model_type = "qwen3";
  f.defaults = {
      {"vocab_size", 151936},
      {"hidden_size", 4096},
      {"intermediate_size", 22016},
      {"num_hidden_layers", 32},
      {"num_attention_heads", 32},
      {"num_key_value_heads", 32},
      {"head_dim", 128},
      {"hidden_act", "silu"},
      {"max_position_embeddings", 32768},
      {"rms_norm_eps", 1e-6},
      {"tie_word_embeddings", false},
      {"attention_bias", false},
      {"use_sliding_window", false},
      {"sliding_window", 4096},
      {"max_window_layers", 28},
      {"bos_token_id", nullptr},
      {"eos_token_id", nullptr},
  };
  f.resolve = resolve;
  return f;
}

}  // namespace loratune::model
