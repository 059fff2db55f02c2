// trainer/model/attention.cpp — grouped-query self-attention with RoPE, the
// optional per-head q/k RMSNorm, and the KV cache.
#include <ATen/ops/cat.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/scaled_dot_product_attention.h>

#include "trainer/io/error.h"
#include "trainer/model/model.h"

namespace loratune::model {
namespace {

// Split-halves rotation: [x1, x2] -> [-x2, x1] over the last dim.
at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);     // [..., Dh/2]
  at::Tensor x2 = x.narrow(-1, half, half);  // [..., Dh/2]
  return at::cat({-x2, x1}, -1);             // [..., Dh]
}

// x [B,N,T,Dh], cos/sin [B,T,Dh]
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1);  // [B,N,T,Dh]
}

}  // namespace

AttentionImpl::AttentionImpl(const ModelConfig& c, int64_t layer, const at::TensorOptions& options)
    : layer_(layer),
      heads_(c.num_attention_heads),
      kv_heads_(c.num_key_value_heads),
      head_dim_(c.head_dim) {
  q_proj = register_module("q_proj", Linear(c.hidden_size, c.q_dim(), c.q_bias, options));
  k_proj = register_module("k_proj", Linear(c.hidden_size, c.kv_dim(), c.k_bias, options));
  v_proj = register_module("v_proj", Linear(c.hidden_size, c.kv_dim(), c.v_bias, options));
  o_proj = register_module("o_proj", Linear(c.q_dim(), c.hidden_size, c.o_bias, options));
  if (c.qk_norm) {
    q_norm = register_module("q_norm", RMSNorm(c.head_dim, c.rms_norm_eps, options));
    k_norm = register_module("k_norm", RMSNorm(c.head_dim, c.rms_norm_eps, options));
  }
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const LayerContext& ctx,
                                  const AttentionMask& mask) {
  const int64_t B = x.size(0), T = x.size(1);
  at::Tensor q = q_proj->forward(x).view({B, T, heads_, head_dim_});     // [B,T,H,Dh]
  at::Tensor k = k_proj->forward(x).view({B, T, kv_heads_, head_dim_});  // [B,T,K,Dh]
  at::Tensor v = v_proj->forward(x).view({B, T, kv_heads_, head_dim_});  // [B,T,K,Dh]
  if (q_norm) {
    q = q_norm->forward(q);  // per head over Dh
    k = k_norm->forward(k);
  }
  q = apply_rope(q.transpose(1, 2), ctx.cos, ctx.sin);  // [B,H,T,Dh]
  k = apply_rope(k.transpose(1, 2), ctx.cos, ctx.sin);  // [B,K,T,Dh]
  v = v.transpose(1, 2);                                // [B,K,T,Dh]

  if (ctx.cache != nullptr) {
    at::Tensor& ck = ctx.cache->k.at(layer_);  // [B,K,P,Dh]
    at::Tensor& cv = ctx.cache->v.at(layer_);  // [B,K,P,Dh]
    ck.narrow(2, ctx.past, T).copy_(k);
    cv.narrow(2, ctx.past, T).copy_(v);
    k = ck.narrow(2, 0, ctx.past + T);  // [B,K,S,Dh]
    v = cv.narrow(2, 0, ctx.past + T);  // [B,K,S,Dh]
  }

  // On CUDA the flash kernel takes no mask and the memory-efficient one no
  // GQA: with a mask (packing, padding, windows) repeat the kv heads so the
  // memory-efficient kernel runs rather than the math path's [B,H,T,S].
  bool gqa = heads_ != kv_heads_;
  if (gqa && mask.mask.defined() && q.is_cuda()) {
    k = k.repeat_interleave(heads_ / kv_heads_, 1);  // [B,H,S,Dh]
    v = v.repeat_interleave(heads_ / kv_heads_, 1);  // [B,H,S,Dh]
    gqa = false;
  }
  // Scale defaults to Dh^-0.5, as transformers' self.scaling.
  at::Tensor out = at::scaled_dot_product_attention(
      q, k, v, mask.mask.defined() ? std::optional<at::Tensor>(mask.mask) : std::nullopt,
      /*dropout_p=*/0.0, mask.is_causal, /*scale=*/std::nullopt,
      /*enable_gqa=*/gqa);                                        // [B,H,T,Dh]
  out = out.transpose(1, 2).reshape({B, T, heads_ * head_dim_});  // [B,T,H*Dh]
  return o_proj->forward(out);                                    // [B,T,D]
}

}  // namespace loratune::model
