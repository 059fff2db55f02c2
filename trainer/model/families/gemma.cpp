// trainer/model/families/gemma.cpp — Gemma 2 (transformers Gemma2Config) and
// the Gemma 3 language model (Gemma3TextConfig, model_type "gemma3_text").
//
// Both: embeddings x sqrt(hidden_size) (the factor cast to the model dtype),
// RMSNorm scaling by (1 + weight) in float32, four norms per layer
// ("sandwich": the attention and MLP outputs are normed before their
// residual adds), GeGLU with gelu_pytorch_tanh, scores x
// query_pre_attn_scalar^-0.5, head_dim independent of hidden / heads, tied
// embeddings, sliding windows on the layers layer_types marks
// "sliding_attention".
//   Gemma 2: attention soft-capping (50) and final logit soft-capping (30);
//            layers alternate sliding / full (sliding first).
//   Gemma 3: q/k RMSNorm (the same (1 + weight) kind), no soft-capping by
//            default, sliding unless (i + 1) % 6 == 0, and two RoPEs: the
//            global layers use rope_theta with its scaling, the sliding ones
//            rope_local_base_freq (or the per-layer-type rope_parameters).
#include <cmath>

#include "trainer/model/family.h"

namespace loratune::model {
namespace {

// Optional positive soft-cap: null or absent means off (0).
double softcap(const ConfigJson& j, const char* key) {
  if (j.is_null_or_absent(key)) return 0.0;
  const double v = j.get_double(key);
  if (!(v > 0) || !std::isfinite(v))
    j.fail(key, "must be positive or null, got " + std::to_string(v));
  return v;
}

void resolve_gemma(const ConfigJson& j, ModelConfig& c, int64_t sliding_pattern) {
  const bool attn = j.get_bool("attention_bias");
  c.q_bias = c.k_bias = c.v_bias = c.o_bias = attn;
  c.mlp_bias = false;
  c.norm_unit_offset = true;
  c.sandwich_norms = true;
  c.embed_scale = std::sqrt(static_cast<double>(c.hidden_size));
  const double scalar = j.get_double("query_pre_attn_scalar");
  if (!(scalar > 0) || !std::isfinite(scalar)) {
    j.fail("query_pre_attn_scalar", "must be positive, got " + std::to_string(scalar));
  }
  c.attn_scale = 1.0 / std::sqrt(scalar);
  c.attn_softcap = softcap(j, "attn_logit_softcapping");
  c.final_softcap = softcap(j, "final_logit_softcapping");
  if (j.find("use_bidirectional_attention") != nullptr &&
      !j.is_null_or_absent("use_bidirectional_attention") &&
      j.get_bool("use_bidirectional_attention")) {
    j.fail("use_bidirectional_attention",
           "bidirectional attention (an embedding model) is not supported; loratune trains causal "
           "language models",
           ErrorKind::kUnsupported);
  }
  const int64_t window = j.is_null_or_absent("sliding_window") ? 0 : j.get_int("sliding_window");
  if (window < 0) j.fail("sliding_window", "must be positive or null");
  resolve_layer_types(j, c, window, sliding_pattern);
}

void resolve_gemma2(const ConfigJson& j, ModelConfig& c) {
  resolve_gemma(j, c, /*sliding_pattern=*/2);
}

void resolve_gemma3(const ConfigJson& j, ModelConfig& c) {
  int64_t pattern = 6;
  if (!j.is_null_or_absent("sliding_window_pattern")) {
    pattern = j.get_int("sliding_window_pattern");
    if (pattern <= 0) j.fail("sliding_window_pattern", "must be positive");
  }
  resolve_gemma(j, c, pattern);
  c.qk_norm = true;
  c.rope_local = parse_rope(j, c.max_position_embeddings, "sliding_attention");
}

nlohmann::json gemma_defaults() {
  return {
      {"vocab_size", 256000},
      {"hidden_size", 2304},
      {"intermediate_size", 9216},
      {"num_hidden_layers", 26},
      {"num_attention_heads", 8},
      {"num_key_value_heads", 4},
      {"head_dim", 256},
      {"hidden_activation", "gelu_pytorch_tanh"},
      {"max_position_embeddings", 8192},
      {"rms_norm_eps", 1e-6},
      {"tie_word_embeddings", true},
      {"rope_theta", 10000.0},
      {"attention_bias", false},
      {"query_pre_attn_scalar", 256},
      {"sliding_window", 4096},
      {"final_logit_softcapping", 30.0},
      {"attn_logit_softcapping", 50.0},
      {"bos_token_id", 2},
      {"eos_token_id", 1},
  };
}

}  // namespace

FamilySpec gemma2_family() {
  FamilySpec f;
  f.model_type = "gemma2";
  f.defaults = gemma_defaults();
  f.activation_key = "hidden_activation";
  f.resolve = resolve_gemma2;
  return f;
}

FamilySpec gemma3_text_family() {
  FamilySpec f;
  f.model_type = "gemma3_text";
  f.defaults = gemma_defaults();
  f.defaults["vocab_size"] = 262208;
  f.defaults["max_position_embeddings"] = 131072;
  f.defaults["rope_theta"] = 1000000.0;
  f.defaults["rope_local_base_freq"] = 10000.0;
  f.defaults["final_logit_softcapping"] = nullptr;
  f.defaults["attn_logit_softcapping"] = nullptr;
  f.activation_key = "hidden_activation";
  f.rope_per_layer_type = true;
  f.resolve = resolve_gemma3;
  return f;
}

}  // namespace loratune::model
