// trainer/model/families/llama.cpp — Llama 2/3/3.1/3.2 (transformers LlamaConfig).
//
// Optional biases on all attention projections (attention_bias) and on the MLP
// (mlp_bias); llama3 rope scaling and tied embeddings are common settings. No
// sliding window: LlamaAttention ignores a "sliding_window" key.
#include "trainer/model/family.h"

namespace loratune::model {
namespace {

void resolve(const ConfigJson& j, ModelConfig& c) {
  const bool attn = j.get_bool("attention_bias");
  c.q_bias = c.k_bias = c.v_bias = c.o_bias = attn;
  c.mlp_bias = j.get_bool("mlp_bias");
  c.qk_norm = false;
  c.layer_window.assign(c.num_hidden_layers, 0);
}

}  // namespace

FamilySpec llama_family() {
  FamilySpec f;
  f.model_type = "llama";
  f.defaults = {
      {"vocab_size", 32000},
      {"hidden_size", 4096},
      {"intermediate_size", 11008},
      {"num_hidden_layers", 32},
      {"num_attention_heads", 32},
      {"num_key_value_heads", nullptr},
      {"head_dim", nullptr},
      {"hidden_act", "silu"},
      {"max_position_embeddings", 2048},
      {"rms_norm_eps", 1e-6},
      {"tie_word_embeddings", false},
      {"attention_bias", false},
      {"mlp_bias", false},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
  };
  f.resolve = resolve;
  return f;
}

}  // namespace loratune::model
