// trainer/lora/peft_io.h — LoRA adapters on disk in Hugging Face PEFT format:
// DIR/adapter_config.json + DIR/adapter_model.safetensors with keys
// "base_model.model.<module path>.lora_A.weight" [r, in] / ".lora_B.weight"
// [out, r] (see shared/REFERENCE.md).
#pragma once

#include <string>

#include "trainer/lora/lora.h"
#include "trainer/model/model.h"

namespace loratune::lora {

// Parses DIR/adapter_config.json. Refuses, naming the key, what loratune does
// not support: a peft_type other than LORA, use_dora, bias other than "none",
// modules_to_save, fan_in_fan_out, layers_to_transform, target_parameters,
// a string (regex) target_modules.
LoraSpec read_adapter_config(const std::string& dir);

// The adapter_config.json PEFT writes for `spec` (task_type CAUSAL_LM).
std::string adapter_config_json(const LoraSpec& spec);

// Writes `model`'s adapters and `spec` into DIR as PEFT does, atomically:
// everything is written into a temp directory beside DIR and renamed into
// place. An existing DIR is replaced only when `overwrite`.
void save_adapter(const std::string& dir, model::CausalLMImpl& model, const LoraSpec& spec,
                  bool overwrite);

// Reads DIR's config, injects matching adapters into `model` and copies their
// weights in. Every adapter parameter must be in the file with its shape, and
// every file tensor must be used; otherwise Error names the tensors.
LoraSpec load_adapter(const std::string& dir, model::CausalLMImpl& model);

// Copies adapter weights from DIR into the adapters `model` already has
// (e.g. to start training from them); same checks as load_adapter.
void load_adapter_weights(const std::string& dir, model::CausalLMImpl& model);

}  // namespace loratune::lora
