// trainer/gguf/export_model.cpp — a Hugging Face decoder as llama.cpp's
// architectures see it: tensor names, Q/K permutation, storage types and the
// "<arch>.*" hyperparameters, following convert_hf_to_gguf.py (TextModel,
// LlamaModel, Qwen2Model, Qwen3Model) and the inverse of convert.cpp.
#include <ATen/ops/arange.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/tensor.h>

#include <cmath>
#include <regex>

#include "trainer/gguf/export_detail.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/config.h"
#include "trainer/model/loader.h"

namespace loratune::gguf::detail {
namespace {

// HF name under model.layers.N -> GGUF name under blk.N (inverse of convert.cpp).
const std::pair<const char*, const char*> kLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"mlp.gate_proj.bias", "ffn_gate.bias"},
    {"mlp.up_proj.bias", "ffn_up.bias"},
    {"mlp.down_proj.bias", "ffn_down.bias"},
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string architecture_of(const model::ModelConfig& c) {
  if (c.model_type == "llama" || c.model_type == "mistral") return "llama";
  if (c.model_type == "qwen2" || c.model_type == "qwen3") return c.model_type;
  throw Error("export-gguf: model_type '" + c.model_type +
                  "' has no llama.cpp architecture here (supported: llama, mistral, qwen2, qwen3)",
              ErrorKind::kUnsupported);
}

namespace {

uint32_t u32_of(int64_t v, const char* what) {
  if (v < 0 || v > static_cast<int64_t>(UINT32_MAX)) {
    throw Error(std::string("export-gguf: ") + what + " " + std::to_string(v) +
                    " does not fit a GGUF uint32",
                ErrorKind::kUnsupported);
  }
  return static_cast<uint32_t>(v);
}

}  // namespace

std::string gguf_tensor_name(const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  static const std::regex layer_re(R"(model\.layers\.(\d+)\.(.+))");
  std::smatch m;
  if (!std::regex_match(hf, m, layer_re)) return "";
  for (const auto& [from, to] : kLayerNames) {
    if (m[2].str() == from) return "blk." + m[1].str() + "." + to;
  }
  return "";
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

ModelPlan plan_model(const model::ModelConfig& c, const io::Checkpoint& ckpt, OutType type) {
  ModelPlan plan;
  plan.arch = architecture_of(c);
  const std::string a = plan.arch + ".";
  Metadata& h = plan.hparams;
  h.emplace_back(a + "block_count", u32_value(u32_of(c.num_hidden_layers, "num_hidden_layers")));
  h.emplace_back(a + "context_length",
                 u32_value(u32_of(c.max_position_embeddings, "max_position_embeddings")));
  h.emplace_back(a + "embedding_length", u32_value(u32_of(c.hidden_size, "hidden_size")));
  h.emplace_back(a + "feed_forward_length",
                 u32_value(u32_of(c.intermediate_size, "intermediate_size")));
  h.emplace_back(a + "attention.head_count",
                 u32_value(u32_of(c.num_attention_heads, "num_attention_heads")));
  h.emplace_back(a + "attention.head_count_kv",
                 u32_value(u32_of(c.num_key_value_heads, "num_key_value_heads")));
  if (c.rope.type == "linear") {
    h.emplace_back(a + "rope.scaling.type", string_value("linear"));
    h.emplace_back(a + "rope.scaling.factor", f32_value(static_cast<float>(c.rope.factor)));
  } else if (c.rope.type == "llama3") {
    if (plan.arch != "llama") {
      throw Error("export-gguf: llama3 rope scaling on a " + c.model_type +
                      " model has no llama.cpp equivalent (rope_freqs is read by llama only)",
                  ErrorKind::kUnsupported);
    }
    plan.rope_freqs = llama3_rope_factors(c.rope, c.head_dim);
  } else if (c.rope.type != "default") {
    throw Error("export-gguf: rope_type '" + c.rope.type +
                    "' is not supported (supported: default, linear, llama3)",
                ErrorKind::kUnsupported);
  }
  h.emplace_back(a + "rope.freq_base", f32_value(static_cast<float>(c.rope.theta)));
  h.emplace_back(a + "attention.layer_norm_rms_epsilon",
                 f32_value(static_cast<float>(c.rms_norm_eps)));
  h.emplace_back(a + "attention.key_length", u32_value(u32_of(c.head_dim, "head_dim")));
  h.emplace_back(a + "attention.value_length", u32_value(u32_of(c.head_dim, "head_dim")));
  h.emplace_back("general.file_type", u32_value(file_type(type)));
  if (plan.arch == "llama") {
    h.emplace_back(a + "vocab_size", u32_value(u32_of(c.vocab_size, "vocab_size")));
    h.emplace_back(a + "rope.dimension_count", u32_value(u32_of(c.head_dim, "head_dim")));
  }

  if (plan.rope_freqs.defined()) {
    plan.tensors.push_back({{"rope_freqs.weight", {plan.rope_freqs.numel()}, kGgmlF32}, "", 0});
  }
  for (const model::ExpectedTensor& t : model::expected_tensors(c)) {
    const std::string name = gguf_tensor_name(t.name);
    if (name.empty()) {
      throw Error(
          "export-gguf: tensor '" + t.name + "' has no llama.cpp " + plan.arch + " equivalent",
          ErrorKind::kUnsupported);
    }
    PlannedTensor p{{name, ckpt.info(t.name).shape, 0}, t.name, 0};
    p.spec.type = tensor_type(name, p.spec.shape.size(), p.spec.shape.back(), type);
    if (plan.arch == "llama" &&
        (ends_with(name, "attn_q.weight") || ends_with(name, "attn_q.bias")))
      p.permute_heads = c.num_attention_heads;
    if (plan.arch == "llama" &&
        (ends_with(name, "attn_k.weight") || ends_with(name, "attn_k.bias")))
      p.permute_heads = c.num_key_value_heads;
    plan.tensors.push_back(std::move(p));
  }
  return plan;
}

}  // namespace loratune::gguf::detail
