// trainer/model/checkpoint_check.cpp — config.json against the checkpoint's
// safetensors headers, before anything is allocated (see loader.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/equal.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "trainer/io/error.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/bnb_checkpoint.h"
#include "trainer/model/loader.h"

namespace loratune::model {
namespace {

constexpr size_t kListed = 3;    // names listed per problem
constexpr size_t kProblems = 4;  // problems in one error message

// A parameter of CausalLM(config) under its module-tree name.
struct Param {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<std::string> dims;
  bool linear_weight = false;  // the weight of a model::Linear (a LoRA target)
};

// The parameters in CausalLM's registration order (model.cpp, layers.cpp,
// attention.cpp): embed_tokens; per layer self_attn (q, k, v, o, q_norm,
// k_norm), mlp (gate, up, down), input_layernorm, post_attention_layernorm,
// pre/post_feedforward_layernorm (sandwich_norms); norm; lm_head.
std::vector<Param> parameters(const ModelConfig& c) {
  const std::string heads = "num_attention_heads * head_dim (" +
                            std::to_string(c.num_attention_heads) + " * " +
                            std::to_string(c.head_dim) + ")";
  const std::string kv_heads = "num_key_value_heads * head_dim (" +
                               std::to_string(c.num_key_value_heads) + " * " +
                               std::to_string(c.head_dim) + ")";
  const std::string D = "hidden_size", I = "intermediate_size", V = "vocab_size";
  std::vector<Param> out;
  auto linear = [&](const std::string& path, int64_t in, const std::string& in_dim, int64_t o,
                    const std::string& out_dim, bool bias) {
    out.push_back({path + ".weight", {o, in}, {out_dim, in_dim}, true});
    if (bias) out.push_back({path + ".bias", {o}, {out_dim}, false});
  };
  auto norm = [&](const std::string& path, int64_t dim, const std::string& label) {
    out.push_back({path + ".weight", {dim}, {label}, false});
  };
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, {V, D}, false});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    if (c.fused_qkv) {
      linear(p + "self_attn.qkv_proj", c.hidden_size, D, c.q_dim() + 2 * c.kv_dim(),
             "(num_attention_heads + 2 * num_key_value_heads) * head_dim", c.q_bias);
    } else {
      linear(p + "self_attn.q_proj", c.hidden_size, D, c.q_dim(), heads, c.q_bias);
      linear(p + "self_attn.k_proj", c.hidden_size, D, c.kv_dim(), kv_heads, c.k_bias);
      linear(p + "self_attn.v_proj", c.hidden_size, D, c.kv_dim(), kv_heads, c.v_bias);
    }
    linear(p + "self_attn.o_proj", c.q_dim(), heads, c.hidden_size, D, c.o_bias);
    if (c.qk_norm) {
      norm(p + "self_attn.q_norm", c.head_dim, "head_dim");
      norm(p + "self_attn.k_norm", c.head_dim, "head_dim");
    }
    if (c.fused_gate_up) {
      linear(p + "mlp.gate_up_proj", c.hidden_size, D, 2 * c.intermediate_size,
             "2 * intermediate_size", c.mlp_bias);
    } else {
      linear(p + "mlp.gate_proj", c.hidden_size, D, c.intermediate_size, I, c.mlp_bias);
      linear(p + "mlp.up_proj", c.hidden_size, D, c.intermediate_size, I, c.mlp_bias);
    }
    linear(p + "mlp.down_proj", c.intermediate_size, I, c.hidden_size, D, c.mlp_bias);
    norm(p + "input_layernorm", c.hidden_size, D);
    norm(p + "post_attention_layernorm", c.hidden_size, D);
    if (c.sandwich_norms) {
      norm(p + "pre_feedforward_layernorm", c.hidden_size, D);
      norm(p + "post_feedforward_layernorm", c.hidden_size, D);
    }
  }
  norm("model.norm", c.hidden_size, D);
  if (!c.tie_word_embeddings) {
    linear("lm_head", c.hidden_size, D, c.vocab_size, V, false);
  }
  return out;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << at::IntArrayRef(s);
  return o.str();
}

// "a, b, c, and 4 more" of names that came from a file (escaped).
std::string list_names(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < kListed; ++i) {
    s += (i ? ", " : "") + printable(names[i], 120);
  }
  if (names.size() > kListed) s += ", and " + std::to_string(names.size() - kListed) + " more";
  return s;
}

// Checkpoint tensors transformers skips when loading these models, and the
// vision tower and projector of a multimodal one (which loratune does not load).
bool ignorable(const ModelConfig& c, const std::string& name) {
  const std::string inv = "rotary_emb.inv_freq";
  if (name.size() >= inv.size() && name.compare(name.size() - inv.size(), inv.size(), inv) == 0) {
    return true;
  }
  if (is_multimodal_extra(c, name)) return true;
  return c.tie_word_embeddings &&
         (name == "lm_head.weight" || (c.multimodal && name == "language_model.lm_head.weight"));
}

// Where the decoder layers' tensors are: "model.layers." (or the multimodal
// checkpoint's prefix + "layers.").
std::string layers_prefix(const ModelConfig& c) {
  return c.multimodal ? c.checkpoint_prefix + "layers." : "model.layers.";
}

// The layer index of "<prefix><N>.<...>", or -1 for any other name
// (including an index too long to be a layer count loratune accepts).
int64_t layer_index(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  size_t i = prefix.size(), end = i;
  while (end < name.size() && name[end] >= '0' && name[end] <= '9') ++end;
  if (end == i || end - i > 9 || end >= name.size() || name[end] != '.') return -1;
  if (name[i] == '0' && end - i > 1) return -1;  // "01" is not a module index
  return std::stoll(name.substr(i, end - i));
}

// "2 layers (model.layers.0 .. model.layers.1)", "3 layers (model.layers.0, 1, 5)"
// (`prefix`: "model.layers.").
std::string describe_layers(const std::set<int64_t>& idx, const std::string& prefix) {
  if (idx.empty()) return "no layers (no " + prefix + "N tensors)";
  std::string s = std::to_string(idx.size()) + (idx.size() == 1 ? " layer (" : " layers (");
  const int64_t last = *idx.rbegin();
  if (last + 1 == static_cast<int64_t>(idx.size())) {
    s += prefix + "0";
    if (last > 0) s += " .. " + prefix + std::to_string(last);
    return s + ")";
  }
  s += prefix;
  size_t n = 0;
  for (int64_t i : idx) {
    if (n == 6) {
      s += ", ...";
      break;
    }
    s += (n++ ? ", " : "") + std::to_string(i);
  }
  return s + ")";
}

}  // namespace

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& config) {
  std::vector<ExpectedTensor> out;
  for (Param& p : parameters(config)) {
    out.push_back({checkpoint_name(config, p.name), std::move(p.shape), std::move(p.dims)});
  }
  return out;
}

std::vector<LinearShape> linear_shapes(const ModelConfig& config) {
  std::vector<LinearShape> out;
  for (const Param& p : parameters(config)) {
    if (!p.linear_weight) continue;
    const std::string path = p.name.substr(0, p.name.size() - std::string(".weight").size());
    out.push_back({path, p.shape[1], p.shape[0]});
  }
  return out;
}

int64_t parameter_count(const ModelConfig& config) {
  int64_t n = 0;
  for (const Param& p : parameters(config)) {
    int64_t numel = 1;
    for (int64_t d : p.shape) numel *= d;  // parse_config's caps keep this in range
    n += numel;
  }
  return n;
}

// A tied model's checkpoint may still store lm_head.weight (transformers'
// ignored key). When it equals the embedding, nothing is lost by tying. When
// it differs, transformers 5 unties the two and uses lm_head.weight (4.x tied
// them): loratune would silently use the embedding, and a merge would write
// the tied config beside the other head. Refused then, saying which way out.
// The values are compared in the mapped files, a block of rows at a time
// (same dtype: no copy), only when such a tensor is present.
std::string tied_head_problem(const ModelConfig& c, const io::Checkpoint& ckpt) {
  if (!c.tie_word_embeddings) return "";
  std::string head;
  for (const char* n : {"lm_head.weight", "language_model.lm_head.weight"}) {
    if (ckpt.contains(n)) head = n;
  }
  const std::string embed = checkpoint_name(c, "model.embed_tokens.weight");
  if (head.empty() || !ckpt.contains(embed)) return "";
  const io::TensorInfo& hi = ckpt.info(head);
  const io::TensorInfo& ei = ckpt.info(embed);
  const std::string fix =
      ": set tie_word_embeddings to false in config.json to use " + head + ", or remove it";
  if (hi.shape != ei.shape) {
    return "tie_word_embeddings is true but the checkpoint's " + head + " is " +
           shape_str(hi.shape) + ", not " + embed + "'s " + shape_str(ei.shape) + fix;
  }
  if (!at::isFloatingType(hi.scalar_type) || !at::isFloatingType(ei.scalar_type)) return "";
  const at::Tensor h = ckpt.tensor(head), e = ckpt.tensor(embed);  // [V,D] mapped views
  const bool same_dtype = hi.scalar_type == ei.scalar_type;
  const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, h.size(1)));
  for (int64_t r = 0; r < h.size(0); r += rows) {
    const int64_t n = std::min(rows, h.size(0) - r);
    const at::Tensor a = h.narrow(0, r, n), b = e.narrow(0, r, n);  // [n,D]
    const bool equal = same_dtype ? at::equal(a, b) : at::equal(a.to(at::kFloat), b.to(at::kFloat));
    if (!equal) {
      return "tie_word_embeddings is true but the checkpoint's " + head + " differs from " + embed +
             " (transformers 5 then unties them and uses " + head + ")" + fix;
    }
  }
  return "";
}

std::vector<std::string> checkpoint_problems(const ModelConfig& config,
                                             const io::Checkpoint& ckpt) {
  std::vector<std::string> problems;
  const std::vector<std::string> names = ckpt.names();
  ModelConfig c = config;  // a multimodal checkpoint's names decide its layout
  detect_checkpoint_layout(c, ckpt);
  const std::string layers_at = layers_prefix(c);

  // The layer count first: every per-layer check below depends on it.
  std::set<int64_t> layers;
  for (const auto& n : names) {
    const int64_t l = layer_index(n, layers_at);
    if (l >= 0) layers.insert(l);
  }
  const bool layers_match = static_cast<int64_t>(layers.size()) == c.num_hidden_layers &&
                            (layers.empty() || *layers.rbegin() + 1 == c.num_hidden_layers);
  if (!layers_match) {
    problems.push_back("num_hidden_layers is " + std::to_string(c.num_hidden_layers) +
                       " but the checkpoint has " + describe_layers(layers, layers_at));
    return problems;
  }

  std::set<std::string> used;
  std::vector<std::string> missing, not_float;
  std::map<std::string, std::pair<std::string, size_t>> by_key;  // dims label -> (first, count)
  std::vector<std::string> key_order;
  std::vector<std::string> bnb_without_config;
  for (const Param& p : parameters(c)) {
    const ExpectedTensor t{checkpoint_name(c, p.name), p.shape, p.dims};
    if (!ckpt.contains(t.name)) {
      missing.push_back(t.name);
      continue;
    }
    used.insert(t.name);
    const io::TensorInfo& info = ckpt.info(t.name);
    if (p.linear_weight && is_bnb_quantized(ckpt, t.name)) {
      // A bitsandbytes 4-bit weight: packed bytes plus its state tensors
      // (bnb_checkpoint.h reads and checks those when the model loads).
      for (const auto& n : bnb_companion_names(t.name)) {
        if (ckpt.contains(n)) used.insert(n);
      }
      if (!c.bnb_nf4) {
        bnb_without_config.push_back(t.name);
        continue;
      }
      const std::vector<int64_t> packed = {(t.shape[0] * t.shape[1] + 1) / 2, 1};
      if (info.shape != packed || info.scalar_type != at::kByte) {
        problems.push_back(t.dims[0] + " x " + t.dims[1] + " is " + shape_str(t.shape) +
                           ", 4-bit packed " + shape_str(packed) + " uint8, but the checkpoint's " +
                           t.name + " is " + printable(info.dtype, 16) + " " +
                           shape_str(info.shape));
      }
      continue;
    }
    if (info.shape != t.shape) {
      std::string key = "the number of dimensions";
      std::string what = "config.json implies " + shape_str(t.shape);
      if (info.shape.size() == t.shape.size()) {
        for (size_t d = 0; d < t.shape.size(); ++d) {
          if (info.shape[d] == t.shape[d]) continue;
          key = t.dims[d];
          what = key + " is " + std::to_string(t.shape[d]);
          break;
        }
      }
      auto [it, fresh] = by_key.try_emplace(key);
      if (fresh) {
        key_order.push_back(key);
        it->second.first = what + " but the checkpoint's " + t.name + " is " +
                           shape_str(info.shape) + " (expected " + shape_str(t.shape) + ")";
      }
      ++it->second.second;
    }
    if (!at::isFloatingType(info.scalar_type)) {
      not_float.push_back(t.name + " (" + printable(info.dtype, 16) + ")");
    }
  }
  for (const auto& key : key_order) {
    const auto& [first, count] = by_key[key];
    problems.push_back(
        first +
        (count > 1 ? " (and " + std::to_string(count - 1) + " more tensors of that size)" : ""));
  }
  if (!missing.empty()) {
    problems.push_back("the checkpoint lacks " + std::to_string(missing.size()) + " tensor" +
                       (missing.size() == 1 ? "" : "s") +
                       " the config implies: " + list_names(missing));
  }
  std::vector<std::string> unexpected;
  for (const auto& n : names) {
    if (!used.count(n) && !ignorable(c, n)) unexpected.push_back(n);
  }
  if (!unexpected.empty()) {
    problems.push_back("the checkpoint has " + std::to_string(unexpected.size()) + " tensor" +
                       (unexpected.size() == 1 ? "" : "s") +
                       " the config does not describe: " + list_names(unexpected));
  }
  if (!bnb_without_config.empty()) {
    problems.push_back("the checkpoint holds bitsandbytes 4-bit weights (" +
                       list_names(bnb_without_config) +
                       ") but config.json has no quantization_config");
  }
  if (!not_float.empty()) {
    problems.push_back("weights must be floating point: " + list_names(not_float));
  }
  if (problems.empty()) {
    if (std::string tied = tied_head_problem(c, ckpt); !tied.empty()) problems.push_back(tied);
  }
  return problems;
}

void check_checkpoint(const std::string& config_path, const ModelConfig& config,
                      const io::Checkpoint& ckpt, bool reads_bnb_nf4) {
  if (config.bnb_nf4 && !reads_bnb_nf4) {
    throw Error(config_path +
                    ": a bitsandbytes 4-bit NF4 checkpoint (quantization_config); this command "
                    "reads full-precision weights only (merge an adapter into it, or use the "
                    "original model)",
                ErrorKind::kUnsupported);
  }
  const std::vector<std::string> problems = checkpoint_problems(config, ckpt);
  if (problems.empty()) return;
  std::string msg = config_path + ": ";
  for (size_t i = 0; i < problems.size() && i < kProblems; ++i)
    msg += (i ? "; " : "") + problems[i];
  if (problems.size() > kProblems) {
    msg += "; and " + std::to_string(problems.size() - kProblems) + " more problems";
  }
  throw Error(msg, ErrorKind::kCorrupt);
}

}  // namespace loratune::model
