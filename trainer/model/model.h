// trainer/model/model.h — the decoder-only transformer (Llama, Mistral, Qwen2,
// Qwen3) as LibTorch modules whose parameter names are the Hugging Face names:
//   model.embed_tokens.weight
//   model.layers.N.input_layernorm.weight, model.layers.N.post_attention_layernorm.weight
//   model.layers.N.self_attn.{q,k,v,o}_proj.{weight,bias}, ...self_attn.{q,k}_norm.weight
//   model.layers.N.mlp.{gate,up,down}_proj.{weight,bias}
//   model.norm.weight, lm_head.weight (absent when tie_word_embeddings)
//
// Numerics follow transformers: RMSNorm in float32, cast back before the
// weight multiply; RoPE frequencies and angles in float32, cos/sin cast to the
// activation dtype; attention via at::scaled_dot_product_attention with GQA.
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
};

// Which keys each query may see in one attention call, per window size.
struct AttentionMask {
  at::Tensor mask;         // [B|1,1,T,S] bool (true = attend) or undefined
  bool is_causal = false;  // let SDPA apply the causal mask (no explicit mask)
};

// Per-call inputs shared by every layer.
struct LayerContext {
  at::Tensor cos, sin;  // [B,T,Dh] in the activation dtype
  KVCache* cache = nullptr;
  int64_t past = 0;  // tokens already in the cache
};

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // [..., dim] -> [..., dim]
  at::Tensor weight;                        // [dim]
  double eps;
};
TORCH_MODULE(RMSNorm);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t vocab, int64_t dim, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& ids);  // [B,T] int64 -> [B,T,D]
  at::Tensor weight;                          // [V,D]
};
TORCH_MODULE(Embedding);

// Rotary embedding tables: inv_freq [Dh/2] float32 on the model's device.
class Rotary {
 public:
  Rotary(const ModelConfig& config, const c10::Device& device);
  // position_ids [B,T] -> (cos, sin) [B,T,Dh] computed in float32, cast to dtype.
  std::pair<at::Tensor, at::Tensor> cos_sin(const at::Tensor& position_ids,
                                            at::ScalarType dtype) const;
  const at::Tensor& inv_freq() const { return inv_freq_; }

 private:
  at::Tensor inv_freq_;
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const ModelConfig& config, int64_t layer, const at::TensorOptions& options);
  // x [B,T,D] -> [B,T,D]
  at::Tensor forward(const at::Tensor& x, const LayerContext& ctx, const AttentionMask& mask);
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // qk_norm families only

 private:
  int64_t layer_, heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(const ModelConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // [B,T,D] -> [B,T,D]
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& config, int64_t layer, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x, const LayerContext& ctx, const AttentionMask& mask);
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
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
};
TORCH_MODULE(DecoderModel);

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
