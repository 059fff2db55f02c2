// trainer/gguf/export_model.cpp — a Hugging Face decoder as llama.cpp's
// architectures see it: storage types, Q/K permutation, Gemma's 1 + w norms,
// rope factor tensors and the "<arch>.*" hyperparameters, following
// convert_hf_to_gguf.py (TextModel, LlamaModel, Qwen2Model, Qwen3Model,
// Gemma2Model, Gemma3Model, Phi3MiniModel); names come from arch.h, which
// convert.cpp inverts. What llama.cpp would compute differently from
// transformers with no key to say otherwise is refused here, before a file
// exists.
#include <ATen/ops/arange.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/tensor.h>

#include <algorithm>
#include <cmath>

#include "trainer/gguf/export_detail.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/config.h"
#include "trainer/model/loader.h"

namespace loratune::gguf::detail {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

uint32_t u32_of(int64_t v, const char* what) {
  if (v < 0 || v > static_cast<int64_t>(UINT32_MAX)) {
    throw Error(std::string("export-gguf: ") + what + " " + std::to_string(v) +
                    " does not fit a GGUF uint32",
                ErrorKind::kUnsupported);
  }
  return static_cast<uint32_t>(v);
}

}  // namespace

const ArchSpec& architecture_of(const model::ModelConfig& c) {
  const ArchSpec* a = arch_of_model_type(c.model_type);
  if (a == nullptr) {
    throw Error("export-gguf: model_type '" + c.model_type +
                    "' has no llama.cpp architecture here (supported: " + exportable_model_types() +
                    ")",
                ErrorKind::kUnsupported);
  }
  return *a;
}

uint32_t tensor_type(const std::string& name, size_t n_dims, int64_t ne0, OutType type) {
  if (n_dims <= 1 || ends_with(name, "_norm.weight")) return kGgmlF32;
  if (!ends_with(name, ".weight") && !ends_with(name, ".lora_a") && !ends_with(name, ".lora_b")) {
    return kGgmlF32;
  }
  switch (type) {
    case OutType::kF32:
      return kGgmlF32;
    case OutType::kF16:
      return kGgmlF16;
    case OutType::kBF16:
      return kGgmlBF16;
    case OutType::kQ8_0:
      return ne0 % 32 == 0 ? kGgmlQ8_0 : kGgmlF16;  // gguf.QuantError -> F16
  }
  return kGgmlF32;
}

uint32_t file_type(OutType type) {
  switch (type) {
    case OutType::kF32:
      return 0;  // LLAMA_FTYPE_ALL_F32
    case OutType::kF16:
      return 1;  // MOSTLY_F16
    case OutType::kBF16:
      return 32;  // MOSTLY_BF16
    case OutType::kQ8_0:
      return 7;  // MOSTLY_Q8_0
  }
  return 0;
}

at::Tensor permute_rows(const at::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0);
  std::vector<int64_t> split = {heads, 2, rows / heads / 2};
  for (int64_t d = 1; d < w.dim(); ++d) split.push_back(w.size(d));
  // (h, 2, hd/2, ...) -> (h, hd/2, 2, ...)
  return w.reshape(split).transpose(1, 2).reshape(w.sizes()).contiguous();
}

at::Tensor llama3_rope_factors(const model::RopeConfig& rope, int64_t dim) {
  // freqs = 1.0 / (base ** (arange(0, dim, 2, float32) / dim)); Python's
  // `scalar / tensor` is tensor.reciprocal() * scalar, done here the same way.
  const at::Tensor exponents = at::arange(0, dim, 2, at::kFloat) / dim;
  const at::Tensor freqs = (at::reciprocal(at::pow(rope.theta, exponents)) * 1.0).contiguous();
  const float factor = static_cast<float>(rope.factor);
  const float low = static_cast<float>(rope.low_freq_factor);
  const auto old_len = static_cast<double>(rope.original_max_position_embeddings);
  const auto low_wavelen = static_cast<float>(old_len / rope.low_freq_factor);
  const auto high_wavelen = static_cast<float>(old_len / rope.high_freq_factor);
  const auto two_pi = static_cast<float>(2 * M_PI);
  const float* f = freqs.data_ptr<float>();
  std::vector<float> out;
  for (int64_t k = 0; k < freqs.numel(); ++k) {
    const float wavelen = (1.0f / f[k]) * two_pi;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(factor);
    } else {
      const float smooth = ((1.0f / wavelen) * static_cast<float>(old_len) - low) /
                           static_cast<float>(rope.high_freq_factor - rope.low_freq_factor);
      out.push_back(1.0f / ((1.0f - smooth) / factor + smooth));
    }
  }
  return at::tensor(out, at::kFloat);
}

namespace {

// Hyperparameter writers: "<arch>." + key.
struct Keys {
  Metadata& md;
  std::string prefix;
  void u32(const std::string& key, int64_t v, const char* what) {
    md.emplace_back(prefix + key, u32_value(u32_of(v, what)));
  }
  void f32(const std::string& key, double v) {
    md.emplace_back(prefix + key, f32_value(static_cast<float>(v)));
  }
  // The sizes every architecture has, in TextModel's order.
  void sizes(const model::ModelConfig& c) {
    u32("block_count", c.num_hidden_layers, "num_hidden_layers");
    u32("context_length", c.max_position_embeddings, "max_position_embeddings");
    u32("embedding_length", c.hidden_size, "hidden_size");
    u32("feed_forward_length", c.intermediate_size, "intermediate_size");
    u32("attention.head_count", c.num_attention_heads, "num_attention_heads");
    u32("attention.head_count_kv", c.num_key_value_heads, "num_key_value_heads");
  }
  // RMSNorm epsilon, explicit head sizes and the file type.
  void norm_and_heads(const model::ModelConfig& c, OutType type) {
    f32("attention.layer_norm_rms_epsilon", c.rms_norm_eps);
    u32("attention.key_length", c.head_dim, "head_dim");
    u32("attention.value_length", c.head_dim, "head_dim");
    md.emplace_back("general.file_type", u32_value(file_type(type)));
  }
  void linear_rope(const model::RopeConfig& r) {
    md.emplace_back(prefix + "rope.scaling.type", string_value("linear"));
    f32("rope.scaling.factor", r.factor);
  }
};

[[noreturn]] void refuse(const model::ModelConfig& c, const std::string& what) {
  throw Error("export-gguf: " + c.model_type + " model: " + what, ErrorKind::kUnsupported);
}

// Gemma: llama.cpp scales queries by 1/sqrt(head_dim), or by
// 1/sqrt(hidden / heads) for the 27B models it recognises by their layer
// count; query_pre_attn_scalar must say the same.
void check_gemma_query_scale(const model::ModelConfig& c, int64_t layers_27b) {
  const bool is_27b = c.num_hidden_layers == layers_27b;
  const double d = is_27b ? static_cast<double>(c.hidden_size / c.num_attention_heads)
                          : static_cast<double>(c.head_dim);
  const double want = 1.0 / std::sqrt(d);
  if (std::fabs(c.attn_scale - want) > 1e-9 * want) {
    refuse(c, "query_pre_attn_scalar " + std::to_string(1.0 / (c.attn_scale * c.attn_scale)) +
                  " differs from " + std::to_string(static_cast<int64_t>(d)) +
                  ", the query scale llama.cpp's " + architecture_of(c).arch + " uses (" +
                  (is_27b ? "hidden_size / num_attention_heads" : "head_dim") + ")");
  }
}

// Gemma: llama.cpp fixes which layers slide (layer i slides when
// i % pattern < pattern - 1) and gives them all one window.
int64_t gemma_window(const model::ModelConfig& c, int64_t pattern) {
  int64_t window = 0;
  for (int64_t w : c.layer_window) window = std::max(window, w);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const bool slides = window > 0 && i % pattern < pattern - 1;
    const int64_t w = c.layer_window[static_cast<size_t>(i)];
    if ((w > 0) != slides || (w > 0 && w != window)) {
      refuse(c, "layer " + std::to_string(i) + (w > 0 ? " slides" : " attends globally") +
                    ", but llama.cpp's " + architecture_of(c).arch + " slides layer i (window " +
                    std::to_string(window) + ") exactly when i % " + std::to_string(pattern) +
                    " < " + std::to_string(pattern - 1));
    }
  }
  return window;
}

void llama_like_keys(const model::ModelConfig& c, Keys& k, ModelPlan& plan, OutType type) {
  k.sizes(c);
  at::Tensor rope_freqs;
  if (c.rope.type == "linear") {
    k.linear_rope(c.rope);
  } else if (c.rope.type == "llama3") {
    if (plan.arch != "llama") {
      refuse(c,
             "llama3 rope scaling has no llama.cpp equivalent here (rope_freqs is read by "
             "llama only)");
    }
    rope_freqs = llama3_rope_factors(c.rope, c.head_dim);
  } else if (c.rope.type != "default") {
    refuse(c, "rope_type '" + c.rope.type + "' is not supported (supported: default, linear, " +
                  "llama3)");
  }
  k.f32("rope.freq_base", c.rope.theta);
  k.norm_and_heads(c, type);
  if (plan.arch == "llama") {
    k.u32("vocab_size", c.vocab_size, "vocab_size");
    k.u32("rope.dimension_count", c.head_dim, "head_dim");
  }
  if (rope_freqs.defined()) {
    plan.tensors.push_back(
        {{"rope_freqs.weight", {rope_freqs.numel()}, kGgmlF32}, "", rope_freqs, 0, false});
  }
  for (int64_t w : c.layer_window) {
    if (w > 0) {
      plan.notes.push_back("config.json's sliding window (" + std::to_string(w) +
                           " tokens) has no key in llama.cpp's " + plan.arch +
                           " architecture: llama.cpp attends to the whole context, so outputs "
                           "differ from the model's beyond that many tokens");
      break;
    }
  }
}

// convert_hf_to_gguf's Gemma2Model keys (in TextModel's order, as every
// writer here), plus rope.freq_base (which it leaves to llama.cpp's default
// of 10000).
void gemma2_keys(const model::ModelConfig& c, Keys& k, OutType type) {
  if (c.rope.type != "default") refuse(c, "rope scaling is not supported for gemma2");
  if (c.attn_softcap <= 0 || c.final_softcap <= 0) {
    refuse(c,
           "llama.cpp's gemma2 always soft-caps attention and final logits; "
           "attn_logit_softcapping and final_logit_softcapping must be set");
  }
  check_gemma_query_scale(c, 46);
  const int64_t window = gemma_window(c, 2);
  if (window == 0) refuse(c, "llama.cpp's gemma2 needs a sliding_window");
  k.sizes(c);
  k.f32("rope.freq_base", c.rope.theta);
  k.norm_and_heads(c, type);
  k.f32("attn_logit_softcapping", c.attn_softcap);
  k.f32("final_logit_softcapping", c.final_softcap);
  k.u32("attention.sliding_window", window, "sliding_window");
}

// convert_hf_to_gguf's Gemma3Model keys. llama.cpp gives the sliding layers
// RoPE base 10000 without scaling; the global ones rope.freq_base and the
// linear scaling.
void gemma3_keys(const model::ModelConfig& c, Keys& k, OutType type) {
  if (c.attn_softcap > 0) refuse(c, "llama.cpp's gemma3 has no attention soft-capping");
  if (c.rope.type != "default" && c.rope.type != "linear") {
    refuse(c, "rope_type '" + c.rope.type + "' is not supported (supported: default, linear)");
  }
  const model::RopeConfig local = c.rope_local.value_or(c.rope);
  if (local.type != "default" || local.theta != 10000.0) {
    refuse(c, "the sliding layers' RoPE (theta " + std::to_string(local.theta) + ", " + local.type +
                  ") differs from llama.cpp's fixed one for gemma3 (theta 10000, "
                  "no scaling)");
  }
  check_gemma_query_scale(c, 62);
  const int64_t window = gemma_window(c, 6);
  k.sizes(c);
  if (c.rope.type == "linear") k.linear_rope(c.rope);
  k.f32("rope.freq_base", c.rope.theta);
  k.norm_and_heads(c, type);
  if (c.final_softcap > 0) k.f32("final_logit_softcapping", c.final_softcap);
  if (window > 0) k.u32("attention.sliding_window", window, "sliding_window");
}

// convert_hf_to_gguf's Phi3MiniModel keys and longrope factor tensors, with
// the attention factor transformers uses (it computes sqrt(1 + ln f / ln
// orig) for the "yarn" spelling too; the converter writes 0.1 ln f + 1 there).
void phi3_keys(const model::ModelConfig& c, Keys& k, ModelPlan& plan, OutType type) {
  if (c.rope.type != "default" && c.rope.type != "longrope") {
    refuse(c, "rope_type '" + c.rope.type + "' is not supported (supported: default, longrope)");
  }
  if (c.head_dim * c.num_attention_heads != c.hidden_size) {
    refuse(c, "head_dim " + std::to_string(c.head_dim) +
                  " differs from hidden_size / num_attention_heads, which llama.cpp's phi3 uses");
  }
  const int64_t orig = c.rope.original_max_position_embeddings > 0
                           ? c.rope.original_max_position_embeddings
                           : c.max_position_embeddings;
  int64_t window = 0;
  for (int64_t w : c.layer_window) window = std::max(window, w);
  k.sizes(c);
  k.u32("rope.scaling.original_context_length", orig, "original_max_position_embeddings");
  k.u32("rope.dimension_count", c.rotary_dim(), "rotary dims");
  k.f32("rope.freq_base", c.rope.theta);
  k.f32("attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  k.md.emplace_back("general.file_type", u32_value(file_type(type)));
  k.u32("attention.sliding_window", window, "sliding_window");
  if (window > 0) {
    plan.notes.push_back("llama.cpp's phi3 ignores the sliding window (" + std::to_string(window) +
                         " tokens): it attends to the whole context, so outputs differ from the "
                         "model's beyond that many tokens");
  }
  if (c.rope.type == "longrope") {
    k.f32("rope.scaling.attn_factor", c.rope.attention_factor);
    for (const auto& [name, factors] :
         {std::make_pair("rope_factors_long.weight", &c.rope.long_factor),
          std::make_pair("rope_factors_short.weight", &c.rope.short_factor)}) {
      std::vector<float> f(factors->begin(), factors->end());
      at::Tensor t = at::tensor(f, at::kFloat);
      plan.tensors.push_back({{name, {t.numel()}, kGgmlF32}, "", t, 0, false});
    }
    plan.notes.push_back(
        "longrope: llama.cpp picks the long factors for the whole context when the context "
        "size exceeds " +
        std::to_string(orig) + " tokens, transformers per call when the sequence does");
  }
}

// The language model's HF name of checkpoint tensor `name`: the name itself,
// except under a multimodal Gemma 3's checkpoint prefix (loader.h).
std::string hf_name_of(const model::ModelConfig& c, const std::string& name) {
  if (!c.multimodal) return name;
  if (name == "language_model.lm_head.weight") return "lm_head.weight";
  if (name.rfind(c.checkpoint_prefix, 0) == 0)
    return "model." + name.substr(c.checkpoint_prefix.size());
  return name;
}

}  // namespace

ModelPlan plan_model(const model::ModelConfig& c, const io::Checkpoint& ckpt, OutType type) {
  ModelPlan plan;
  plan.spec = &architecture_of(c);
  plan.arch = plan.spec->arch;
  Keys k{plan.hparams, plan.arch + "."};
  if (plan.arch == "gemma2") {
    gemma2_keys(c, k, type);
  } else if (plan.arch == "gemma3") {
    gemma3_keys(c, k, type);
  } else if (plan.arch == "phi3") {
    phi3_keys(c, k, plan, type);
  } else {
    llama_like_keys(c, k, plan, type);
  }
  for (const model::ExpectedTensor& t : model::expected_tensors(c)) {
    // GGUF names follow the HF language model's own names (a multimodal
    // Gemma 3 stores them under its checkpoint prefix).
    const std::string name = gguf_tensor_name(*plan.spec, hf_name_of(c, t.name));
    if (name.empty()) {
      throw Error(
          "export-gguf: tensor '" + t.name + "' has no llama.cpp " + plan.arch + " equivalent",
          ErrorKind::kUnsupported);
    }
    PlannedTensor p{{name, ckpt.info(t.name).shape, 0}, t.name, {}, 0, false};
    p.spec.type = tensor_type(name, p.spec.shape.size(), p.spec.shape.back(), type);
    if (plan.spec->permute_qk &&
        (ends_with(name, "attn_q.weight") || ends_with(name, "attn_q.bias")))
      p.permute_heads = c.num_attention_heads;
    if (plan.spec->permute_qk &&
        (ends_with(name, "attn_k.weight") || ends_with(name, "attn_k.bias")))
      p.permute_heads = c.num_key_value_heads;
    p.plus_one = stored_plus_one(*plan.spec, name);
    plan.tensors.push_back(std::move(p));
  }
  return plan;
}

}  // namespace loratune::gguf::detail
