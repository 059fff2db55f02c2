// trainer/model/families/mistral.cpp — Mistral (transformers MistralConfig).
//
// No biases. "sliding_window" (default 4096 when absent, none when null)
// applies to every layer; transformers' MistralModel ignores "layer_types".
#include "trainer/model/family.h"

namespace loratune::model {
namespace {

void resolve(const ConfigJson& j, ModelConfig& c) {
  c.q_bias = c.k_bias = c.v_bias = c.o_bias = c.mlp_bias = false;
  c.qk_norm = false;
  int64_t window = 0;
  if (!j.is_null_or_absent("sliding_window")) {
    window = j.get_int("sliding_window");
    if (window <= 0)
      j.fail("sliding_window", "must be positive or null, got " + std::to_string(window));
  }
  c.layer_window.assign(c.num_hidden_layers, window);
}

}  // namespace

FamilySpec mistral_family() {
  FamilySpec f;
  f.model_type = "mistral";
  f.defaults = {
      {"vocab_size", 32000},
      {"hidden_size", 4096},
      {"intermediate_size", 14336},
      {"num_hidden_layers", 32},
      {"num_attention_heads", 32},
      {"num_key_value_heads", 8},
      {"head_dim", nullptr},
      {"hidden_act", "silu"},
      {"max_position_embeddings", 4096 * 32},
      {"rms_norm_eps", 1e-6},
      {"tie_word_embeddings", false},
      {"sliding_window", 4096},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
  };
  f.resolve = resolve;
  return f;
}

}  // namespace loratune::model
