// trainer/lora/peft_io.cpp — PEFT adapter directories.
#include "trainer/lora/peft_io.h"

#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include <filesystem>
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
    throw Error(file + ": " + key + " = " + v.dump() + ": " + what +
                " is not supported by loratune (plain LoRA on the decoder projections only)");
  }
}

template <typename T>
T get_or(const json& cfg, const std::string& file, const char* key, T fallback) {
  if (!cfg.contains(key) || cfg[key].is_null()) return fallback;
  try {
    return cfg[key].get<T>();
  } catch (const json::exception&) {
    throw Error(file + ": " + key + " has the wrong type: " + cfg[key].dump());
  }
}

// Copies each adapter tensor in `file` into `model`'s matching parameter.
void copy_weights(const std::string& dir, model::CausalLMImpl& model) {
  const std::string path = (fs::path(dir) / kWeightsFile).string();
  if (!fs::exists(path)) {
    if (fs::exists(fs::path(dir) / "adapter_model.bin")) {
      throw Error(path +
                  ": not found; adapter_model.bin (pickle) is not read by loratune: "
                  "save the adapter with safe_serialization=True");
    }
    throw Error(path + ": not found");
  }
  auto file = io::SafetensorsFile::open(path);
  auto params = adapter_tensors(model);
  std::set<std::string> expected;
  std::vector<std::string> missing, misshapen;
  at::NoGradGuard no_grad;
  for (auto& [name, param] : params) {
    expected.insert(name);
    // PEFT files written with an adapter name keep it: "...lora_A.default.weight".
    const io::TensorInfo* info = file->find(name);
    if (info == nullptr) {
      missing.push_back(name);
      continue;
    }
    at::Tensor src = file->tensor(name);
    if (src.sizes() != param.sizes()) {
      misshapen.push_back(name + " file " + c10::str(src.sizes()) + " vs model " +
                          c10::str(param.sizes()));
      continue;
    }
    param.copy_(src);
  }
  std::vector<std::string> unexpected;
  for (const auto& info : file->tensors()) {
    if (!expected.count(info.name)) unexpected.push_back(info.name);
  }
  if (missing.empty() && unexpected.empty() && misshapen.empty()) return;
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 3; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 3) s += ", ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  std::string msg = path + ": adapter does not fit the model:";
  if (!missing.empty()) msg += " missing " + list(missing) + ";";
  if (!unexpected.empty()) msg += " unexpected " + list(unexpected) + ";";
  if (!misshapen.empty()) msg += " wrong shape " + list(misshapen) + ";";
  msg.pop_back();
  throw Error(msg);
}

}  // namespace

LoraSpec read_adapter_config(const std::string& dir) {
  const std::string file = (fs::path(dir) / kConfigFile).string();
  json cfg = io::read_json(file);
  if (!cfg.is_object()) throw Error(file + ": expected a JSON object");
  std::string type = get_or<std::string>(cfg, file, "peft_type", "");
  if (type != "LORA") {
    throw Error(file + ": peft_type '" + type + "' is not supported (only LORA)");
  }
  refuse_if_set(cfg, file, "use_dora", "DoRA");
  refuse_if_set(cfg, file, "modules_to_save", "modules_to_save (fully trained extra modules)");
  refuse_if_set(cfg, file, "fan_in_fan_out", "fan_in_fan_out (Conv1D layers)");
  refuse_if_set(cfg, file, "layers_to_transform", "layers_to_transform");
  refuse_if_set(cfg, file, "target_parameters", "target_parameters");
  refuse_if_set(cfg, file, "lora_bias", "lora_bias");
  refuse_if_set(cfg, file, "trainable_token_indices", "trainable_token_indices");
  refuse_if_set(cfg, file, "layer_replication", "layer_replication");
  std::string bias = get_or<std::string>(cfg, file, "bias", "none");
  if (bias != "none") {
    throw Error(file + ": bias = \"" + bias + "\": bias training is not supported (only \"none\")");
  }
  LoraSpec spec;
  spec.r = get_or<int64_t>(cfg, file, "r", spec.r);
  spec.alpha = get_or<double>(cfg, file, "lora_alpha", spec.alpha);
  spec.dropout = get_or<double>(cfg, file, "lora_dropout", 0.0);
  spec.use_rslora = get_or<bool>(cfg, file, "use_rslora", false);
  spec.base_model_name_or_path = get_or<std::string>(cfg, file, "base_model_name_or_path", "");
  if (!cfg.contains("target_modules") || cfg["target_modules"].is_null()) {
    throw Error(file + ": target_modules is missing");
  }
  const json& tm = cfg["target_modules"];
  if (tm.is_string()) {
    std::string s = tm.get<std::string>();
    if (s != "all-linear") {
      throw Error(file + ": target_modules is the regex '" + s +
                  "': give a list of module names (regex targets are not supported)");
    }
    spec.target_modules = {s};
  } else {
    spec.target_modules = get_or<std::vector<std::string>>(cfg, file, "target_modules", {});
  }
  spec.rank_pattern = get_or<std::map<std::string, int64_t>>(cfg, file, "rank_pattern", {});
  spec.alpha_pattern = get_or<std::map<std::string, double>>(cfg, file, "alpha_pattern", {});
  if (spec.r < 1) throw Error(file + ": r must be >= 1, got " + std::to_string(spec.r));
  return spec;
}

std::string adapter_config_json(const LoraSpec& spec) {
  json j = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path",
       spec.base_model_name_or_path.empty() ? json(nullptr) : json(spec.base_model_name_or_path)},
      {"r", spec.r},
      {"lora_alpha", spec.alpha},
      {"lora_dropout", spec.dropout},
      {"target_modules", spec.target_modules.size() == 1 && spec.target_modules[0] == "all-linear"
                             ? json("all-linear")
                             : json(spec.target_modules)},
      {"use_rslora", spec.use_rslora},
      {"use_dora", false},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"init_lora_weights", true},
      {"inference_mode", true},
      {"modules_to_save", nullptr},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", spec.rank_pattern},
      {"alpha_pattern", spec.alpha_pattern},
      {"revision", nullptr},
  };
  return j.dump(2) + "\n";
}

void save_adapter(const std::string& dir, model::CausalLMImpl& model, const LoraSpec& spec,
                  bool overwrite) {
  auto tensors = adapter_tensors(model);
  if (tensors.empty()) throw Error("save_adapter " + dir + ": the model has no LoRA adapters");
  io::AtomicDir out(dir, overwrite);
  io::save_file(tensors, (fs::path(out.path()) / kWeightsFile).string());
  io::write_file_atomic((fs::path(out.path()) / kConfigFile).string(), adapter_config_json(spec));
  out.commit();
}

LoraSpec load_adapter(const std::string& dir, model::CausalLMImpl& model) {
  LoraSpec spec = read_adapter_config(dir);
  inject_lora(model, spec);
  copy_weights(dir, model);
  return spec;
}

void load_adapter_weights(const std::string& dir, model::CausalLMImpl& model) {
  copy_weights(dir, model);
}

}  // namespace loratune::lora
