// trainer/model/family.cpp — the table of families and ConfigJson.
#include "trainer/model/family.h"

#include <algorithm>
#include <cmath>

#include "trainer/io/error.h"

namespace loratune::model {

const std::vector<FamilySpec>& all_families() {
  static const std::vector<FamilySpec> table = [] {
    std::vector<FamilySpec> t = {llama_family(), mistral_family(), qwen2_family(),
                                 qwen3_family(), gemma2_family(),  gemma3_text_family(),
                                 phi3_family()};
    std::sort(t.begin(), t.end(),
              [](const FamilySpec& a, const FamilySpec& b) { return a.model_type < b.model_type; });
    return t;
  }();
  return table;
}

std::vector<std::string> supported_model_types() {
  std::vector<std::string> names;
  for (const auto& f : all_families()) names.push_back(f.model_type);
  return names;
}

const FamilySpec& find_family(const std::string& model_type, const std::string& source) {
  for (const auto& f : all_families()) {
    if (f.model_type == model_type) return f;
  }
  std::vector<std::string> names = supported_model_types();
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  std::string msg =
      source + ": model_type \"" + model_type + "\" is not supported (supported: " + list + ")";
  std::string near = closest_match(model_type, names);
  if (!near.empty()) msg += "; did you mean \"" + near + "\"?";
  throw Error(msg, ErrorKind::kUnsupported);
}

namespace {

// "layer_types": one "full_attention" / "sliding_attention" per layer.
void read_layer_types(const ConfigJson& j, ModelConfig& c, const nlohmann::json& types,
                      int64_t window) {
  if (!types.is_array() || static_cast<int64_t>(types.size()) != c.num_hidden_layers) {
    j.fail("layer_types", "must be a list of num_hidden_layers (" +
                              std::to_string(c.num_hidden_layers) + ") strings");
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const auto& t = types[i];
    c.layer_sliding[i] = t == "sliding_attention";
    if (t == "sliding_attention") {
      c.layer_window[i] = window;
    } else if (t != "full_attention") {
      j.fail("layer_types",
             "entry " + std::to_string(i) + " is " + printable(t.dump(), 60) +
                 "; supported: \"full_attention\", \"sliding_attention\"",
             ErrorKind::kUnsupported);
    }
  }
}

}  // namespace

void resolve_layer_types(const ConfigJson& j, ModelConfig& c, int64_t window, int64_t pattern) {
  c.layer_window.assign(c.num_hidden_layers, 0);
  c.layer_sliding.assign(c.num_hidden_layers, false);
  const nlohmann::json* types = j.find("layer_types");
  if (types != nullptr && !types->is_null()) {
    read_layer_types(j, c, *types, window);
    return;
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    c.layer_sliding[i] = (i + 1) % pattern != 0;
    if (c.layer_sliding[i]) c.layer_window[i] = window;
  }
}

void resolve_qwen_windows(const ConfigJson& j, ModelConfig& c) {
  c.layer_window.assign(c.num_hidden_layers, 0);
  c.layer_sliding.assign(c.num_hidden_layers, false);
  const bool use = j.find("use_sliding_window") != nullptr && j.get_bool("use_sliding_window");
  if (!use || j.is_null_or_absent("sliding_window")) return;
  const int64_t window = j.get_int("sliding_window");
  if (window <= 0) j.fail("sliding_window", "must be positive, got " + std::to_string(window));
  const nlohmann::json* types = j.find("layer_types");
  if (types != nullptr && !types->is_null()) {
    read_layer_types(j, c, *types, window);
    return;
  }
  const int64_t first = j.get_int("max_window_layers");
  // transformers: layer i slides when i >= max_window_layers (a negative value: all).
  for (int64_t i = std::max<int64_t>(first, 0); i < c.num_hidden_layers; ++i) {
    c.layer_window[i] = window;
    c.layer_sliding[i] = true;
  }
}

// --- ConfigJson ----------------------------------------------------------------

const nlohmann::json* ConfigJson::find(const std::string& key) const {
  auto it = j_.find(key);
  if (it != j_.end()) return &*it;
  auto d = defaults_.find(key);
  if (d != defaults_.end()) return &*d;
  return nullptr;
}

bool ConfigJson::is_null_or_absent(const std::string& key) const {
  const nlohmann::json* v = find(key);
  return v == nullptr || v->is_null();
}

void ConfigJson::fail(const std::string& key, const std::string& what, ErrorKind kind) const {
  throw Error(source_ + ": key \"" + key + "\": " + what, kind);
}

int64_t ConfigJson::get_int(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr || v->is_null()) fail(key, "is required (an integer)");
  if (v->is_number_unsigned()) {
    if (v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail(key, "is out of range: " + v->dump());
    return v->get<int64_t>();
  }
  if (v->is_number_integer()) return v->get<int64_t>();
  // transformers writes some integers as floats (e.g. 8192.0). Converting a
  // double outside the int64 range is undefined, so check the range first.
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d >= -9.2e18 && d <= 9.2e18 && d == std::floor(d)) {
      return static_cast<int64_t>(d);
    }
  }
  fail(key, "must be an integer, got " + v->dump());
}

double ConfigJson::get_double(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr || v->is_null()) fail(key, "is required (a number)");
  if (!v->is_number()) fail(key, "must be a number, got " + v->dump());
  return v->get<double>();
}

bool ConfigJson::get_bool(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr || v->is_null()) fail(key, "is required (true or false)");
  if (!v->is_boolean()) fail(key, "must be true or false, got " + v->dump());
  return v->get<bool>();
}

std::string ConfigJson::get_string(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr || v->is_null()) fail(key, "is required (a string)");
  if (!v->is_string()) fail(key, "must be a string, got " + v->dump());
  return v->get<std::string>();
}

std::optional<int64_t> ConfigJson::get_optional_int(const std::string& key) const {
  if (is_null_or_absent(key)) return std::nullopt;
  return get_int(key);
}

}  // namespace loratune::model
