// trainer/model/family.h — what distinguishes one model family from another.
//
// A family is one FamilySpec, defined in trainer/model/families/<name>.cpp and
// listed in the table in family.cpp. It supplies transformers' defaults for
// keys its config.json may omit and resolves the family's structural rules
// (biases, qk-norm, sliding windows) into ModelConfig's plain fields. Adding a
// family (Gemma, Phi-3, ...) is one such file, one table line and a test.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "trainer/io/error.h"
#include "trainer/model/config.h"

namespace loratune::model {

// Typed, error-reporting access to a config.json object, falling back to the
// family's defaults for absent keys. Errors name the source file and key.
class ConfigJson {
 public:
  ConfigJson(const nlohmann::json& j, const nlohmann::json& defaults, std::string source)
      : j_(j), defaults_(defaults), source_(std::move(source)) {}

  // The value of `key`: from the file, else the family default; nullptr when
  // neither has it. A JSON null in the file is returned as null (transformers
  // treats an explicit null differently from an absent key in places).
  const nlohmann::json* find(const std::string& key) const;
  bool is_null_or_absent(const std::string& key) const;
  int64_t get_int(const std::string& key) const;  // absent everywhere or null: error
  double get_double(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  std::optional<int64_t> get_optional_int(const std::string& key) const;  // null -> nullopt

  // Throws Error("<source>: key \"<key>\": <what>") of `kind`: kCorrupt for
  // a missing, mistyped or impossible value, kUnsupported for a valid value
  // loratune does not implement.
  [[noreturn]] void fail(const std::string& key, const std::string& what,
                         ErrorKind kind = ErrorKind::kCorrupt) const;
  const std::string& source() const { return source_; }
  const nlohmann::json& root() const { return j_; }  // the config.json object itself

 private:
  const nlohmann::json& j_;
  const nlohmann::json& defaults_;
  std::string source_;
};

struct FamilySpec {
  std::string model_type;
  // transformers' defaults (the family's XxxConfig class) for keys config.json
  // may omit. "head_dim": null means hidden_size / num_attention_heads;
  // "num_key_value_heads": null means num_attention_heads.
  nlohmann::json defaults;
  // Fills q/k/v/o_bias, mlp_bias, qk_norm and layer_window; every common field
  // of `c` is already parsed.
  void (*resolve)(const ConfigJson& j, ModelConfig& c) = nullptr;
  // Checkpoint tensor name of a parameter name; nullptr: identical (the
  // decoder's parameter names are the Hugging Face names). Used only by the
  // loader, at the load boundary.
  std::string (*checkpoint_name)(const std::string& param_name) = nullptr;
  // The config.json key of the MLP activation ("hidden_activation" in Gemma).
  std::string activation_key = "hidden_act";
  // RoPE parameters may be given per layer type (5.x "rope_parameters":
  // {"full_attention": {...}, "sliding_attention": {...}}): `rope` is read
  // from "full_attention" and resolve() reads the rest (Gemma 3).
  bool rope_per_layer_type = false;
  // partial_rotary_factor < 1 is honoured (Phi-3); other families refuse it,
  // as their transformers attention rotates whole heads.
  bool partial_rotary = false;
};

// The families, one per file under trainer/model/families/.
FamilySpec llama_family();
FamilySpec mistral_family();
FamilySpec qwen2_family();
FamilySpec qwen3_family();
FamilySpec gemma2_family();
FamilySpec gemma3_text_family();
FamilySpec phi3_family();

// All registered families, sorted by model_type.
const std::vector<FamilySpec>& all_families();
// The family of `model_type`; throws Error naming `source`, the value, the
// supported types and the closest one.
const FamilySpec& find_family(const std::string& model_type, const std::string& source);

// The RoPE of one layer type from config.json (4.x "rope_theta" +
// "rope_scaling", or 5.x "rope_parameters", flat or per layer type).
// layer_type "" refuses per-layer-type parameters; "sliding_attention"
// falls back to "rope_local_base_freq" for its theta. max_pos is the default
// original_max_position_embeddings (llama3 scaling).
RopeConfig parse_rope(const ConfigJson& j, int64_t max_pos, const std::string& layer_type = "");

// Per-layer sliding windows from "layer_types" ("sliding_attention" layers
// get `window`, "full_attention" ones 0), or when absent the pattern: layer i
// slides unless (i + 1) % pattern == 0. window 0: no layer slides (Gemma).
void resolve_layer_types(const ConfigJson& j, ModelConfig& c, int64_t window, int64_t pattern);

// Shared rule of qwen2/qwen3 (transformers 5.x): sliding_window applies only
// with use_sliding_window; per-layer choice from "layer_types" when present,
// else layers i >= max_window_layers slide.
void resolve_qwen_windows(const ConfigJson& j, ModelConfig& c);

}  // namespace loratune::model
