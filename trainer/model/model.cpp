// trainer/model/model.cpp — the decoder stack, attention masks, CausalLM.
#include "trainer/model/model.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/tanh.h>

#include <map>
#include <sstream>

#include "trainer/io/error.h"

namespace loratune::model {
namespace {

std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

void check_input(const at::Tensor& t, const char* name, std::vector<int64_t> shape) {
  if (!t.defined()) return;
  if (t.sizes() != at::IntArrayRef(shape)) {
    std::ostringstream s;
    s << "forward: " << name << " must have shape " << at::IntArrayRef(shape) << ", got "
      << shape_str(t);
    throw Error(s.str());
  }
}

// Which keys each query sees, for one window size (0 = full causal). Queries
// sit at cache positions past..past+T-1, keys at 0..S-1. Without padding,
// packing or an active window, SDPA's own causal mask (or none, for one new
// token) is used so the fast kernels apply.
AttentionMask build_mask(int64_t window, int64_t B, int64_t T, int64_t past,
                         const ForwardOptions& opt, const c10::Device& device) {
  const int64_t S = past + T;
  const bool window_active = window > 0 && S > window;
  if (!opt.attention_mask.defined() && !opt.segment_ids.defined() && !window_active) {
    if (past == 0) return {at::Tensor(), /*is_causal=*/true};
    if (T == 1) return {at::Tensor(), /*is_causal=*/false};
  }
  auto idx = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor q = at::arange(past, S, idx).unsqueeze(1);  // [T,1]
  at::Tensor k = at::arange(0, S, idx).unsqueeze(0);     // [1,S]
  at::Tensor m = k <= q;                                 // [T,S]
  if (window > 0) m = m & (k > q - window);              // the last `window` keys, self included
  m = m.view({1, 1, T, S});                              // [1,1,T,S]
  if (opt.segment_ids.defined()) {
    const at::Tensor& seg = opt.segment_ids;                      // [B,T], S == T
    m = m & (seg.unsqueeze(2) == seg.unsqueeze(1)).unsqueeze(1);  // [B,1,T,S]
  }
  if (opt.attention_mask.defined()) {
    m = m & opt.attention_mask.to(at::kBool).view({B, 1, 1, S});  // [B,1,T,S]
  }
  // A padded query would see no key at all (NaN from softmax); let it see
  // itself. Rows of real tokens already include themselves.
  m = m | (k == q).view({1, 1, T, S});  // [B|1,1,T,S]
  return {m, false};
}

}  // namespace

// --- DecoderModel ----------------------------------------------------------------

DecoderModelImpl::DecoderModelImpl(const ModelConfig& c, const at::TensorOptions& options)
    : config_(c), rotary_(c, options.device()) {
  if (c.rope_local) rotary_local_.emplace(*c.rope_local, c.head_dim, options.device());
  embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden_size, options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) layers->push_back(DecoderLayer(c, l, options));
  norm =
      register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, options, c.norm_unit_offset));
}

void DecoderModelImpl::to(torch::Device device, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
  rotary_ = Rotary(config_, device);
  if (config_.rope_local) rotary_local_.emplace(*config_.rope_local, config_.head_dim, device);
}

at::Tensor DecoderModelImpl::forward(const at::Tensor& input_ids, const ForwardOptions& opt) {
  if (input_ids.dim() != 2 || input_ids.scalar_type() != at::kLong) {
    throw Error("forward: input_ids must be [B,T] int64, got " + shape_str(input_ids) + " " +
                std::string(c10::toString(input_ids.scalar_type())));
  }
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const int64_t past = opt.cache != nullptr ? opt.cache->length : 0;
  const int64_t S = past + T;
  const c10::Device device = embed_tokens->weight.device();
  if (opt.cache != nullptr) {
    if (opt.segment_ids.defined())
      throw Error("forward: segment_ids cannot be used with a KV cache");
    if (S > opt.cache->capacity() || opt.cache->k.empty() || opt.cache->k[0].size(0) != B) {
      throw Error("forward: KV cache of batch " +
                  std::to_string(opt.cache->k.empty() ? 0 : opt.cache->k[0].size(0)) +
                  " and capacity " + std::to_string(opt.cache->capacity()) + " cannot hold " +
                  std::to_string(S) + " tokens of batch " + std::to_string(B));
    }
  }
  check_input(opt.position_ids, "position_ids", {B, T});
  check_input(opt.attention_mask, "attention_mask", {B, S});
  check_input(opt.segment_ids, "segment_ids", {B, T});

  at::Tensor pos = opt.position_ids.defined()
                       ? opt.position_ids.to(device)
                       : at::arange(past, S, at::TensorOptions().dtype(at::kLong).device(device))
                             .unsqueeze(0)
                             .expand({B, T});  // [B,T]
  ForwardOptions dev_opt = opt;
  if (opt.attention_mask.defined()) dev_opt.attention_mask = opt.attention_mask.to(device);
  if (opt.segment_ids.defined()) dev_opt.segment_ids = opt.segment_ids.to(device);

  at::Tensor x = embed_tokens->forward(input_ids.to(device));  // [B,T,D]
  if (config_.embed_scale != 1.0) {
    // The factor is rounded to the model dtype first, as transformers does.
    x = x * at::scalar_tensor(config_.embed_scale, x.options().dtype(at::kFloat))
                .to(x.scalar_type());  // [B,T,D]
  }
  LayerContext ctx;
  std::tie(ctx.cos, ctx.sin) = rotary_.cos_sin(pos, x.scalar_type());  // [B,T,Dh]
  if (rotary_local_) {
    std::tie(ctx.cos_local, ctx.sin_local) = rotary_local_->cos_sin(pos, x.scalar_type());
  }
  ctx.cache = opt.cache;
  ctx.past = past;

  std::map<int64_t, AttentionMask> masks;  // window -> mask, built once per call
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const int64_t w = config_.layer_window[l];
    auto it = masks.find(w);
    if (it == masks.end()) it = masks.emplace(w, build_mask(w, B, T, past, dev_opt, device)).first;
    if (opt.run_layer) {
      x = opt.run_layer(layers->ptr<DecoderLayerImpl>(l), x, ctx, it->second);  // [B,T,D]
    } else {
      x = layers->at<DecoderLayerImpl>(l).forward(x, ctx, it->second);  // [B,T,D]
    }
  }
  if (opt.cache != nullptr) opt.cache->length = S;
  return norm->forward(x);  // [B,T,D]
}

// --- CausalLM --------------------------------------------------------------------

CausalLMImpl::CausalLMImpl(const ModelConfig& c, const at::TensorOptions& options) : config_(c) {
  model = register_module("model", DecoderModel(c, options));
  if (!c.tie_word_embeddings) {
    lm_head = register_module("lm_head", Linear(c.hidden_size, c.vocab_size, false, options));
  }
}

at::Tensor CausalLMImpl::hidden_states(const at::Tensor& input_ids, const ForwardOptions& opt) {
  return model->forward(input_ids, opt);  // [B,T,D]
}

at::Tensor CausalLMImpl::logits(const at::Tensor& hidden) {
  const OutputHead head = output_head();
  // lm_head->forward, not head.weight: an adapter on lm_head applies here.
  return head.transform(lm_head ? lm_head->forward(hidden)
                                : at::linear(hidden, head.weight));  // [..., V]
}

OutputHead CausalLMImpl::output_head() const {
  return OutputHead{lm_head_weight(), config_.final_softcap};
}

at::Tensor OutputHead::transform(const at::Tensor& z) const {
  if (final_softcap <= 0) return z;
  return at::tanh(z / final_softcap) * final_softcap;  // [..., V]
}

at::Tensor CausalLMImpl::forward(const at::Tensor& input_ids, const ForwardOptions& opt) {
  return logits(hidden_states(input_ids, opt));  // [B,T,V]
}

const at::Tensor& CausalLMImpl::lm_head_weight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

at::ScalarType CausalLMImpl::dtype() const {
  return model->embed_tokens->weight.scalar_type();
}
c10::Device CausalLMImpl::device() const {
  return model->embed_tokens->weight.device();
}

}  // namespace loratune::model
