// trainer/model/attention.cpp — grouped-query self-attention with RoPE, the
// optional per-head q/k RMSNorm, and the KV cache.
#include <ATen/ops/cat.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/tanh.h>

#include <cmath>
#include <limits>

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

// x [B,N,T,Dh], cos/sin [B,T,R]: the first R dims rotate, the rest pass
// through (partial_rotary_factor < 1).
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t R = cos.size(-1), Dh = x.size(-1);
  if (R == Dh) return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1);   // [B,N,T,Dh]
  at::Tensor rot = x.narrow(-1, 0, R);                                            // [B,N,T,R]
  at::Tensor out = rot * cos.unsqueeze(1) + rotate_half(rot) * sin.unsqueeze(1);  // [B,N,T,R]
  return at::cat({out, x.narrow(-1, R, Dh - R)}, -1);                             // [B,N,T,Dh]
}

}  // namespace

AttentionImpl::AttentionImpl(const ModelConfig& c, int64_t layer, const at::TensorOptions& options)
    : layer_(layer),
      heads_(c.num_attention_heads),
      kv_heads_(c.num_key_value_heads),
      head_dim_(c.head_dim),
      scale_(c.attn_scale > 0 ? c.attn_scale : 1.0 / std::sqrt(static_cast<double>(c.head_dim))),
      softcap_(c.attn_softcap),
      local_rope_(c.rope_local.has_value() && c.layer_sliding.at(layer)) {
  if (c.fused_qkv) {
    qkv_proj = register_module(
        "qkv_proj", Linear(c.hidden_size, c.q_dim() + 2 * c.kv_dim(), c.q_bias, options));
  } else {
    q_proj = register_module("q_proj", Linear(c.hidden_size, c.q_dim(), c.q_bias, options));
    k_proj = register_module("k_proj", Linear(c.hidden_size, c.kv_dim(), c.k_bias, options));
    v_proj = register_module("v_proj", Linear(c.hidden_size, c.kv_dim(), c.v_bias, options));
  }
  o_proj = register_module("o_proj", Linear(c.q_dim(), c.hidden_size, c.o_bias, options));
  if (c.qk_norm) {
    q_norm =
        register_module("q_norm", RMSNorm(c.head_dim, c.rms_norm_eps, options, c.norm_unit_offset));
    k_norm =
        register_module("k_norm", RMSNorm(c.head_dim, c.rms_norm_eps, options, c.norm_unit_offset));
  }
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const LayerContext& ctx,
                                  const AttentionMask& mask) {
  const int64_t B = x.size(0), T = x.size(1);
  at::Tensor q, k, v;
  if (qkv_proj) {
    const int64_t qd = heads_ * head_dim_, kvd = kv_heads_ * head_dim_;
    at::Tensor qkv = qkv_proj->forward(x);                                 // [B,T,qd+2kvd]
    q = qkv.narrow(-1, 0, qd).view({B, T, heads_, head_dim_});             // [B,T,H,Dh]
    k = qkv.narrow(-1, qd, kvd).view({B, T, kv_heads_, head_dim_});        // [B,T,K,Dh]
    v = qkv.narrow(-1, qd + kvd, kvd).view({B, T, kv_heads_, head_dim_});  // [B,T,K,Dh]
  } else {
    q = q_proj->forward(x).view({B, T, heads_, head_dim_});     // [B,T,H,Dh]
    k = k_proj->forward(x).view({B, T, kv_heads_, head_dim_});  // [B,T,K,Dh]
    v = v_proj->forward(x).view({B, T, kv_heads_, head_dim_});  // [B,T,K,Dh]
  }
  if (q_norm) {
    q = q_norm->forward(q);  // per head over Dh
    k = k_norm->forward(k);
  }
  const at::Tensor& cos = local_rope_ ? ctx.cos_local : ctx.cos;  // [B,T,Dh]
  const at::Tensor& sin = local_rope_ ? ctx.sin_local : ctx.sin;
  q = apply_rope(q.transpose(1, 2), cos, sin);  // [B,H,T,Dh]
  k = apply_rope(k.transpose(1, 2), cos, sin);  // [B,K,T,Dh]
  v = v.transpose(1, 2);                        // [B,K,T,Dh]

  if (ctx.cache != nullptr) {
    at::Tensor& ck = ctx.cache->k.at(layer_);  // [B,K,P,Dh]
    at::Tensor& cv = ctx.cache->v.at(layer_);  // [B,K,P,Dh]
    ck.narrow(2, ctx.past, T).copy_(k);
    cv.narrow(2, ctx.past, T).copy_(v);
    k = ck.narrow(2, 0, ctx.past + T);  // [B,K,S,Dh]
    v = cv.narrow(2, 0, ctx.past + T);  // [B,K,S,Dh]
  }

  if (softcap_ > 0) {
    at::Tensor out = eager(q, k, v, mask).transpose(1, 2);            // [B,T,H,Dh]
    return o_proj->forward(out.reshape({B, T, heads_ * head_dim_}));  // [B,T,D]
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
  // scale_ is transformers' self.scaling (Dh^-0.5 unless the family sets it).
  at::Tensor out = at::scaled_dot_product_attention(
      q, k, v, mask.mask.defined() ? std::optional<at::Tensor>(mask.mask) : std::nullopt,
      /*dropout_p=*/0.0, mask.is_causal, /*scale=*/scale_,
      /*enable_gqa=*/gqa);                                        // [B,H,T,Dh]
  out = out.transpose(1, 2).reshape({B, T, heads_ * head_dim_});  // [B,T,H*Dh]
  return o_proj->forward(out);                                    // [B,T,D]
}

at::Tensor AttentionImpl::eager(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const AttentionMask& mask) const {
  const int64_t T = q.size(2), S = k.size(2);
  at::Tensor kk = k, vv = v;
  if (heads_ != kv_heads_) {
    kk = k.repeat_interleave(heads_ / kv_heads_, 1);  // [B,H,S,Dh]
    vv = v.repeat_interleave(heads_ / kv_heads_, 1);  // [B,H,S,Dh]
  }
  at::Tensor s = at::matmul(q, kk.transpose(2, 3)) * scale_;  // [B,H,T,S]
  if (softcap_ > 0) s = at::tanh(s / softcap_) * softcap_;
  at::Tensor allowed = mask.mask;  // [B|1,1,T,S] bool
  if (!allowed.defined() && mask.is_causal) {
    allowed = at::ones({T, S}, q.options().dtype(at::kBool)).tril(S - T);  // [T,S]
  }
  if (allowed.defined()) {
    s = s.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  }
  at::Tensor p = at::softmax(s, -1, at::kFloat).to(q.scalar_type());  // [B,H,T,S]
  return at::matmul(p, vv);                                           // [B,H,T,Dh]
}

}  // namespace loratune::model
