// trainer/lora/peft_io.cpp — PEFT adapter directories.
#include "trainer/lora/peft_io.h"

#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"

namespace loratune::lora {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";

// A key of adapter_config.json that must be absent, null, false or empty.
void refuse_if_set(const json& cfg, const std::string& file, const char* key, const char* what) {
  if (!cfg.contains(key)) return;
  const json& v = cfg[key];
  bool set = !(v.is_null() || (v.is_boolean() && !v.get<bool>()) ||
               ((v.is_array() || v.is_object() || v.is_string()) && v.empty()));
  if (set) {
    throw Error(file + ": " + key + " = " + printable(v.dump(), 80) + ": " + what +
                    " is not supported by loratune (plain LoRA on the decoder projections only)",
                ErrorKind::kUnsupported);
  }
}

[[noreturn]] void bad_value(const std::string& file, const char* key, const json& v,
                            const std::string& want) {
  throw Error(file + ": " + key + " must be " + want + ", got " + printable(v.dump(), 80),
              ErrorKind::kCorrupt);
}

// cfg[key] when present and not null, else nullptr.
const json* present(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  return it == cfg.end() || it->is_null() ? nullptr : &*it;
}

std::vector<std::string> string_list(const std::string& file, const char* key, const json& v) {
  if (!v.is_array()) bad_value(file, key, v, "a list of strings or a string");
  std::vector<std::string> out;
  for (const auto& e : v) {
    if (!e.is_string()) bad_value(file, key, v, "a list of strings or a string");
    out.push_back(e.get<std::string>());
  }
  return out;
}

// init_lora_weights: only how a fresh adapter starts, except for the
// variants that also rewrite the base weights (the adapter then fits only
// that rewritten base, which loratune does not have).
void check_init(const std::string& file, const json& cfg) {
  const json* v = present(cfg, "init_lora_weights");
  if (v == nullptr || v->is_boolean()) return;
  if (!v->is_string()) bad_value(file, "init_lora_weights", *v, "true, false or a method name");
  const std::string s = v->get<std::string>();
  if (s == "gaussian" || s == "eva" || s == "orthogonal") return;
  for (const char* base_changing : {"pissa", "olora", "loftq", "corda"}) {
    if (s.rfind(base_changing, 0) == 0) {
      throw Error(file + ": init_lora_weights = \"" + printable(s) + "\": " + base_changing +
                      " adapters expect a base model rewritten by PEFT, which loratune does not "
                      "support (convert the adapter with PEFT's path_initial_model_for_weight_"
                      "conversion first)",
                  ErrorKind::kUnsupported);
    }
  }
  throw Error(file + ": init_lora_weights = \"" + printable(s) + "\" is not supported " +
                  "(true, false, gaussian, eva, orthogonal)",
              ErrorKind::kUnsupported);
}

// target_modules, exclude_modules, layers_to_transform and layers_pattern,
// with PEFT's own consistency rules (LoraConfig.__post_init__).
void read_targets(const std::string& file, const json& cfg, LoraSpec& spec) {
  const json* tm = present(cfg, "target_modules");
  if (tm == nullptr) throw Error(file + ": target_modules is missing", ErrorKind::kCorrupt);
  spec.target_modules.clear();
  if (tm->is_string()) {
    std::string s = tm->get<std::string>();
    std::string lower = s;
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (lower == "all-linear") {
      spec.target_modules = {"all-linear"};
    } else {
      if (s.empty()) bad_value(file, "target_modules", *tm, "a non-empty list or pattern");
      spec.target_regex = s;
    }
  } else {
    spec.target_modules = string_list(file, "target_modules", *tm);
    if (spec.target_modules.empty()) {
      bad_value(file, "target_modules", *tm, "a non-empty list or pattern");
    }
  }
  if (const json* ex = present(cfg, "exclude_modules")) {
    if (ex->is_string()) {
      spec.exclude_regex = ex->get<std::string>();
    } else {
      spec.exclude_modules = string_list(file, "exclude_modules", *ex);
    }
  }
  if (const json* lt = present(cfg, "layers_to_transform")) {
    if (lt->is_number_integer()) {
      spec.layers_to_transform = {lt->get<int64_t>()};
    } else if (lt->is_array()) {
      for (const auto& e : *lt) {
        if (!e.is_number_integer()) bad_value(file, "layers_to_transform", *lt, "integers");
        spec.layers_to_transform.push_back(e.get<int64_t>());
      }
    } else {
      bad_value(file, "layers_to_transform", *lt, "an integer or a list of integers");
    }
    if (!spec.target_regex.empty() && !spec.layers_to_transform.empty()) {
      throw Error(file + ": layers_to_transform cannot be used with a regex target_modules " +
                      "(PEFT refuses this config too)",
                  ErrorKind::kCorrupt);
    }
  }
  if (const json* lp = present(cfg, "layers_pattern")) {
    spec.layers_pattern = lp->is_string() ? std::vector<std::string>{lp->get<std::string>()}
                                          : string_list(file, "layers_pattern", *lp);
    if (!spec.layers_pattern.empty() && spec.layers_to_transform.empty()) {
      throw Error(file + ": layers_pattern is set but layers_to_transform is not " +
                      "(PEFT refuses this config too)",
                  ErrorKind::kCorrupt);
    }
  }
}

// transformers 4.50 and 4.51 built a multimodal Gemma 3 as
// language_model.{model,lm_head}; 4.52 moved them to model.language_model and
// lm_head, and PEFT names an adapter's modules after the tree it was trained
// on. The older names, as PEFT path <-> current PEFT path:
constexpr const char* kOldTower = "language_model.model.";
constexpr const char* kNewTower = "model.language_model.";
constexpr const char* kOldHead = "language_model.lm_head";
constexpr const char* kKeyPrefix = "base_model.model.";  // PEFT's, before the module path

bool has_prefix(const std::string& s, const std::string& p) {
  return s.rfind(p, 0) == 0;
}

std::string to_old_path(const std::string& path) {
  if (has_prefix(path, kNewTower)) return kOldTower + path.substr(std::string(kNewTower).size());
  if (path == "lm_head") return kOldHead;
  return path;
}

std::string from_old_path(const std::string& path) {
  if (has_prefix(path, kOldTower)) return kNewTower + path.substr(std::string(kOldTower).size());
  if (path == kOldHead) return "lm_head";
  return path;
}

// True when `linears` are a multimodal Gemma 3's and `file` was saved under
// the 4.50/4.51 names (then its tensors are renamed to the current ones).
bool read_old_multimodal_names(io::SafetensorsFile& file,
                               const std::vector<model::LinearShape>& linears) {
  const bool multimodal = std::any_of(linears.begin(), linears.end(),
                                      [](const auto& l) { return has_prefix(l.path, kNewTower); });
  if (!multimodal) return false;
  const std::string old_prefix = std::string(kKeyPrefix) + "language_model.";
  const bool old =
      std::any_of(file.tensors().begin(), file.tensors().end(),
                  [&](const io::TensorInfo& t) { return has_prefix(t.name, old_prefix); });
  if (!old) return false;
  file.rename([](const std::string& name) {
    if (!has_prefix(name, kKeyPrefix)) return name;
    // The module path ends before ".lora_A.weight", ".lora_magnitude_vector", ...
    const std::string rest = name.substr(std::string(kKeyPrefix).size());
    const size_t lora = rest.find(".lora_");
    if (lora == std::string::npos) return name;
    return kKeyPrefix + from_old_path(rest.substr(0, lora)) + rest.substr(lora);
  });
  return true;
}

// check_adapter_tensors; for a file read_old_multimodal_names renamed, the
// error says why the tensor names it shows are not the file's.
void check_tensors(const io::SafetensorsFile& file, const std::vector<AdaptedModule>& modules,
                   const std::vector<model::LinearShape>& linears, const std::string& config,
                   bool renamed) {
  try {
    check_adapter_tensors(file, modules, linears, config);
  } catch (const Error& e) {
    if (!renamed) throw;
    throw Error(std::string(e.what()) +
                    " (this adapter uses transformers 4.50/4.51 names: its "
                    "language_model.model.* tensors are named model.language_model.* here)",
                e.kind());
  }
}

std::shared_ptr<io::SafetensorsFile> open_weights(const std::string& dir) {
  const std::string path = (fs::path(dir) / kWeightsFile).string();
  if (!fs::exists(path)) {
    if (fs::exists(fs::path(dir) / "adapter_model.bin")) {
      throw Error(path +
                      ": not found; adapter_model.bin (pickle) is not read by loratune: "
                      "save the adapter with safe_serialization=True",
                  ErrorKind::kUnsupported);
    }
    throw Error(path + ": not found", ErrorKind::kIo);
  }
  return io::SafetensorsFile::open(path);
}

// The LoRA layers `model` already has, as AdaptedModule entries.
std::vector<AdaptedModule> attached_modules(model::CausalLMImpl& model) {
  std::vector<AdaptedModule> out;
  for (auto& [path, linear] : model::linear_modules(model)) {
    auto lora = std::dynamic_pointer_cast<LoraLinearImpl>(linear->adapter());
    if (!lora) continue;
    out.push_back({model::peft_module_path(model.config(), path), linear->in_features(),
                   linear->out_features(), lora->r(), 0.0, lora->scale(), lora->dora()});
  }
  return out;
}

// Copies every adapter factor of `model` from `file` (already checked).
void copy_weights(const io::SafetensorsFile& file, model::CausalLMImpl& model) {
  at::NoGradGuard no_grad;
  for (auto& [name, param] : adapter_tensors(model)) param.copy_(file.tensor(name));
}

// `text` with the characters a regular expression gives a meaning escaped.
std::string regex_escape(const std::string& text) {
  std::string out;
  for (char ch : text) {
    if (std::string(".^$|()[]{}*+?\\").find(ch) != std::string::npos) out += '\\';
    out += ch;
  }
  return out;
}

// For a multimodal Gemma 3, `spec` as adapter_config.json must say it: PEFT
// applies target_modules to the whole Gemma3ForConditionalGeneration, whose
// SigLIP vision tower has q_proj, k_proj, v_proj, ... too (and all-linear
// takes every linear layer of it), so the targets are written as a regex
// matching exactly the language-model projections `model` has adapters on:
// "model\.language_model\.layers\.[0-9]+\.(?:self_attn\.q_proj|...)" (the
// layers listed when not all are adapted). layers_to_transform,
// layers_pattern and exclude_modules are folded into it and dropped (PEFT
// refuses layers_to_transform beside a regex). Throws Error (kInternal) if
// the regex would select other modules than the adapted ones.
LoraSpec multimodal_saved_targets(const LoraSpec& spec, model::CausalLMImpl& model) {
  const std::string layers = "model.language_model.layers.";
  std::vector<std::string> adapted, others;
  std::map<std::string, std::set<int64_t>> layers_of;  // module path within a layer -> layers
  std::vector<std::string> rest_order;
  for (const AdaptedModule& m : attached_modules(model)) {
    adapted.push_back(m.path);
    const size_t dot = m.path.find('.', layers.size());
    if (m.path.rfind(layers, 0) != 0 || dot == std::string::npos) {
      others.push_back(regex_escape(m.path));
      continue;
    }
    const std::string rest = m.path.substr(dot + 1);
    if (!layers_of.count(rest)) rest_order.push_back(rest);
    layers_of[rest].insert(std::stoll(m.path.substr(layers.size(), dot - layers.size())));
  }
  // Module paths adapted on the same layers share one alternative.
  std::vector<std::pair<std::set<int64_t>, std::vector<std::string>>> groups;
  for (const auto& rest : rest_order) {
    auto g = std::find_if(groups.begin(), groups.end(),
                          [&](const auto& e) { return e.first == layers_of[rest]; });
    if (g == groups.end()) {
      groups.push_back({layers_of[rest], {}});
      g = groups.end() - 1;
    }
    g->second.push_back(regex_escape(rest));
  }
  std::vector<std::string> parts;
  const int64_t n = model.config().num_hidden_layers;
  for (const auto& [idx, rests] : groups) {
    std::string which;
    if (static_cast<int64_t>(idx.size()) == n) {
      which = "[0-9]+";
    } else {
      for (int64_t i : idx) which += (which.empty() ? "" : "|") + std::to_string(i);
      which = "(?:" + which + ")";
    }
    std::string alt;
    for (const auto& r : rests) alt += (alt.empty() ? "" : "|") + r;
    parts.push_back(regex_escape(layers) + which + "\\.(?:" + alt + ")");
  }
  parts.insert(parts.end(), others.begin(), others.end());
  std::string regex;
  for (const auto& p : parts) regex += (regex.empty() ? "" : "|") + p;
  if (parts.size() > 1) regex = "(?:" + regex + ")";

  LoraSpec out = spec;
  out.target_modules.clear();
  out.target_regex = regex;
  out.exclude_modules.clear();
  out.exclude_regex.clear();
  out.layers_to_transform.clear();
  out.layers_pattern.clear();
  std::vector<std::string> selected;
  for (const auto& l : linear_shapes_of(model)) {
    if (is_targeted(out, l.path)) selected.push_back(l.path);
  }
  if (selected != adapted) {
    throw Error("save_adapter: the target_modules regex '" + regex +
                    "' written for the multimodal model selects " +
                    std::to_string(selected.size()) + " projections, not the " +
                    std::to_string(adapted.size()) + " adapted ones",
                ErrorKind::kInternal);
  }
  return out;
}

}  // namespace

LoraSpec read_adapter_config(const std::string& dir) {
  const std::string file = (fs::path(dir) / kConfigFile).string();
  if (!fs::exists(file)) {
    throw Error(file + ": not found (a PEFT adapter directory has adapter_config.json)",
                ErrorKind::kIo);
  }
  json cfg = io::read_json(file);
  if (!cfg.is_object()) throw Error(file + ": expected a JSON object", ErrorKind::kCorrupt);
  const json* type = present(cfg, "peft_type");
  if (type == nullptr || !type->is_string()) {
    throw Error(file + ": peft_type is missing or not a string (a LoRA adapter says \"LORA\")",
                ErrorKind::kCorrupt);
  }
  if (type->get<std::string>() != "LORA") {
    throw Error(file + ": peft_type '" + printable(type->get<std::string>()) +
                    "' is not supported (only LORA)",
                ErrorKind::kUnsupported);
  }
  refuse_if_set(cfg, file, "modules_to_save", "modules_to_save (fully trained extra modules)");
  refuse_if_set(cfg, file, "fan_in_fan_out", "fan_in_fan_out (Conv1D layers)");
  refuse_if_set(cfg, file, "target_parameters", "target_parameters");
  refuse_if_set(cfg, file, "lora_bias", "lora_bias");
  refuse_if_set(cfg, file, "trainable_token_indices", "trainable_token_indices");
  refuse_if_set(cfg, file, "layer_replication", "layer_replication");
  refuse_if_set(cfg, file, "alora_invocation_tokens", "aLoRA (alora_invocation_tokens)");
  refuse_if_set(cfg, file, "use_qalora", "QALoRA");
  if (const json* bias = present(cfg, "bias")) {
    if (!bias->is_string()) bad_value(file, "bias", *bias, "\"none\", \"all\" or \"lora_only\"");
    if (bias->get<std::string>() != "none") {
      throw Error(file + ": bias = \"" + printable(bias->get<std::string>()) +
                      "\": bias training is not supported (only \"none\")",
                  ErrorKind::kUnsupported);
    }
  }
  check_init(file, cfg);

  LoraSpec spec;
  if (const json* r = present(cfg, "r")) {
    if (!r->is_number_integer() || r->get<int64_t>() < 1) {
      bad_value(file, "r", *r, "an integer >= 1");
    }
    spec.r = r->get<int64_t>();
  }
  if (const json* a = present(cfg, "lora_alpha")) {
    if (!a->is_number() || !std::isfinite(a->get<double>()))
      bad_value(file, "lora_alpha", *a, "a number");
    spec.alpha = a->get<double>();
  }
  if (const json* d = present(cfg, "lora_dropout")) {
    if (!d->is_number() || !(d->get<double>() >= 0.0 && d->get<double>() < 1.0)) {
      bad_value(file, "lora_dropout", *d, "a number in [0, 1)");
    }
    spec.dropout = d->get<double>();
  } else {
    spec.dropout = 0.0;
  }
  if (const json* dora = present(cfg, "use_dora")) {
    if (!dora->is_boolean()) bad_value(file, "use_dora", *dora, "true or false");
    spec.use_dora = dora->get<bool>();
  }
  if (const json* rs = present(cfg, "use_rslora")) {
    if (!rs->is_boolean()) bad_value(file, "use_rslora", *rs, "true or false");
    spec.use_rslora = rs->get<bool>();
  }
  if (const json* b = present(cfg, "base_model_name_or_path"); b != nullptr && b->is_string()) {
    spec.base_model_name_or_path = b->get<std::string>();
  }
  read_targets(file, cfg, spec);
  if (!spec.target_regex.empty()) check_regex(spec.target_regex, file + ": target_modules");
  if (!spec.exclude_regex.empty()) check_regex(spec.exclude_regex, file + ": exclude_modules");
  for (const auto& p : spec.layers_pattern) check_regex(p, file + ": layers_pattern");
  // The patterns in the file's key order: the first matching key wins.
  nlohmann::ordered_json ordered;
  if (present(cfg, "rank_pattern") != nullptr || present(cfg, "alpha_pattern") != nullptr) {
    ordered = io::parse_ordered_json(io::read_file(file), file);
  }
  if (const json* rp = present(cfg, "rank_pattern")) {
    if (!rp->is_object()) bad_value(file, "rank_pattern", *rp, "an object of integers >= 1");
    for (const auto& [k, v] : ordered["rank_pattern"].items()) {
      if (!v.is_number_integer() || v.get<int64_t>() < 1) {
        bad_value(file, "rank_pattern", *rp, "an object of integers >= 1");
      }
      check_regex(k, file + ": rank_pattern key");
      spec.rank_pattern.emplace_back(k, v.get<int64_t>());
    }
  }
  if (const json* ap = present(cfg, "alpha_pattern")) {
    if (!ap->is_object()) bad_value(file, "alpha_pattern", *ap, "an object of numbers");
    for (const auto& [k, v] : ordered["alpha_pattern"].items()) {
      if (!v.is_number() || !std::isfinite(v.get<double>())) {
        bad_value(file, "alpha_pattern", *ap, "an object of numbers");
      }
      check_regex(k, file + ": alpha_pattern key");
      spec.alpha_pattern.emplace_back(k, v.get<double>());
    }
  }
  return spec;
}

CheckedAdapter open_adapter(const std::string& dir,
                            const std::vector<model::LinearShape>& linears) {
  const std::string config = (fs::path(dir) / kConfigFile).string();
  CheckedAdapter a;
  a.spec = read_adapter_config(dir);
  a.file = open_weights(dir);
  const bool old = read_old_multimodal_names(*a.file, linears);
  // An old file's target_modules, rank_pattern and alpha_pattern name the
  // old paths too.
  std::vector<model::LinearShape> planned = linears;
  if (old) {
    for (auto& l : planned) l.path = to_old_path(l.path);
  }
  a.modules = plan_lora(a.spec, planned, config + ": target_modules", ErrorKind::kCorrupt,
                        /*every_name_must_match=*/false);
  if (old) {
    for (auto& m : a.modules) m.path = from_old_path(m.path);
  }
  check_tensors(*a.file, a.modules, linears, config, old);
  return a;
}

std::string adapter_config_json(const LoraSpec& spec) {
  using ojson = nlohmann::ordered_json;  // insertion order: the patterns' order matters
  auto patterns = [](const auto& list) {
    ojson o = ojson::object();
    for (const auto& [k, v] : list) o[k] = v;
    return o;
  };
  ojson j = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path",
       spec.base_model_name_or_path.empty() ? ojson(nullptr) : ojson(spec.base_model_name_or_path)},
      {"r", spec.r},
      {"lora_alpha", spec.alpha},
      {"lora_dropout", spec.dropout},
      {"target_modules", !spec.target_regex.empty() ? ojson(spec.target_regex)
                         : spec.target_modules.size() == 1 && spec.target_modules[0] == "all-linear"
                             ? ojson("all-linear")
                             : ojson(spec.target_modules)},
      {"exclude_modules", !spec.exclude_regex.empty()    ? ojson(spec.exclude_regex)
                          : spec.exclude_modules.empty() ? ojson(nullptr)
                                                         : ojson(spec.exclude_modules)},
      {"use_rslora", spec.use_rslora},
      {"use_dora", spec.use_dora},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"init_lora_weights",
       spec.init == LoraInit::kDefault ? ojson(true) : ojson(init_name(spec.init))},
      {"inference_mode", true},
      {"modules_to_save", nullptr},
      {"layers_to_transform",
       spec.layers_to_transform.empty() ? ojson(nullptr) : ojson(spec.layers_to_transform)},
      {"layers_pattern", spec.layers_pattern.empty() ? ojson(nullptr) : ojson(spec.layers_pattern)},
      {"rank_pattern", patterns(spec.rank_pattern)},
      {"alpha_pattern", patterns(spec.alpha_pattern)},
      {"revision", nullptr},
  };
  return j.dump(2) + "\n";
}

void save_adapter(const std::string& dir, model::CausalLMImpl& model, const LoraSpec& spec,
                  bool overwrite) {
  auto tensors = saved_adapter_tensors(model);
  if (tensors.empty()) {
    throw Error("save_adapter " + dir + ": the model has no LoRA adapters", ErrorKind::kInternal);
  }
  io::AtomicDir out(dir, overwrite);
  io::save_file(tensors, (fs::path(out.path()) / kWeightsFile).string());
  LoraSpec written = saved_spec(spec);
  if (model.config().multimodal) written = multimodal_saved_targets(written, model);
  io::write_file_atomic((fs::path(out.path()) / kConfigFile).string(),
                        adapter_config_json(written));
  out.commit();
}

LoraSpec load_adapter(const std::string& dir, model::CausalLMImpl& model) {
  CheckedAdapter a = open_adapter(dir, linear_shapes_of(model));
  attach_lora(model, a.modules, a.spec);
  copy_weights(*a.file, model);
  return a.spec;
}

void load_adapter_weights(const std::string& dir, model::CausalLMImpl& model) {
  const std::vector<AdaptedModule> modules = attached_modules(model);
  if (modules.empty())
    throw Error("load_adapter_weights " + dir + ": the model has no LoRA adapters");
  auto file = open_weights(dir);
  const std::vector<model::LinearShape> linears = linear_shapes_of(model);
  const bool old = read_old_multimodal_names(*file, linears);
  check_tensors(*file, modules, linears, (fs::path(dir) / kConfigFile).string(), old);
  copy_weights(*file, model);
}

}  // namespace loratune::lora
