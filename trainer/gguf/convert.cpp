// trainer/gguf/convert.cpp — GGUF architecture -> Hugging Face config.json and
// tensor names (llama/mistral, qwen2, qwen3), as transformers'
// load_gguf_checkpoint reads them.
//
// Config keys come from "<arch>.*" metadata; head_dim comes from the shape of
// blk.0.attn_q.weight (rows / head_count), which is what the weights mean
// whatever the metadata says. Tied embeddings when output.weight is absent.
// llama.cpp's converter permutes the rows of llama's Q and K for its rope
// layout; map_model marks them and hf_tensor undoes it
// (transformers' _reverse_permute_weights): GGUF row h*hd + 2j + s is HF row
// h*hd + s*hd/2 + j.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <regex>
#include <set>

#include "trainer/gguf/gguf.h"

namespace loratune::gguf {
namespace {

// GGUF per-layer tensor name -> HF name under model.layers.N.
const std::pair<const char*, const char*> kLayerNames[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_q_norm.weight", "self_attn.q_norm.weight"},
    {"attn_k_norm.weight", "self_attn.k_norm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};

const char* kArchitectures[] = {"llama", "qwen2", "qwen3"};

std::string hf_class(const std::string& model_type) {
  if (model_type == "llama") return "LlamaForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  return "Qwen3ForCausalLM";
}

std::string dtype_string(at::ScalarType t) {
  if (t == at::kFloat) return "float32";
  if (t == at::kBFloat16) return "bfloat16";
  if (t == at::kHalf) return "float16";
  throw Error(std::string("import: unsupported dtype ") + c10::toString(t), ErrorKind::kConfig);
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

HfModel map_model(const GgufFile& f, at::ScalarType dtype) {
  HfModel m;
  const std::string arch = f.get_string("general.architecture");
  bool known = false;
  for (const char* a : kArchitectures) known = known || arch == a;
  if (!known) {
    throw Error(f.path() + ": architecture '" + printable(arch) +
                    "' is not supported (supported: llama, qwen2, qwen3)",
                ErrorKind::kUnsupported);
  }
  m.model_type = arch;
  const std::string p = arch + ".";
  const int64_t layers = positive(f, p + "block_count");
  // A block has at least 9 tensors (2 norms, 4 attention, 3 MLP matrices): a
  // larger count is a lie, refused before anything is sized from it.
  if (layers > static_cast<int64_t>(f.tensors().size()) / 9) {
    throw Error(f.path() + ": metadata key '" + p + "block_count' is " + std::to_string(layers) +
                    ", but the file holds only " + std::to_string(f.tensors().size()) +
                    " tensors (at least 9 per block)",
                ErrorKind::kCorrupt);
  }
  const int64_t hidden = positive(f, p + "embedding_length");
  const int64_t inter = positive(f, p + "feed_forward_length");
  const int64_t heads = positive(f, p + "attention.head_count");
  const int64_t kv_heads = positive(f, p + "attention.head_count_kv", heads);
  const int64_t context = positive(f, p + "context_length", 2048);
  const double eps = f.get_float(p + "attention.layer_norm_rms_epsilon");
  const double theta = f.find(p + "rope.freq_base") ? f.get_float(p + "rope.freq_base") : 10000.0;
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
  const TensorInfo* embed = f.find_tensor("token_embd.weight");
  const TensorInfo* q0 = f.find_tensor("blk.0.attn_q.weight");
  for (const auto& [name, t] :
       {std::make_pair("token_embd.weight", embed), std::make_pair("blk.0.attn_q.weight", q0)}) {
    if (t == nullptr)
      throw Error(f.path() + ": required tensor '" + name + "' is missing", ErrorKind::kCorrupt);
  }
  if (embed->shape.size() != 2 || embed->shape[1] != hidden) {
    expect_shape(f, *embed, {embed->shape[0], hidden});
  }
  const int64_t vocab = embed->shape[0];
  if (q0->shape.size() != 2 || q0->shape[0] % heads != 0 || (q0->shape[0] / heads) % 2 != 0) {
    throw Error(f.path() + ": tensor 'blk.0.attn_q.weight' rows are not head_count " +
                    std::to_string(heads) + " x an even head_dim",
                ErrorKind::kCorrupt);
  }
  const int64_t hd = q0->shape[0] / heads;
  if (arch == "llama" && f.find(p + "rope.dimension_count") &&
      f.get_int(p + "rope.dimension_count") != hd) {
    throw Error(f.path() + ": " + p + "rope.dimension_count " +
                    std::to_string(f.get_int(p + "rope.dimension_count")) +
                    " differs from head_dim " + std::to_string(hd) +
                    " (partial rotary is not supported)",
                ErrorKind::kUnsupported);
  }
  nlohmann::json rope = {{"rope_type", "default"}, {"rope_theta", theta}};
  if (const Value* st = f.find(p + "rope.scaling.type")) {
    const std::string type = f.get_string(p + "rope.scaling.type");
    if (type == "linear") {
      rope["rope_type"] = "linear";
      rope["factor"] = f.get_float(p + "rope.scaling.factor");
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
      {"architectures", {hf_class(arch)}},
      {"model_type", arch},
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
  if (arch == "llama") {
    c["attention_bias"] = false;
    c["mlp_bias"] = false;
  } else {
    c["use_sliding_window"] = false;
    c["sliding_window"] = nullptr;
    c["max_window_layers"] = layers;
    c["layer_types"] = std::vector<std::string>(static_cast<size_t>(layers), "full_attention");
    if (arch == "qwen3") c["attention_bias"] = false;
  }
  m.config_json = c.dump(2) + "\n";
  nlohmann::json g = {{"bos_token_id", id_or_null(bos)}, {"eos_token_id", id_or_null(eos)}};
  if (pad >= 0) g["pad_token_id"] = pad;
  m.generation_config_json = g.dump(2) + "\n";

  // Tensor names, each checked against the config's shape.
  const std::regex layer_re(R"(blk\.(\d+)\.(.+))");
  for (const TensorInfo& t : f.tensors()) {
    HfModel::Entry e{&t, "", 0};
    std::smatch mt;
    if (t.name == "token_embd.weight") {
      e.hf_name = "model.embed_tokens.weight";
      expect_shape(f, t, {vocab, hidden});
    } else if (t.name == "output_norm.weight") {
      e.hf_name = "model.norm.weight";
      expect_shape(f, t, {hidden});
    } else if (t.name == "output.weight") {
      e.hf_name = "lm_head.weight";
      expect_shape(f, t, {vocab, hidden});
    } else if (std::regex_match(t.name, mt, layer_re)) {
      const std::string idx = mt[1].str(), rest = mt[2].str();
      if (idx.size() > 6 || std::stoll(idx) >= layers || (idx.size() > 1 && idx[0] == '0')) {
        throw Error(
            f.path() + ": tensor '" + t.name + "' is outside block_count " + std::to_string(layers),
            ErrorKind::kCorrupt);
      }
      for (const auto& [g_name, hf] : kLayerNames) {
        if (rest == g_name) e.hf_name = "model.layers." + idx + "." + hf;
      }
      const int64_t q = heads * hd, kv = kv_heads * hd;
      const std::map<std::string, std::vector<int64_t>> shapes = {
          {"attn_norm.weight", {hidden}},
          {"ffn_norm.weight", {hidden}},
          {"attn_q.weight", {q, hidden}},
          {"attn_k.weight", {kv, hidden}},
          {"attn_v.weight", {kv, hidden}},
          {"attn_output.weight", {hidden, q}},
          {"attn_q.bias", {q}},
          {"attn_k.bias", {kv}},
          {"attn_v.bias", {kv}},
          {"attn_q_norm.weight", {hd}},
          {"attn_k_norm.weight", {hd}},
          {"ffn_gate.weight", {inter, hidden}},
          {"ffn_up.weight", {inter, hidden}},
          {"ffn_down.weight", {hidden, inter}}};
      auto it = shapes.find(rest);
      if (it != shapes.end()) expect_shape(f, t, it->second);
      if (arch == "llama" && rest == "attn_q.weight") e.unpermute_heads = heads;
      if (arch == "llama" && rest == "attn_k.weight") e.unpermute_heads = kv_heads;
    }
    if (e.hf_name.empty()) {
      throw Error(f.path() + ": tensor '" + printable(t.name) + "' has no Hugging Face " + arch +
                      " equivalent (unsupported tensor)",
                  ErrorKind::kUnsupported);
    }
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
  for (int64_t l = 0; l < layers; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    for (const char* n :
         {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
          "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
      need.push_back(pre + n);
    }
    if (arch == "qwen2") {
      for (const char* n :
           {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}) {
        need.push_back(pre + n);
      }
    }
    if (arch == "qwen3") {
      for (const char* n : {"self_attn.q_norm.weight", "self_attn.k_norm.weight"})
        need.push_back(pre + n);
    }
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
  if (e.unpermute_heads > 0) {
    const int64_t rows = w.size(0), h = e.unpermute_heads;
    // (h, hd/2, 2, cols) -> (h, 2, hd/2, cols): GGUF row h*hd+2j+s -> HF row h*hd+s*hd/2+j
    w = w.reshape({h, rows / h / 2, 2, -1}).transpose(1, 2).reshape(w.sizes()).contiguous();
  }
  return dtype == at::kFloat ? w : w.to(dtype);
}

}  // namespace loratune::gguf
