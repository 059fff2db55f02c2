// trainer/model/config.cpp — config.json → ModelConfig.
#include "trainer/model/config.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>

#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/model/family.h"

namespace loratune::model {

using nlohmann::json;

RopeConfig parse_rope(const ConfigJson& j, int64_t max_pos, const std::string& layer_type) {
  static const json kEmpty = json::object();
  const json& root = j.root();
  // 4.x "rope_scaling" wins over 5.x "rope_parameters" when both are
  // non-null, as transformers' convert_rope_params_to_dict does.
  const json* params = &kEmpty;
  std::string key = "rope_parameters";
  for (const char* k : {"rope_scaling", "rope_parameters"}) {
    auto it = root.find(k);
    if (it != root.end() && !it->is_null()) {
      if (!it->is_object()) j.fail(k, "must be an object, got " + printable(it->dump(), 80));
      params = &*it;
      key = k;
      break;
    }
  }
  const bool nested = params->contains("full_attention") || params->contains("sliding_attention");
  if (nested) {
    if (layer_type.empty()) {
      j.fail(key,
             "per-layer-type rope parameters (\"full_attention\", \"sliding_attention\") "
             "are not supported for model_type \"" +
                 printable(j.get_string("model_type"), 40) + "\"",
             ErrorKind::kUnsupported);
    }
    auto it = params->find(layer_type);
    key += "." + layer_type;
    if (it == params->end() || it->is_null()) {
      params = &kEmpty;
    } else if (!it->is_object()) {
      j.fail(key, "must be an object, got " + printable(it->dump(), 80));
    } else {
      params = &*it;
    }
  } else if (layer_type == "sliding_attention") {
    // 4.x spelling: rope_scaling belongs to the global layers; the local
    // ones use plain RoPE with rope_local_base_freq (transformers' Gemma 3).
    params = &kEmpty;
  }
  const json defaults = json::object();
  ConfigJson p(*params, defaults, j.source());
  auto sub = [&](const char* name) { return key + "." + name; };

  RopeConfig r;
  if (params->contains("rope_theta")) {
    r.theta = p.get_double("rope_theta");
  } else if (layer_type == "sliding_attention") {
    r.theta = j.get_double("rope_local_base_freq");
  } else if (!j.is_null_or_absent("rope_theta")) {
    r.theta = j.get_double("rope_theta");
  }
  if (!p.is_null_or_absent("rope_type")) {
    r.type = p.get_string("rope_type");
  } else if (!p.is_null_or_absent("type")) {
    r.type = p.get_string("type");
  }
  // Phi-3 checkpoints name longrope "su" (and some "yarn"); transformers'
  // Phi3Config reads both as longrope.
  if (r.type == "su" || (r.type == "yarn" && root.value("model_type", "") == "phi3")) {
    r.type = "longrope";
  }
  for (const json* src : {params, &root}) {
    auto it = src->find("partial_rotary_factor");
    if (it == src->end() || it->is_null()) continue;
    if (!it->is_number() || !(it->get<double>() > 0) || it->get<double>() > 1) {
      j.fail("partial_rotary_factor", "must be in (0, 1], got " + printable(it->dump(), 40));
    }
    r.partial_rotary_factor = it->get<double>();
    break;
  }
  // A top-level original_max_position_embeddings takes priority (transformers
  // standardize_rope_params), then the rope dict's, then max_position_embeddings.
  auto original_max = [&] {
    int64_t v = max_pos;
    if (!j.is_null_or_absent("original_max_position_embeddings")) {
      v = j.get_int("original_max_position_embeddings");
    } else if (!p.is_null_or_absent("original_max_position_embeddings")) {
      v = p.get_int("original_max_position_embeddings");
    }
    if (v <= 0) j.fail("original_max_position_embeddings", "must be positive");
    return v;
  };
  auto factors = [&](const char* name) {
    const json* f = p.find(name);
    if (f == nullptr || f->is_null()) j.fail(sub(name), "is required for rope_type \"longrope\"");
    if (!f->is_array() || f->empty() || f->size() > 8192) {
      j.fail(sub(name), "must be a list of head_dim / 2 positive numbers");
    }
    std::vector<double> out;
    for (const auto& x : *f) {
      if (!x.is_number() || !(x.get<double>() > 0) || !std::isfinite(x.get<double>())) {
        j.fail(sub(name), "must be a list of positive numbers, got " + printable(x.dump(), 40));
      }
      out.push_back(x.get<double>());
    }
    return out;
  };
  auto need = [&](const char* name) {
    if (p.is_null_or_absent(name)) {
      j.fail(sub(name), "is required for rope_type \"" + r.type + "\"");
    }
    return p.get_double(name);
  };
  if (r.type == "default") {
    // Nothing else to read.
  } else if (r.type == "linear") {
    r.factor = need("factor");
  } else if (r.type == "llama3") {
    r.factor = need("factor");
    r.low_freq_factor = need("low_freq_factor");
    r.high_freq_factor = need("high_freq_factor");
    if (r.high_freq_factor == r.low_freq_factor) {
      j.fail(sub("high_freq_factor"), "must differ from low_freq_factor");
    }
    r.original_max_position_embeddings = original_max();
  } else if (r.type == "longrope") {
    r.short_factor = factors("short_factor");
    r.long_factor = factors("long_factor");
    r.original_max_position_embeddings = original_max();
    // transformers: factor = max_position_embeddings / original when absent;
    // attention_factor = sqrt(1 + ln factor / ln original) when absent (1 if factor <= 1).
    const double orig = static_cast<double>(r.original_max_position_embeddings);
    const double f = p.is_null_or_absent("factor") ? static_cast<double>(max_pos) / orig
                                                   : p.get_double("factor");
    if (!p.is_null_or_absent("attention_factor")) {
      r.attention_factor = p.get_double("attention_factor");
    } else {
      r.attention_factor = f <= 1.0 ? 1.0 : std::sqrt(1 + std::log(f) / std::log(orig));
    }
    if (!(r.attention_factor > 0) || !std::isfinite(r.attention_factor)) {
      j.fail(sub("attention_factor"), "must be positive");
    }
  } else {
    std::string msg = "rope_type \"" + printable(r.type, 40) +
                      "\" is not supported (supported: default, linear, llama3, longrope)";
    std::string near = closest_match(r.type, {"default", "linear", "llama3", "longrope"});
    if (!near.empty()) msg += "; did you mean \"" + near + "\"?";
    j.fail(key, msg, ErrorKind::kUnsupported);
  }
  if (r.theta <= 0) j.fail("rope_theta", "must be positive");
  return r;
}

namespace {

// Hard caps on the sizes config.json gives, far above any released model of
// these families (Llama 3.1 405B: hidden 16384, intermediate 53248, 126
// layers, 128 heads; vocabularies up to 256k). They keep every product the
// loader forms (H*Dh, V*D, a layer's parameter count times the layers) well
// inside int64, and a hostile config.json from driving allocations.
struct SizeCap {
  const char* key;
  int64_t max;
};
constexpr SizeCap kSizeCaps[] = {
    {"vocab_size", int64_t{1} << 24},
    {"hidden_size", int64_t{1} << 18},
    {"intermediate_size", int64_t{1} << 20},
    {"num_hidden_layers", int64_t{1} << 12},
    {"num_attention_heads", int64_t{1} << 12},
    {"num_key_value_heads", int64_t{1} << 12},
    {"head_dim", int64_t{1} << 14},
    {"max_position_embeddings", int64_t{1} << 30},
};

// v must be positive and at most the key's cap (kSizeCaps).
void check_size(const ConfigJson& j, const char* key, int64_t v) {
  if (v <= 0) j.fail(key, "must be positive, got " + std::to_string(v));
  for (const SizeCap& cap : kSizeCaps) {
    if (std::string(cap.key) == key && v > cap.max) {
      j.fail(key, std::to_string(v) + " is larger than any model loratune supports (at most " +
                      std::to_string(cap.max) + ")");
    }
  }
}

// config.json's "quantization_config": absent/null, or a bitsandbytes 4-bit
// NF4 checkpoint (transformers' BitsAndBytesConfig.to_dict()). Every other
// quantization is refused by name (kUnsupported).
std::optional<BnbNf4Config> parse_quantization(const ConfigJson& j) {
  const json* q = j.find("quantization_config");
  if (q == nullptr || q->is_null()) return std::nullopt;
  const std::string key = "quantization_config";
  if (!q->is_object()) j.fail(key, "must be an object, got " + printable(q->dump(), 80));
  auto str = [&](const char* k, const std::string& dflt) {
    auto it = q->find(k);
    if (it == q->end() || it->is_null()) return dflt;
    if (!it->is_string())
      j.fail(key + "." + k, "must be a string, got " + printable(it->dump(), 80));
    return it->get<std::string>();
  };
  auto flag = [&](const char* k, const char* alt) {
    for (const char* name : {k, alt}) {
      auto it = q->find(name);
      if (it == q->end() || it->is_null()) continue;
      if (!it->is_boolean()) {
        j.fail(key + "." + name, "must be true or false, got " + printable(it->dump(), 80));
      }
      return it->get<bool>();
    }
    return false;
  };
  const std::string method = str("quant_method", "");
  if (method != "bitsandbytes") {
    j.fail(key + ".quant_method",
           "\"" + printable(method, 40) +
               "\" is not supported (loratune reads bitsandbytes 4-bit NF4 checkpoints)",
           ErrorKind::kUnsupported);
  }
  if (flag("load_in_8bit", "_load_in_8bit")) {
    j.fail(key + ".load_in_8bit",
           "bitsandbytes 8-bit (LLM.int8) checkpoints are not supported (only 4-bit NF4)",
           ErrorKind::kUnsupported);
  }
  if (!flag("load_in_4bit", "_load_in_4bit")) {
    j.fail(key + ".load_in_4bit", "is not true: not a bitsandbytes 4-bit checkpoint",
           ErrorKind::kUnsupported);
  }
  // BitsAndBytesConfig's default quant type is fp4.
  const std::string type = str("bnb_4bit_quant_type", "fp4");
  if (type != "nf4") {
    j.fail(key + ".bnb_4bit_quant_type",
           "\"" + printable(type, 40) + "\" is not supported (only \"nf4\")",
           ErrorKind::kUnsupported);
  }
  const std::string storage = str("bnb_4bit_quant_storage", "uint8");
  if (storage != "uint8") {
    j.fail(key + ".bnb_4bit_quant_storage",
           "\"" + printable(storage, 40) + "\" is not supported (only \"uint8\")",
           ErrorKind::kUnsupported);
  }
  BnbNf4Config b;
  b.double_quant = flag("bnb_4bit_use_double_quant", "bnb_4bit_use_double_quant");
  b.compute_dtype = str("bnb_4bit_compute_dtype", "");
  if (auto it = q->find("llm_int8_skip_modules"); it != q->end() && !it->is_null()) {
    if (!it->is_array() || it->size() > 4096) {
      j.fail(key + ".llm_int8_skip_modules", "must be a list of module names");
    }
    for (const auto& m : *it) {
      if (!m.is_string()) j.fail(key + ".llm_int8_skip_modules", "must be a list of module names");
      b.skip_modules.push_back(m.get<std::string>());
    }
  }
  return b;
}

}  // namespace

namespace {

// The multimodal Gemma 3 (model_type "gemma3"): its language model is
// "text_config" read as a gemma3_text config.json (absent keys take
// Gemma3TextConfig's defaults, as transformers' AutoConfig gives
// config.text_config), except for what transformers takes from the top
// level: tie_word_embeddings (Gemma3Config's, default true; the text
// config's own value is not consulted), eos/bos_token_id when given there
// (GenerationConfig.from_model_config reads them from the top level), and
// the dtype when text_config has none.
ModelConfig parse_gemma3_multimodal(const json& root, const std::string& source) {
  auto tc = root.find("text_config");
  if (tc == root.end() || !tc->is_object()) {
    throw Error(
        source + ": key \"text_config\": model_type \"gemma3\" (Gemma3ForConditionalGeneration) " +
            "needs its language model's config as an object, got " +
            (tc == root.end() ? std::string("nothing") : printable(tc->dump(), 80)),
        ErrorKind::kCorrupt);
  }
  json text = *tc;
  auto inner = text.find("model_type");
  if (inner != text.end() && !inner->is_null() && *inner != "gemma3_text") {
    throw Error(source + ": key \"text_config.model_type\": " + printable(inner->dump(), 40) +
                    " is not supported inside a \"gemma3\" config (expected \"gemma3_text\")",
                ErrorKind::kUnsupported);
  }
  text["model_type"] = "gemma3_text";
  for (const json* q : {&root, static_cast<const json*>(&text)}) {
    auto it = q->find("quantization_config");
    if (it != q->end() && !it->is_null()) {
      throw Error(source +
                      ": key \"quantization_config\": pre-quantized multimodal Gemma 3 "
                      "checkpoints are not supported (use the full-precision checkpoint; "
                      "model.quantize: nf4 quantizes its language model at load)",
                  ErrorKind::kUnsupported);
    }
  }
  auto top_tie = root.find("tie_word_embeddings");
  text["tie_word_embeddings"] = top_tie == root.end() || top_tie->is_null() ? json(true) : *top_tie;
  for (const char* k : {"eos_token_id", "bos_token_id"}) {
    auto it = root.find(k);
    if (it != root.end() && !it->is_null()) text[k] = *it;
  }
  if (!text.contains("dtype") && !text.contains("torch_dtype")) {
    for (const char* k : {"dtype", "torch_dtype"}) {
      if (root.contains(k)) text[k] = root[k];
    }
  }
  ModelConfig c = parse_config(text, source + ": text_config");
  c.multimodal = true;
  c.checkpoint_prefix = "language_model.model.";
  return c;
}

}  // namespace

ModelConfig parse_config(const json& root, const std::string& source) {
  if (!root.is_object())
    throw Error(source + ": config must be a JSON object", ErrorKind::kCorrupt);
  auto mt = root.find("model_type");
  if (mt == root.end() || !mt->is_string()) {
    throw Error(source + ": key \"model_type\" is required (a string)", ErrorKind::kCorrupt);
  }
  if (*mt == "gemma3") return parse_gemma3_multimodal(root, source);
  const FamilySpec& family = find_family(mt->get<std::string>(), source);
  ConfigJson j(root, family.defaults, source);

  ModelConfig c;
  c.model_type = family.model_type;
  c.vocab_size = j.get_int("vocab_size");
  c.hidden_size = j.get_int("hidden_size");
  c.intermediate_size = j.get_int("intermediate_size");
  c.num_hidden_layers = j.get_int("num_hidden_layers");
  c.num_attention_heads = j.get_int("num_attention_heads");
  for (const char* k : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads"}) {
    check_size(j, k, j.get_int(k));
  }
  c.num_key_value_heads = j.is_null_or_absent("num_key_value_heads")
                              ? c.num_attention_heads
                              : j.get_int("num_key_value_heads");
  check_size(j, "num_key_value_heads", c.num_key_value_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    j.fail("num_key_value_heads", std::to_string(c.num_key_value_heads) +
                                      " does not divide num_attention_heads " +
                                      std::to_string(c.num_attention_heads));
  }
  if (j.is_null_or_absent("head_dim")) {
    if (c.hidden_size % c.num_attention_heads != 0) {
      j.fail("head_dim", "absent, and hidden_size " + std::to_string(c.hidden_size) +
                             " is not a multiple of num_attention_heads");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  } else {
    c.head_dim = j.get_int("head_dim");
  }
  check_size(j, "head_dim", c.head_dim);
  if (c.head_dim % 2 != 0) j.fail("head_dim", "must be even for RoPE");
  c.max_position_embeddings = j.get_int("max_position_embeddings");
  check_size(j, "max_position_embeddings", c.max_position_embeddings);
  c.rms_norm_eps = j.get_double("rms_norm_eps");
  c.tie_word_embeddings = j.get_bool("tie_word_embeddings");

  const std::string act_key = family.activation_key;
  c.hidden_act = j.get_string(act_key);
  if (c.hidden_act == "swish") c.hidden_act = "silu";  // the same function in transformers
  if (c.hidden_act != "silu" && c.hidden_act != "gelu_pytorch_tanh") {
    std::string msg = "\"" + printable(c.hidden_act, 40) +
                      "\" is not supported (supported: silu, gelu_pytorch_tanh)";
    const std::string near = closest_match(c.hidden_act, {"silu", "gelu_pytorch_tanh"});
    if (!near.empty()) msg += "; did you mean \"" + near + "\"?";
    j.fail(act_key, msg, ErrorKind::kUnsupported);
  }
  c.rope =
      parse_rope(j, c.max_position_embeddings, family.rope_per_layer_type ? "full_attention" : "");
  if (c.rope.partial_rotary_factor != 1.0 && !family.partial_rotary) {
    j.fail("partial_rotary_factor",
           "only 1.0 is supported for model_type \"" + c.model_type + "\", got " +
               std::to_string(c.rope.partial_rotary_factor),
           ErrorKind::kUnsupported);
  }
  const int64_t rot = c.rotary_dim();
  if (rot <= 0 || rot % 2 != 0) {
    j.fail("partial_rotary_factor", "head_dim " + std::to_string(c.head_dim) + " x " +
                                        std::to_string(c.rope.partial_rotary_factor) +
                                        " must give a positive even number of rotated dims");
  }
  if (c.rope.type == "longrope") {
    for (const auto* f : {&c.rope.short_factor, &c.rope.long_factor}) {
      if (static_cast<int64_t>(f->size()) != rot / 2) {
        j.fail(std::string(f == &c.rope.short_factor ? "short_factor" : "long_factor"),
               "has " + std::to_string(f->size()) +
                   " entries; rotated head dims / 2 = " + std::to_string(rot / 2));
      }
    }
  }

  for (const char* k : {"dtype", "torch_dtype"}) {
    if (!j.is_null_or_absent(k)) {
      c.dtype = j.get_string(k);
      break;
    }
  }
  c.bos_token_id = j.get_optional_int("bos_token_id");
  if (const json* eos = j.find("eos_token_id"); eos != nullptr && !eos->is_null()) {
    if (eos->is_array()) {
      for (const auto& e : *eos) {
        if (!e.is_number_integer()) j.fail("eos_token_id", "must be an integer or a list of them");
        c.eos_token_ids.push_back(e.get<int64_t>());
      }
    } else {
      c.eos_token_ids.push_back(j.get_int("eos_token_id"));
    }
  }

  c.bnb_nf4 = parse_quantization(j);

  family.resolve(j, c);
  if (static_cast<int64_t>(c.layer_window.size()) != c.num_hidden_layers) {
    throw Error(source + ": family " + c.model_type + " resolved " +
                    std::to_string(c.layer_window.size()) + " layer windows for " +
                    std::to_string(c.num_hidden_layers) + " layers",
                ErrorKind::kInternal);
  }
  if (c.layer_sliding.empty()) {
    for (int64_t w : c.layer_window) c.layer_sliding.push_back(w > 0);
  }
  return c;
}

std::string config_json_path(const std::string& path) {
  std::filesystem::path p(path);
  if (std::filesystem::is_directory(p)) p /= "config.json";
  return p.string();
}

ModelConfig load_config(const std::string& path) {
  const std::filesystem::path p = config_json_path(path);
  if (!std::filesystem::exists(p)) {
    throw Error(p.string() + ": no such file (a model's config.json)", ErrorKind::kIo);
  }
  return parse_config(io::read_json(p.string()), p.string());
}

}  // namespace loratune::model
