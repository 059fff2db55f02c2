// trainer/model/model.h — the decoder-only transformer (Llama, Mistral, Qwen2,
// Qwen3, Gemma 2, Gemma 3) as LibTorch modules whose parameter names are the
// Hugging Face names:
//   model.embed_tokens.weight
//   model.layers.N.input_layernorm.weight, model.layers.N.post_attention_layernorm.weight
//   model.layers.N.{pre,post}_feedforward_layernorm.weight (sandwich_norms: Gemma)
//   model.layers.N.self_attn.{q,k,v,o}_proj.{weight,bias}, ...self_attn.{q,k}_norm.weight
//   model.layers.N.mlp.{gate,up,down}_proj.{weight,bias}
//   model.norm.weight, lm_head.weight (absent when tie_word_embeddings)
//
// Numerics follow transformers: RMSNorm in float32, cast back before the
// weight multiply (Gemma: multiplied by 1 + weight in float32, then cast);
// RoPE frequencies and angles in float32, cos/sin cast to the activation
// dtype; attention via at::scaled_dot_product_attention with GQA, or
// transformers' eager formula when scores are soft-capped (Gemma 2).
//
// Shape letters used in comments throughout trainer/model:
//   B batch, T tokens of this call, S keys (cached + T), D hidden_size,
//   H attention heads, K key/value heads, Dh head_dim, I intermediate_size,
//   V vocab_size, P maximum cached tokens (KVCache capacity).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "trainer/model/config.h"
#include "trainer/model/linear.h"

namespace loratune::model {

// Keys and values of past tokens, for incremental decoding. Holds per layer
// k and v [B,K,P,Dh] allocated once; forward() writes the new tokens at
// [length, length+T) and then advances length.
struct KVCache {
  KVCache(const ModelConfig& config, int64_t batch, int64_t capacity,
          const at::TensorOptions& options);
  std::vector<at::Tensor> k, v;  // per layer [B,K,P,Dh]
  int64_t length = 0;            // tokens cached so far
  int64_t capacity() const { return k.empty() ? 0 : k[0].size(2); }
};

class DecoderLayerImpl;
struct AttentionMask;
struct LayerContext;

// Runs one decoder layer for DecoderModelImpl::forward: x [B,T,D] -> [B,T,D].
// It may keep `layer`, `ctx` and `mask` (copied) past the call, as a
// backward recomputation does (train::hidden_states_checkpointed).
using LayerRunner =
    std::function<at::Tensor(const std::shared_ptr<DecoderLayerImpl>& layer, const at::Tensor& x,
                             const LayerContext& ctx, const AttentionMask& mask)>;

struct ForwardOptions {
  // [B,T] int64 positions. Default: cache length + 0..T-1 for every row.
  at::Tensor position_ids;
  // [B,S] (S = cached + T), 1 keep, 0 padding, as transformers' attention_mask.
  at::Tensor attention_mask;
  // [B,T] int64 packing: a token attends only to earlier tokens with the same
  // id. Pass position_ids restarting at 0 per segment. Not with a cache.
  at::Tensor segment_ids;
  // When set, attend to the cached tokens too and append this call's keys and
  // values; the caller keeps the cache alive.
  KVCache* cache = nullptr;
  // How each layer runs; empty: layer->forward(x, ctx, mask). The one forward
  // pass serves plain and activation-checkpointed training alike.
  LayerRunner run_layer;
};

// Which keys each query may see in one attention call, per window size.
struct AttentionMask {
  at::Tensor mask;         // [B|1,1,T,S] bool (true = attend) or undefined
  bool is_causal = false;  // let SDPA apply the causal mask (no explicit mask)
};

// Per-call inputs shared by every layer.
struct LayerContext {
  at::Tensor cos, sin;  // [B,T,R] in the activation dtype (R rotated dims of a head)
  // [B,T,R] of the sliding layers' RoPE (ModelConfig::rope_local), or undefined.
  at::Tensor cos_local, sin_local;
  KVCache* cache = nullptr;
  int64_t past = 0;  // tokens already in the cache
};

class RMSNormImpl : public torch::nn::Module {
 public:
  // unit_offset: scale by (1 + weight) in float32 (Gemma), else by weight
  // after the cast back (Llama).
  RMSNormImpl(int64_t dim, double eps, const at::TensorOptions& options, bool unit_offset = false);
  at::Tensor forward(const at::Tensor& x);  // [..., dim] -> [..., dim]
  at::Tensor weight;                        // [dim]
  double eps;
  bool unit_offset;
};
TORCH_MODULE(RMSNorm);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t vocab, int64_t dim, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& ids);  // [B,T] int64 -> [B,T,D]
  at::Tensor weight;                          // [V,D]
};
TORCH_MODULE(Embedding);

// Rotary embedding tables: inv_freq [R/2] float32 on the model's device,
// R = the rotated dims of a head (ModelConfig::rotary_dim).
class Rotary {
 public:
  Rotary(const ModelConfig& config, const c10::Device& device);  // config.rope
  Rotary(const RopeConfig& rope, int64_t head_dim, const c10::Device& device);
  // position_ids [B,T] -> (cos, sin) [B,T,R] computed in float32 (times the
  // longrope attention factor), cast to dtype.
  std::pair<at::Tensor, at::Tensor> cos_sin(const at::Tensor& position_ids,
                                            at::ScalarType dtype) const;
  const at::Tensor& inv_freq() const { return inv_freq_; }  // longrope: the short factors'

 private:
  at::Tensor inv_freq_;
  at::Tensor long_inv_freq_;  // longrope only
  double attention_factor_ = 1.0;
  int64_t original_max_ = 0;
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const ModelConfig& config, int64_t layer, const at::TensorOptions& options);
  // x [B,T,D] -> [B,T,D]
  at::Tensor forward(const at::Tensor& x, const LayerContext& ctx, const AttentionMask& mask);
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  Linear qkv_proj{nullptr};  // fused_qkv (Phi-3): [q | k | v]; then q/k/v_proj are null
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // qk_norm families only

 private:
  // The eager formula: softmax(softcap(q k^T * scale) + mask) v, softmax in float32.
  at::Tensor eager(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const AttentionMask& mask) const;
  int64_t layer_, heads_, kv_heads_, head_dim_;
  double scale_;     // score scale (1/sqrt(Dh) unless the family says otherwise)
  double softcap_;   // 0: off
  bool local_rope_;  // use LayerContext::cos_local/sin_local
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(const ModelConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // [B,T,D] -> [B,T,D]
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  Linear gate_up_proj{nullptr};  // fused_gate_up (Phi-3): [gate | up]; then gate/up_proj are null

 private:
  bool gelu_tanh_;  // GeGLU (gelu_pytorch_tanh), else SwiGLU (silu)
};
TORCH_MODULE(MLP);

// Makes a layer's base weights present for one forward call and returns what
// takes them away again when destroyed (sharded base weights,
// train/shard_base.cpp: gathered from every rank before, dropped after; a
// backward recomputation of the layer calls it again).
using WeightScope = std::function<std::shared_ptr<void>(DecoderLayerImpl& layer)>;

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& config, int64_t layer, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x, const LayerContext& ctx, const AttentionMask& mask);
  // Empty: the weights are always present (the default).
  WeightScope weight_scope;
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  // sandwich_norms only (Gemma): around the MLP, as post_attention_layernorm
  // then normalises the attention output.
  RMSNorm pre_feedforward_layernorm{nullptr}, post_feedforward_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The "model." part: embeddings, layers, final norm.
class DecoderModelImpl : public torch::nn::Module {
 public:
  DecoderModelImpl(const ModelConfig& config, const at::TensorOptions& options);
  // input_ids [B,T] -> final normed hidden states [B,T,D]
  at::Tensor forward(const at::Tensor& input_ids, const ForwardOptions& opt);
  // Module::to(device) that also moves the rotary tables.
  using torch::nn::Module::to;
  void to(torch::Device device, bool non_blocking = false) override;
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};

 private:
  ModelConfig config_;
  Rotary rotary_;
  std::optional<Rotary> rotary_local_;  // config.rope_local
};
TORCH_MODULE(DecoderModel);

// What turns the final hidden states into logits: z = hidden W^T, then the
// family's transform (Gemma 2 soft-caps: c*tanh(z/c)). CausalLM::logits and
// the fused training loss (train/linear_loss.cpp) both apply this one
// description, so no family transform is skipped in either.
struct OutputHead {
  at::Tensor weight;           // [V,D] (embed_tokens' when tied)
  double final_softcap = 0.0;  // 0: off
  // raw logits [..., V] -> logits [..., V], in z's dtype as transformers does.
  at::Tensor transform(const at::Tensor& z) const;
};

// The causal language model. Construction allocates every parameter
// uninitialised with `options` and frozen; load_model (loader.h) fills them.
class CausalLMImpl : public torch::nn::Module {
 public:
  CausalLMImpl(const ModelConfig& config, const at::TensorOptions& options = {});

  // input_ids [B,T] int64 -> logits [B,T,V] in the model dtype.
  at::Tensor forward(const at::Tensor& input_ids, const ForwardOptions& opt = {});
  // input_ids [B,T] -> final normed hidden states [B,T,D] (before lm_head).
  at::Tensor hidden_states(const at::Tensor& input_ids, const ForwardOptions& opt = {});
  // hidden [..., D] -> logits [..., V], for callers that chunk the lm_head.
  at::Tensor logits(const at::Tensor& hidden);
  // The output projection's weight [V,D] (embed_tokens' when tied).
  const at::Tensor& lm_head_weight() const;
  // The output head (weight + logit transform) that logits() applies.
  OutputHead output_head() const;

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const;
  c10::Device device() const;

  DecoderModel model{nullptr};
  Linear lm_head{nullptr};  // null when tie_word_embeddings

 private:
  ModelConfig config_;
};
TORCH_MODULE(CausalLM);

}  // namespace loratune::model
