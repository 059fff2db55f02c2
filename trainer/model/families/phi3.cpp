// trainer/model/families/phi3.cpp — Phi-3, Phi-3.5, Phi-4 and Phi-4-mini
// (transformers Phi3Config).
//
// The Llama block with two fused projections: qkv_proj, whose output is
// [q | k | v], and gate_up_proj, whose output is [gate | up]. loratune keeps
// them fused, so adapters target qkv_proj / gate_up_proj exactly as PEFT does
// on the Hugging Face model. No biases. RoPE may be "longrope" (the 128k
// variants; "su" and "yarn" are its older names) and may rotate only part of
// each head (partial_rotary_factor, 0.75 in Phi-4-mini). A sliding_window,
// when set, applies to every layer. Phi-4-mini ties its embeddings.
#include "trainer/model/family.h"

namespace loratune::model {
namespace {

void resolve(const ConfigJson& j, ModelConfig& c) {
  c.q_bias = c.k_bias = c.v_bias = c.o_bias = false;
  c.mlp_bias = false;
  c.fused_qkv = true;
  c.fused_gate_up = true;
  c.layer_window.assign(c.num_hidden_layers, 0);
  if (!j.is_null_or_absent("sliding_window")) {
    const int64_t w = j.get_int("sliding_window");
    if (w <= 0) j.fail("sliding_window", "must be positive or null, got " + std::to_string(w));
    c.layer_window.assign(c.num_hidden_layers, w);
  }
  // Phi3Config always carries original_max_position_embeddings; without
  // longrope nothing computes with it, but llama.cpp's phi3 reads it.
  if (c.rope.original_max_position_embeddings == 0) {
    c.rope.original_max_position_embeddings = j.get_int("original_max_position_embeddings");
  }
}

}  // namespace

FamilySpec phi3_family() {
  FamilySpec f;
  f.model_type = "phi3";
  f.defaults = {
      {"vocab_size", 32064},
      {"hidden_size", 3072},
      {"intermediate_size", 8192},
      {"num_hidden_layers", 32},
      {"num_attention_heads", 32},
      {"num_key_value_heads", nullptr},
      {"head_dim", nullptr},
      {"hidden_act", "silu"},
      {"max_position_embeddings", 4096},
      {"original_max_position_embeddings", 4096},
      {"rms_norm_eps", 1e-5},
      {"tie_word_embeddings", false},
      {"rope_theta", 10000.0},
      {"sliding_window", nullptr},
      {"bos_token_id", 1},
      {"eos_token_id", 32000},
  };
  f.partial_rotary = true;
  f.resolve = resolve;
  return f;
}

}  // namespace loratune::model
