// trainer/lora/peft_io.h — LoRA adapters on disk in Hugging Face PEFT format:
// DIR/adapter_config.json + DIR/adapter_model.safetensors with keys
// "base_model.model.<module path>.lora_A.weight" [r, in] / ".lora_B.weight"
// [out, r] (see docs/formats.md, "PEFT adapter directory").
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/model/model.h"

namespace loratune::lora {

// Parses DIR/adapter_config.json: r, lora_alpha, use_rslora, use_dora, lora_dropout,
// target_modules (a list, "all-linear" or a regex string), exclude_modules,
// layers_to_transform / layers_pattern, rank_pattern, alpha_pattern.
// base_model_name_or_path is recorded, never checked. Errors name the file
// and key: a missing file is kIo, malformed JSON or a value of the wrong
// type or range kCorrupt, and what changes the computation in ways loratune
// does not implement kUnsupported: a peft_type other than LORA,
// bias other than "none", modules_to_save, fan_in_fan_out, lora_bias,
// target_parameters, trainable_token_indices, layer_replication,
// alora_invocation_tokens, use_qalora, and init_lora_weights variants that
// change the base weights (pissa, olora, loftq, corda). Unknown keys are
// ignored, as PEFT ignores them.
LoraSpec read_adapter_config(const std::string& dir);

// An adapter directory checked against a base model: its spec, the LoRA
// layers PEFT would create (plan_lora) and its open weights file.
struct CheckedAdapter {
  LoraSpec spec;
  std::vector<AdaptedModule> modules;
  std::shared_ptr<io::SafetensorsFile> file;  // DIR/adapter_model.safetensors
};

// Reads DIR (config and safetensors header, not the data) and checks it
// against the base model whose projections are `linears`, so that what is
// used is exactly what PEFT would load: every targeted module has
// "base_model.model.<path>.lora_A.weight" [r, in] and ".lora_B.weight"
// [out, r] with r from r / rank_pattern, floating point, and with use_dora
// ".lora_magnitude_vector" [out]; no other tensor is
// in the file (a factor for a module target_modules does not select, for a
// module the base lacks, or any non-LoRA key). Every command that reads an
// adapter (generate, eval, logits, merge, train's init_from) goes through
// this. Errors (kCorrupt, kUnsupported for unsupported features, kIo for
// missing files) name the file and the tensor.
CheckedAdapter open_adapter(const std::string& dir, const std::vector<model::LinearShape>& linears);

// Checks `file`'s tensors against `modules` (the adapted projections among
// the base model's `linears`) as open_adapter does; `config` names
// adapter_config.json in messages about ranks. Throws Error (kCorrupt)
// naming the file, the first problems (tensor, expected vs actual) and how
// many there are.
void check_adapter_tensors(const io::SafetensorsFile& file,
                           const std::vector<AdaptedModule>& modules,
                           const std::vector<model::LinearShape>& linears,
                           const std::string& config);

// The adapter_config.json PEFT writes for `spec` (task_type CAUSAL_LM).
std::string adapter_config_json(const LoraSpec& spec);

// Writes `model`'s adapters (saved_adapter_tensors) and saved_spec(`spec`)
// into DIR as PEFT does, atomically:
// everything is written into a temp directory beside DIR and renamed into
// place. An existing DIR is replaced only when `overwrite`.
void save_adapter(const std::string& dir, model::CausalLMImpl& model, const LoraSpec& spec,
                  bool overwrite);

// open_adapter against `model`'s projections, then injects the adapters and
// copies their weights in. Nothing is allocated before the checks pass.
LoraSpec load_adapter(const std::string& dir, model::CausalLMImpl& model);

// Copies adapter weights from DIR into the adapters `model` already has
// (e.g. to start training from them): the file must hold exactly those
// adapters' factors, with their shapes (check_adapter_tensors).
void load_adapter_weights(const std::string& dir, model::CausalLMImpl& model);

}  // namespace loratune::lora
