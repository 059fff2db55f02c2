// trainer/model/layers.cpp — RMSNorm, embeddings, rotary tables, MLP, the
// decoder layer and the KV cache.
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/where.h>

#include <cmath>

#include "trainer/io/error.h"
#include "trainer/model/model.h"

namespace loratune::model {

// --- RMSNorm -------------------------------------------------------------------

RMSNormImpl::RMSNormImpl(int64_t dim, double eps, const at::TensorOptions& options) : eps(eps) {
  weight = register_parameter("weight", at::empty({dim}, options), /*requires_grad=*/false);
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  // Normalise in float32 and cast back before the weight multiply, as transformers.
  at::Tensor x32 = x.to(at::kFloat);                       // [..., dim]
  at::Tensor var = x32.pow(2).mean(-1, /*keepdim=*/true);  // [..., 1]
  x32 = x32 * at::rsqrt(var + eps);                        // [..., dim]
  return weight * x32.to(x.scalar_type());                 // [..., dim]
}

// --- Embedding -----------------------------------------------------------------

EmbeddingImpl::EmbeddingImpl(int64_t vocab, int64_t dim, const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({vocab, dim}, options), /*requires_grad=*/false);
}

at::Tensor EmbeddingImpl::forward(const at::Tensor& ids) {
  return at::embedding(weight, ids);  // [B,T] -> [B,T,D]
}

// --- Rotary --------------------------------------------------------------------

Rotary::Rotary(const ModelConfig& c, const c10::Device& device) {
  const RopeConfig& r = c.rope;
  const int64_t dim = c.head_dim;
  // The same float32 operations as transformers' rope init functions, so the
  // frequencies agree bit for bit.
  at::Tensor exponent =
      at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / double(dim);
  at::Tensor inv = at::reciprocal(at::pow(r.theta, exponent)) * 1.0;  // [Dh/2]
  if (r.type == "linear") {
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
    throw Error(
        "rope_type \"" + r.type + "\" is not supported (supported: default, linear, llama3)",
        ErrorKind::kUnsupported);
  }
  inv_freq_ = inv.to(device);
}

std::pair<at::Tensor, at::Tensor> Rotary::cos_sin(const at::Tensor& position_ids,
                                                  at::ScalarType dtype) const {
  at::Tensor pos = position_ids.to(at::kFloat).unsqueeze(-1);  // [B,T,1]
  at::Tensor freqs = pos * inv_freq_;                          // [B,T,Dh/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                // [B,T,Dh]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};           // [B,T,Dh] each
}

// --- MLP -----------------------------------------------------------------------

MLPImpl::MLPImpl(const ModelConfig& c, const at::TensorOptions& options) {
  gate_proj =
      register_module("gate_proj", Linear(c.hidden_size, c.intermediate_size, c.mlp_bias, options));
  up_proj =
      register_module("up_proj", Linear(c.hidden_size, c.intermediate_size, c.mlp_bias, options));
  down_proj =
      register_module("down_proj", Linear(c.intermediate_size, c.hidden_size, c.mlp_bias, options));
}

at::Tensor MLPImpl::forward(const at::Tensor& x) {
  at::Tensor h = at::silu(gate_proj->forward(x)) * up_proj->forward(x);  // [B,T,I]
  return down_proj->forward(h);                                          // [B,T,D]
}

// --- DecoderLayer ----------------------------------------------------------------

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer,
                                   const at::TensorOptions& options) {
  self_attn = register_module("self_attn", Attention(c, layer, options));
  mlp = register_module("mlp", MLP(c, options));
  input_layernorm =
      register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
}

at::Tensor DecoderLayerImpl::forward(const at::Tensor& x, const LayerContext& ctx,
                                     const AttentionMask& mask) {
  at::Tensor h = x + self_attn->forward(input_layernorm->forward(x), ctx, mask);  // [B,T,D]
  return h + mlp->forward(post_attention_layernorm->forward(h));                  // [B,T,D]
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
