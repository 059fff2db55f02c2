// trainer/gguf/convert.cpp — GGUF architecture -> Hugging Face config.json and
// tensor names (llama/mistral, qwen2, qwen3, gemma2, gemma3, phi3; names from
// arch.h, the table export-gguf writes with), as transformers'
// load_gguf_checkpoint reads them.
//
// Config keys come from "<arch>.*" metadata; head_dim comes from the shape of
// blk.0.attn_q.weight (rows / head_count; phi3's attn_qkv: rows / (heads + 2
// kv heads)), which is what the weights mean whatever the metadata says. Tied
// embeddings when output.weight is absent. What llama.cpp fixes rather than
// stores is written as llama.cpp runs it: Gemma's sliding layers (every
// second layer for gemma2, five of six for gemma3, whose local RoPE base is
// 10000) and query scale (1/sqrt(head_dim), or hidden / heads for the 27B
// layer counts). Gemma's norms are stored as 1 + w and come back as w.
// llama.cpp's converter permutes the rows of llama's Q and K for its rope
// layout; map_model marks them and hf_tensor undoes it
// (transformers' _reverse_permute_weights): GGUF row h*hd + 2j + s is HF row
// h*hd + s*hd/2 + j.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <regex>
#include <set>

#include "trainer/gguf/arch.h"
#include "trainer/gguf/gguf.h"

namespace loratune::gguf {
namespace {

// The HF tensors (under model.layers.N.) every block of `arch` must have.
std::vector<std::string> required_layer_tensors(const std::string& arch) {
  std::vector<std::string> v = {"input_layernorm.weight", "post_attention_layernorm.weight"};
  if (arch == "phi3") {
    for (const char* n : {"self_attn.qkv_proj.weight", "self_attn.o_proj.weight",
                          "mlp.gate_up_proj.weight", "mlp.down_proj.weight"}) {
      v.push_back(n);
    }
    return v;
  }
  for (const char* n : {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                        "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
    v.push_back(n);
  }
  if (arch == "qwen2") {
    for (const char* n :
         {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"})
      v.push_back(n);
  }
  if (arch == "gemma2" || arch == "gemma3") {
    v.push_back("pre_feedforward_layernorm.weight");
    v.push_back("post_feedforward_layernorm.weight");
  }
  if (arch == "qwen3" || arch == "gemma3") {
    v.push_back("self_attn.q_norm.weight");
    v.push_back("self_attn.k_norm.weight");
  }
  return v;
}

std::string dtype_string(at::ScalarType t) {
  if (t == at::kFloat) return "float32";
  if (t == at::kBFloat16) return "bfloat16";
  if (t == at::kHalf) return "float16";
  throw Error(std::string("import: unsupported dtype ") + c10::toString(t), ErrorKind::kConfig);
}

// A float key that must be finite and > 0 (JSON cannot hold NaN/inf).
double positive_float(const GgufFile& f, const std::string& key) {
  const double v = f.get_float(key);
  if (!std::isfinite(v) || !(v > 0)) {
    throw Error(f.path() + ": metadata key '" + key + "' is " + std::to_string(v) +
                    ", expected a finite number > 0",
                ErrorKind::kCorrupt);
  }
  return v;
}

// A positive integer key, or `fallback` (when >= 0) if absent.
int64_t positive(const GgufFile& f, const std::string& key, int64_t fallback = -1) {
  if (fallback >= 0 && f.find(key) == nullptr) return fallback;
  const int64_t v = f.get_int(key);
  if (v <= 0 || v > (int64_t{1} << 30)) {
    throw Error(f.path() + ": metadata key '" + key + "' is " + std::to_string(v) +
                    ", expected a positive size",
                ErrorKind::kCorrupt);
  }
  return v;
}

// An optional token id key checked against the vocabulary; -1 when absent.
int64_t token_id(const GgufFile& f, const std::string& key, int64_t vocab) {
  if (f.find(key) == nullptr) return -1;
  const int64_t v = f.get_int(key);
  if (v < 0 || v >= vocab) {
    throw Error(f.path() + ": metadata key '" + key + "' is " + std::to_string(v) +
                    ", outside the vocabulary of " + std::to_string(vocab),
                ErrorKind::kCorrupt);
  }
  return v;
}

nlohmann::json id_or_null(int64_t id) {
  return id < 0 ? nlohmann::json(nullptr) : nlohmann::json(id);
}

void expect_shape(const GgufFile& f, const TensorInfo& t, std::vector<int64_t> want) {
  if (t.shape != want) {
    auto str = [](const std::vector<int64_t>& s) {
      std::string out = "[";
      for (size_t k = 0; k < s.size(); ++k) out += (k ? ", " : "") + std::to_string(s[k]);
      return out + "]";
    };
    throw Error(f.path() + ": tensor '" + t.name + "' has shape " + str(t.shape) +
                    ", the config says " + str(want),
                ErrorKind::kCorrupt);
  }
}

}  // namespace

namespace {

// A float32 tensor's values (rope factor tensors), checked to hold `n`.
std::vector<double> float_values(const GgufFile& f, const TensorInfo& t, int64_t n) {
  if (t.shape != std::vector<int64_t>{n}) {
    throw Error(f.path() + ": tensor '" + t.name + "' must hold " + std::to_string(n) +
                    " values (rope.dimension_count / 2)",
                ErrorKind::kCorrupt);
  }
  const at::Tensor v = f.dequantize(t).to(at::kDouble).contiguous();
  const double* d = v.data_ptr<double>();
  for (int64_t k = 0; k < n; ++k) {
    if (!(d[k] > 0) || !std::isfinite(d[k])) {
      throw Error(f.path() + ": tensor '" + t.name + "' value " + std::to_string(k) + " is " +
                      std::to_string(d[k]) + "; rope factors are positive",
                  ErrorKind::kCorrupt);
    }
  }
  return std::vector<double>(d, d + n);
}

// layer_types of llama.cpp's fixed Gemma pattern: layer i slides when
// i % pattern < pattern - 1 (and a window exists).
std::vector<std::string> gemma_layer_types(int64_t layers, int64_t pattern, bool window) {
  std::vector<std::string> v;
  for (int64_t i = 0; i < layers; ++i) {
    v.push_back(window && i % pattern < pattern - 1 ? "sliding_attention" : "full_attention");
  }
  return v;
}

}  // namespace

HfModel map_model(const GgufFile& f, at::ScalarType dtype) {
  HfModel m;
  const std::string arch = f.get_string("general.architecture");
  const detail::ArchSpec* spec = detail::find_arch(arch);
  if (spec == nullptr) {
    throw Error(f.path() + ": architecture '" + printable(arch) +
                    "' is not supported (supported: " + detail::arch_names() + ")",
                ErrorKind::kUnsupported);
  }
  m.model_type = spec->model_type;
  const std::string p = arch + ".";
  const int64_t layers = positive(f, p + "block_count");
  // A block has at least 6 tensors (2 norms; phi3's fused qkv, output,
  // gate_up and down; the others have more): a larger count is a lie,
  // refused before anything is sized from it.
  if (layers > static_cast<int64_t>(f.tensors().size()) / 6) {
    throw Error(f.path() + ": metadata key '" + p + "block_count' is " + std::to_string(layers) +
                    ", but the file holds only " + std::to_string(f.tensors().size()) +
                    " tensors (at least 6 per block)",
                ErrorKind::kCorrupt);
  }
  const int64_t hidden = positive(f, p + "embedding_length");
  const int64_t inter = positive(f, p + "feed_forward_length");
  const int64_t heads = positive(f, p + "attention.head_count");
  const int64_t kv_heads = positive(f, p + "attention.head_count_kv", heads);
  const int64_t context = positive(f, p + "context_length", 2048);
  const double eps = f.get_float(p + "attention.layer_norm_rms_epsilon");
  const double theta =
      f.find(p + "rope.freq_base") ? positive_float(f, p + "rope.freq_base") : 10000.0;
  // JSON has no NaN/inf (they would be written as null) and an epsilon
  // below zero makes no sense: refused here, not in the written config.json.
  if (!std::isfinite(eps) || eps < 0) {
    throw Error(f.path() + ": metadata key '" + p + "attention.layer_norm_rms_epsilon' is " +
                    std::to_string(eps) + ", expected a finite number >= 0",
                ErrorKind::kCorrupt);
  }
  if (heads % kv_heads != 0) {
    throw Error(f.path() + ": attention.head_count " + std::to_string(heads) +
                    " is not a multiple of head_count_kv " + std::to_string(kv_heads),
                ErrorKind::kCorrupt);
  }
  if (f.find_tensor("rope_freqs.weight") != nullptr) {
    throw Error(f.path() +
                    ": tensor 'rope_freqs.weight' (llama3-style rope scaling factors) is not "
                    "supported by import",
                ErrorKind::kUnsupported);
  }
  const bool fused = arch == "phi3";
  const std::string q_name = fused ? "blk.0.attn_qkv.weight" : "blk.0.attn_q.weight";
  const TensorInfo* embed = f.find_tensor("token_embd.weight");
  const TensorInfo* q0 = f.find_tensor(q_name);
  for (const auto& [name, t] :
       {std::make_pair(std::string("token_embd.weight"), embed), std::make_pair(q_name, q0)}) {
    if (t == nullptr)
      throw Error(f.path() + ": required tensor '" + name + "' is missing", ErrorKind::kCorrupt);
  }
  if (embed->shape.size() != 2 || embed->shape[1] != hidden) {
    expect_shape(f, *embed, {embed->shape[0], hidden});
  }
  const int64_t vocab = embed->shape[0];
  const int64_t q_heads = fused ? heads + 2 * kv_heads : heads;
  if (q0->shape.size() != 2 || q0->shape[0] % q_heads != 0 || (q0->shape[0] / q_heads) % 2 != 0) {
    throw Error(f.path() + ": tensor '" + q_name + "' rows are not " +
                    (fused ? "(head_count + 2 head_count_kv) " : "head_count ") +
                    std::to_string(q_heads) + " x an even head_dim",
                ErrorKind::kCorrupt);
  }
  const int64_t hd = q0->shape[0] / q_heads;
  int64_t rot = hd;
  if (f.find(p + "rope.dimension_count")) {
    rot = f.get_int(p + "rope.dimension_count");
    if (rot != hd && arch != "phi3") {
      throw Error(f.path() + ": " + p + "rope.dimension_count " + std::to_string(rot) +
                      " differs from head_dim " + std::to_string(hd) +
                      " (partial rotary is supported for phi3 only)",
                  ErrorKind::kUnsupported);
    }
    if (rot <= 0 || rot > hd || rot % 2 != 0) {
      throw Error(f.path() + ": " + p + "rope.dimension_count " + std::to_string(rot) +
                      " is not an even number of dims within head_dim " + std::to_string(hd),
                  ErrorKind::kCorrupt);
    }
  }
  nlohmann::json rope = {{"rope_type", "default"}, {"rope_theta", theta}};
  if (const Value* st = f.find(p + "rope.scaling.type")) {
    const std::string type = f.get_string(p + "rope.scaling.type");
    if (type == "linear") {
      rope["rope_type"] = "linear";
      rope["factor"] = positive_float(f, p + "rope.scaling.factor");
    } else if (type != "none") {
      throw Error(f.path() + ": rope scaling type '" + printable(st->s) +
                      "' is not supported (supported: none, linear)",
                  ErrorKind::kUnsupported);
    }
  }
  const bool tied = f.find_tensor("output.weight") == nullptr;
  const int64_t bos = token_id(f, "tokenizer.ggml.bos_token_id", vocab);
  const int64_t eos = token_id(f, "tokenizer.ggml.eos_token_id", vocab);
  const int64_t pad = token_id(f, "tokenizer.ggml.padding_token_id", vocab);

  nlohmann::json c = {
      {"architectures", {spec->hf_class}},
      {"model_type", spec->model_type},
      {"vocab_size", vocab},
      {"hidden_size", hidden},
      {"intermediate_size", inter},
      {"num_hidden_layers", layers},
      {"num_attention_heads", heads},
      {"num_key_value_heads", kv_heads},
      {"head_dim", hd},
      {"hidden_act", "silu"},
      {"max_position_embeddings", context},
      {"rms_norm_eps", eps},
      {"rope_parameters", rope},
      {"tie_word_embeddings", tied},
      {"bos_token_id", id_or_null(bos)},
      {"eos_token_id", id_or_null(eos)},
      {"pad_token_id", id_or_null(pad)},
      {"attention_dropout", 0.0},
      {"initializer_range", 0.02},
      {"use_cache", true},
      {"dtype", dtype_string(dtype)},
  };
  // Optional metadata size of this architecture; 0 when absent or 0 (a
  // sliding window of 0 is none).
  auto optional_size = [&](const std::string& key) -> int64_t {
    if (f.find(p + key) == nullptr || f.get_int(p + key) == 0) return 0;
    return positive(f, p + key);
  };
  if (arch == "llama") {
    c["attention_bias"] = false;
    c["mlp_bias"] = false;
  } else if (arch == "qwen2" || arch == "qwen3") {
    c["use_sliding_window"] = false;
    c["sliding_window"] = nullptr;
    c["max_window_layers"] = layers;
    c["layer_types"] = std::vector<std::string>(static_cast<size_t>(layers), "full_attention");
    if (arch == "qwen3") c["attention_bias"] = false;
  } else if (arch == "gemma2" || arch == "gemma3") {
    const bool g2 = arch == "gemma2";
    c.erase("hidden_act");
    c["hidden_activation"] = "gelu_pytorch_tanh";
    c["attention_bias"] = false;
    // llama.cpp's query scale (see the file comment).
    c["query_pre_attn_scalar"] = layers == (g2 ? 46 : 62) ? hidden / heads : hd;
    const int64_t window = optional_size("attention.sliding_window");
    if (g2 && window == 0) {
      throw Error(f.path() + ": metadata key '" + p + "attention.sliding_window' is missing",
                  ErrorKind::kCorrupt);
    }
    c["sliding_window"] = window > 0 ? nlohmann::json(window) : nlohmann::json(nullptr);
    c["layer_types"] = gemma_layer_types(layers, g2 ? 2 : 6, window > 0);
    auto softcap = [&](const std::string& key) -> nlohmann::json {
      if (f.find(p + key) == nullptr) return nullptr;
      const double v = f.get_float(p + key);
      if (!(v > 0) || !std::isfinite(v)) {
        throw Error(f.path() + ": metadata key '" + p + key + "' must be positive",
                    ErrorKind::kCorrupt);
      }
      return v;
    };
    // llama.cpp's gemma2 defaults: 50 and 30.
    c["attn_logit_softcapping"] = g2 && f.find(p + "attn_logit_softcapping") == nullptr
                                      ? nlohmann::json(50.0)
                                      : softcap("attn_logit_softcapping");
    c["final_logit_softcapping"] = g2 && f.find(p + "final_logit_softcapping") == nullptr
                                       ? nlohmann::json(30.0)
                                       : softcap("final_logit_softcapping");
    if (!g2) {
      c["rope_parameters"] = {
          {"full_attention", rope},
          {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}}};
    }
  } else if (arch == "phi3") {
    c.erase("head_dim");  // Phi3Config derives it: hidden_size / num_attention_heads
    if (hd * heads != hidden) {
      throw Error(f.path() + ": phi3 head_dim " + std::to_string(hd) +
                      " is not embedding_length / head_count",
                  ErrorKind::kCorrupt);
    }
    const int64_t window = optional_size("attention.sliding_window");
    c["sliding_window"] = window > 0 ? nlohmann::json(window) : nlohmann::json(nullptr);
    const int64_t orig = optional_size("rope.scaling.original_context_length");
    c["original_max_position_embeddings"] = orig > 0 ? orig : context;
    rope["partial_rotary_factor"] = static_cast<double>(rot) / static_cast<double>(hd);
    const TensorInfo* lf = f.find_tensor("rope_factors_long.weight");
    const TensorInfo* sf = f.find_tensor("rope_factors_short.weight");
    if ((lf == nullptr) != (sf == nullptr)) {
      throw Error(f.path() +
                      ": rope_factors_long.weight and rope_factors_short.weight come "
                      "in pairs; one is missing",
                  ErrorKind::kCorrupt);
    }
    if (lf != nullptr) {
      rope["rope_type"] = "longrope";
      rope["long_factor"] = float_values(f, *lf, rot / 2);
      rope["short_factor"] = float_values(f, *sf, rot / 2);
      rope["original_max_position_embeddings"] = c["original_max_position_embeddings"];
      if (f.find(p + "rope.scaling.attn_factor") != nullptr) {
        rope["attention_factor"] = positive_float(f, p + "rope.scaling.attn_factor");
      }
    }
    c["rope_parameters"] = rope;
  }
  m.config_json = c.dump(2) + "\n";
  nlohmann::json g = {{"bos_token_id", id_or_null(bos)}, {"eos_token_id", id_or_null(eos)}};
  if (pad >= 0) g["pad_token_id"] = pad;
  m.generation_config_json = g.dump(2) + "\n";

  // Tensor names, each checked against the config's shape.
  const std::regex layer_re(R"(blk\.(\d+)\.(.+))");
  const int64_t q = heads * hd, kv = kv_heads * hd;
  const std::map<std::string, std::vector<int64_t>> shapes = {
      {"attn_norm.weight", {hidden}},
      {"ffn_norm.weight", {hidden}},
      {"post_attention_norm.weight", {hidden}},
      {"post_ffw_norm.weight", {hidden}},
      {"attn_q.weight", {q, hidden}},
      {"attn_k.weight", {kv, hidden}},
      {"attn_v.weight", {kv, hidden}},
      {"attn_qkv.weight", {q + 2 * kv, hidden}},
      {"attn_output.weight", {hidden, q}},
      {"attn_q.bias", {q}},
      {"attn_k.bias", {kv}},
      {"attn_v.bias", {kv}},
      {"attn_q_norm.weight", {hd}},
      {"attn_k_norm.weight", {hd}},
      {"ffn_gate.weight", {inter, hidden}},
      {"ffn_up.weight", {fused ? 2 * inter : inter, hidden}},
      {"ffn_down.weight", {hidden, inter}}};
  for (const TensorInfo& t : f.tensors()) {
    if (fused && (t.name == "rope_factors_long.weight" || t.name == "rope_factors_short.weight")) {
      continue;  // in config.json's rope_parameters
    }
    HfModel::Entry e{&t, detail::hf_tensor_name(*spec, t.name), 0, false};
    std::smatch mt;
    if (t.name == "token_embd.weight" || t.name == "output.weight") {
      expect_shape(f, t, {vocab, hidden});
    } else if (t.name == "output_norm.weight") {
      expect_shape(f, t, {hidden});
    } else if (std::regex_match(t.name, mt, layer_re)) {
      const std::string idx = mt[1].str(), rest = mt[2].str();
      if (idx.size() > 6 || std::stoll(idx) >= layers || (idx.size() > 1 && idx[0] == '0')) {
        throw Error(
            f.path() + ": tensor '" + t.name + "' is outside block_count " + std::to_string(layers),
            ErrorKind::kCorrupt);
      }
      auto it = shapes.find(rest);
      if (it != shapes.end() && !e.hf_name.empty()) expect_shape(f, t, it->second);
      if (spec->permute_qk && rest == "attn_q.weight") e.unpermute_heads = heads;
      if (spec->permute_qk && rest == "attn_k.weight") e.unpermute_heads = kv_heads;
    }
    if (e.hf_name.empty()) {
      throw Error(f.path() + ": tensor '" + printable(t.name) + "' has no Hugging Face " + arch +
                      " equivalent (unsupported tensor)",
                  ErrorKind::kUnsupported);
    }
    e.minus_one = detail::stored_plus_one(*spec, t.name);
    if (!t.traits->dequantizable) {
      throw Error(f.path() + ": tensor '" + t.name + "': ggml type " + t.traits->name +
                      " cannot be dequantized (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, "
                      "Q5_1, Q4_K, Q6_K)",
                  ErrorKind::kUnsupported);
    }
    m.entries.push_back(e);
  }
  // Every tensor the HF model needs must be there (biases / norms by family).
  std::vector<std::string> need = {"model.embed_tokens.weight", "model.norm.weight"};
  const std::vector<std::string> per_layer = required_layer_tensors(arch);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    for (const std::string& n : per_layer) need.push_back(pre + n);
  }
  std::set<std::string> have;
  for (const auto& e : m.entries) have.insert(e.hf_name);
  for (const auto& n : need) {
    if (!have.count(n)) {
      throw Error(f.path() + ": " + arch + " model lacks the tensor for " + n, ErrorKind::kCorrupt);
    }
  }
  if (have.size() > need.size() + (tied ? 0 : 1)) {
    for (const auto& e : m.entries) {
      if (std::find(need.begin(), need.end(), e.hf_name) == need.end() &&
          e.hf_name != "lm_head.weight") {
        throw Error(
            f.path() + ": tensor '" + e.info->name + "' is not part of a " + arch + " model",
            ErrorKind::kUnsupported);
      }
    }
  }
  return m;
}

at::Tensor hf_tensor(const GgufFile& f, const HfModel::Entry& e, at::ScalarType dtype) {
  at::Tensor w = f.dequantize(*e.info);  // (rows, cols) float32
  if (e.minus_one) w = w - 1.0;          // Gemma's norms: stored as 1 + w
  if (e.unpermute_heads > 0) {
    const int64_t rows = w.size(0), h = e.unpermute_heads;
    // (h, hd/2, 2, cols) -> (h, 2, hd/2, cols): GGUF row h*hd+2j+s -> HF row h*hd+s*hd/2+j
    w = w.reshape({h, rows / h / 2, 2, -1}).transpose(1, 2).reshape(w.sizes()).contiguous();
  }
  return dtype == at::kFloat ? w : w.to(dtype);
}

}  // namespace loratune::gguf
