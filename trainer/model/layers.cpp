// trainer/model/layers.cpp — RMSNorm, embeddings, rotary tables, MLP, the
// decoder layer and the KV cache.
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>

#include <cmath>

#include "trainer/io/error.h"
#include "trainer/model/model.h"

namespace loratune::model {

// --- RMSNorm -------------------------------------------------------------------

RMSNormImpl::RMSNormImpl(int64_t dim, double eps, const at::TensorOptions& options,
                         bool unit_offset)
    : eps(eps), unit_offset(unit_offset) {
  weight = register_parameter("weight", at::empty({dim}, options), /*requires_grad=*/false);
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  // Normalise in float32. Llama casts back before the weight multiply;
  // Gemma multiplies by (1 + weight) in float32 and casts the product.
  at::Tensor x32 = x.to(at::kFloat);                       // [..., dim]
  at::Tensor var = x32.pow(2).mean(-1, /*keepdim=*/true);  // [..., 1]
  x32 = x32 * at::rsqrt(var + eps);                        // [..., dim]
  if (unit_offset) return (x32 * (1.0 + weight.to(at::kFloat))).to(x.scalar_type());
  return weight * x32.to(x.scalar_type());  // [..., dim]
}

// --- Embedding -----------------------------------------------------------------

EmbeddingImpl::EmbeddingImpl(int64_t vocab, int64_t dim, const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({vocab, dim}, options), /*requires_grad=*/false);
}

at::Tensor EmbeddingImpl::forward(const at::Tensor& ids) {
  return at::embedding(weight, ids);  // [B,T] -> [B,T,D]
}

// --- Rotary --------------------------------------------------------------------

Rotary::Rotary(const ModelConfig& c, const c10::Device& device)
    : Rotary(c.rope, c.head_dim, device) {}

Rotary::Rotary(const RopeConfig& r, int64_t head_dim, const c10::Device& device)
    : attention_factor_(r.attention_factor), original_max_(r.original_max_position_embeddings) {
  // Only the first head_dim * partial_rotary_factor dims rotate.
  const int64_t dim = static_cast<int64_t>(static_cast<double>(head_dim) * r.partial_rotary_factor);
  // The same float32 operations as transformers' rope init functions, so the
  // frequencies agree bit for bit.
  at::Tensor exponent =
      at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / double(dim);
  at::Tensor inv = at::reciprocal(at::pow(r.theta, exponent)) * 1.0;  // [Dh/2]
  if (r.type == "longrope") {
    // transformers: 1.0 / (ext_factors * base ** (arange(0, dim, 2) / dim)).
    at::Tensor base = at::pow(r.theta, exponent);  // [dim/2]
    auto scaled = [&](const std::vector<double>& f) {
      return at::reciprocal(at::tensor(f, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat) *
                            base) *
             1.0;  // [dim/2]
    };
    inv = scaled(r.short_factor);
    long_inv_freq_ = scaled(r.long_factor).to(device);
  } else if (r.type == "linear") {
    inv = inv / r.factor;
  } else if (r.type == "llama3") {
    const double orig = static_cast<double>(r.original_max_position_embeddings);
    const double low_wl = orig / r.low_freq_factor;
    const double high_wl = orig / r.high_freq_factor;
    at::Tensor wavelen = at::reciprocal(inv) * (2 * M_PI);                 // [Dh/2]
    at::Tensor scaled = at::where(wavelen > low_wl, inv / r.factor, inv);  // [Dh/2]
    at::Tensor smooth = (at::reciprocal(wavelen) * orig - r.low_freq_factor) /
                        (r.high_freq_factor - r.low_freq_factor);              // [Dh/2]
    at::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;  // [Dh/2]
    at::Tensor medium = (wavelen < high_wl).logical_not() & (wavelen > low_wl).logical_not();
    inv = at::where(medium, smoothed, scaled);
  } else if (r.type != "default") {
    throw Error("rope_type \"" + r.type +
                    "\" is not supported (supported: default, linear, llama3, longrope)",
                ErrorKind::kUnsupported);
  }
  inv_freq_ = inv.to(device);
}

std::pair<at::Tensor, at::Tensor> Rotary::cos_sin(const at::Tensor& position_ids,
                                                  at::ScalarType dtype) const {
  at::Tensor inv = inv_freq_;  // [R/2], R = rotated dims
  if (long_inv_freq_.defined()) {
    // longrope: the long factors when this call reaches past the original
    // context (transformers decides per forward call from max position + 1);
    // a 0-dim device tensor, so no host sync.
    at::Tensor beyond = (position_ids.max() + 1) > original_max_;
    inv = at::where(beyond, long_inv_freq_, inv_freq_);
  }
  at::Tensor pos = position_ids.to(at::kFloat).unsqueeze(-1);  // [B,T,1]
  at::Tensor freqs = pos * inv;                                // [B,T,R/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                // [B,T,R]
  at::Tensor cos = emb.cos(), sin = emb.sin();                 // [B,T,R] float32
  if (attention_factor_ != 1.0) {
    cos = cos * attention_factor_;
    sin = sin * attention_factor_;
  }
  return {cos.to(dtype), sin.to(dtype)};  // [B,T,R] each
}

// --- MLP -----------------------------------------------------------------------

MLPImpl::MLPImpl(const ModelConfig& c, const at::TensorOptions& options)
    : gelu_tanh_(c.hidden_act == "gelu_pytorch_tanh") {
  if (c.fused_gate_up) {
    gate_up_proj = register_module(
        "gate_up_proj", Linear(c.hidden_size, 2 * c.intermediate_size, c.mlp_bias, options));
  } else {
    gate_proj = register_module("gate_proj",
                                Linear(c.hidden_size, c.intermediate_size, c.mlp_bias, options));
    up_proj =
        register_module("up_proj", Linear(c.hidden_size, c.intermediate_size, c.mlp_bias, options));
  }
  down_proj =
      register_module("down_proj", Linear(c.intermediate_size, c.hidden_size, c.mlp_bias, options));
}

at::Tensor MLPImpl::forward(const at::Tensor& x) {
  at::Tensor g, u;  // [B,T,I] each
  if (gate_up_proj) {
    at::Tensor gu = gate_up_proj->forward(x);  // [B,T,2I]: gate first
    const int64_t I = gu.size(-1) / 2;
    g = gu.narrow(-1, 0, I);
    u = gu.narrow(-1, I, I);
  } else {
    g = gate_proj->forward(x);
    u = up_proj->forward(x);
  }
  at::Tensor h = (gelu_tanh_ ? at::gelu(g, "tanh") : at::silu(g)) * u;  // [B,T,I]
  return down_proj->forward(h);                                         // [B,T,D]
}

// --- DecoderLayer ----------------------------------------------------------------

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer,
                                   const at::TensorOptions& options) {
  self_attn = register_module("self_attn", Attention(c, layer, options));
  mlp = register_module("mlp", MLP(c, options));
  auto norm = [&](const char* name) {
    return register_module(name,
                           RMSNorm(c.hidden_size, c.rms_norm_eps, options, c.norm_unit_offset));
  };
  input_layernorm = norm("input_layernorm");
  post_attention_layernorm = norm("post_attention_layernorm");
  if (c.sandwich_norms) {
    pre_feedforward_layernorm = norm("pre_feedforward_layernorm");
    post_feedforward_layernorm = norm("post_feedforward_layernorm");
  }
}

at::Tensor DecoderLayerImpl::forward(const at::Tensor& x, const LayerContext& ctx,
                                     const AttentionMask& mask) {
  const std::shared_ptr<void> weights = weight_scope ? weight_scope(*this) : nullptr;
  at::Tensor a = self_attn->forward(input_layernorm->forward(x), ctx, mask);  // [B,T,D]
  if (!pre_feedforward_layernorm) {
    at::Tensor h = x + a;                                           // [B,T,D]
    return h + mlp->forward(post_attention_layernorm->forward(h));  // [B,T,D]
  }
  at::Tensor h = x + post_attention_layernorm->forward(a);  // [B,T,D]
  return h + post_feedforward_layernorm->forward(
                 mlp->forward(pre_feedforward_layernorm->forward(h)));  // [B,T,D]
}

// --- KVCache ---------------------------------------------------------------------

KVCache::KVCache(const ModelConfig& c, int64_t batch, int64_t capacity,
                 const at::TensorOptions& options) {
  if (batch <= 0 || capacity <= 0) {
    throw Error("KVCache: batch and capacity must be positive, got " + std::to_string(batch) +
                " and " + std::to_string(capacity));
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    k.push_back(
        at::empty({batch, c.num_key_value_heads, capacity, c.head_dim}, options));  // [B,K,P,Dh]
    v.push_back(
        at::empty({batch, c.num_key_value_heads, capacity, c.head_dim}, options));  // [B,K,P,Dh]
  }
}

}  // namespace loratune::model
