// trainer/model/loader.cpp — config + safetensors → CausalLM.
#include "trainer/model/loader.h"

#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <c10/core/Device.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <vector>

#include "trainer/io/error.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/bnb_checkpoint.h"
#include "trainer/model/family.h"

namespace loratune::model {
namespace {

constexpr size_t kListed = 5;  // names listed per kind of mismatch

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

// "3 missing tensors: a, b, c" (at most kListed names, then "and N more").
std::string list_names(const std::vector<std::string>& names, const std::string& what) {
  std::string s = std::to_string(names.size()) + " " + what + ": ";
  for (size_t i = 0; i < names.size() && i < kListed; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > kListed) s += ", and " + std::to_string(names.size() - kListed) + " more";
  return s;
}

c10::Device parse_device(const std::string& text) {
  std::optional<c10::Device> device;
  try {
    device = c10::Device(text);
  } catch (const c10::Error&) {
    throw Error("device \"" + text + "\" is not valid (use cpu, cuda or cuda:N)");
  }
  if (!device->is_cpu() && !device->is_cuda()) {
    throw Error("device \"" + text + "\" is not supported (use cpu, cuda or cuda:N)");
  }
  if (device->is_cuda() && !at::hasCUDA()) {
    throw Error("device \"" + text + "\": this LibTorch build has no CUDA or no GPU is visible");
  }
  return *device;
}

// After check_checkpoint accepted the checkpoint, every parameter the
// model registered must be in it with its shape; a miss means that
// expected_tensors and the modules disagree (a loratune bug).
void check_params(const std::string& dir, const ModelConfig& c, const io::Checkpoint& ckpt,
                  const torch::OrderedDict<std::string, at::Tensor>& params,
                  const std::map<std::string, Nf4Weight>& stored_nf4) {
  std::vector<std::string> wrong;
  for (const auto& item : params) {
    const std::string name = checkpoint_name(c, item.key());
    if (stored_nf4.count(item.key())) continue;  // packed: read_bnb_nf4 checked it
    if (!ckpt.contains(name)) {
      wrong.push_back(name + " (missing)");
    } else if (at::IntArrayRef(ckpt.info(name).shape) != item.value().sizes()) {
      wrong.push_back(name + " (expected " + shape_str(item.value().sizes()) + ", got " +
                      shape_str(ckpt.info(name).shape) + ")");
    }
  }
  if (wrong.empty()) return;
  throw Error(
      dir + ": the " + c.model_type +
          " model's parameters disagree with expected_tensors: " + list_names(wrong, "parameters"),
      ErrorKind::kInternal);
}

}  // namespace

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "f32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16" || name == "f16") return at::kHalf;
  std::string msg = "dtype \"" + name + "\" is not supported (float32, bfloat16, float16)";
  std::string near = closest_match(name, {"float32", "bfloat16", "float16"});
  if (!near.empty()) msg += "; did you mean \"" + near + "\"?";
  throw Error(msg);
}

std::string dtype_string(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    default:
      throw Error(std::string("unsupported model dtype ") + c10::toString(t),
                  ErrorKind::kUnsupported);
  }
}

namespace {

constexpr const char* kHubPrefix = "language_model.model.";     // 4.50 hub, transformers 5 saves
constexpr const char* kNestedPrefix = "model.language_model.";  // transformers 4.52 .. 4.57 saves
constexpr const char* kPeftPrefix = "model.language_model.";    // transformers 5's module tree

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

std::string checkpoint_name(const ModelConfig& config, const std::string& param_name) {
  const FamilySpec& family = find_family(config.model_type, "config");
  const std::string name = family.checkpoint_name ? family.checkpoint_name(param_name) : param_name;
  if (!config.multimodal) return name;
  if (starts_with(name, "model.")) return config.checkpoint_prefix + name.substr(6);
  if (starts_with(name, "lm_head.") && config.checkpoint_prefix == kHubPrefix) {
    return "language_model." + name;
  }
  return name;
}

void detect_checkpoint_layout(ModelConfig& config, const io::Checkpoint& ckpt) {
  if (!config.multimodal) return;
  config.checkpoint_prefix = kHubPrefix;
  for (const char* prefix : {kHubPrefix, kNestedPrefix}) {
    if (ckpt.contains(std::string(prefix) + "embed_tokens.weight")) {
      config.checkpoint_prefix = prefix;
      return;
    }
  }
}

bool is_multimodal_extra(const ModelConfig& config, const std::string& name) {
  if (!config.multimodal) return false;
  for (const char* p : {"vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                        "model.multi_modal_projector."}) {
    if (starts_with(name, p)) return true;
  }
  return false;
}

std::string peft_module_path(const ModelConfig& config, const std::string& module_path) {
  if (!config.multimodal || !starts_with(module_path, "model.")) return module_path;
  return kPeftPrefix + module_path.substr(6);
}

std::string module_path_of_peft(const ModelConfig& config, const std::string& peft_path) {
  if (!config.multimodal || !starts_with(peft_path, kPeftPrefix)) return peft_path;
  return "model." + peft_path.substr(std::string(kPeftPrefix).size());
}

bool is_quantized_projection(const std::string& module_path) {
  return module_path.rfind("model.layers.", 0) == 0;
}

namespace {

// model.to(device) for everything but the decoder layers' projection
// weights, which keep their host data (LoadOptions::layer_projections_on_host).
void move_except_projections(CausalLMImpl& model, const c10::Device& device) {
  std::vector<std::pair<at::Tensor, at::Tensor>> kept;  // (parameter, its host data)
  for (auto& [path, linear] : linear_modules(model)) {
    if (!is_quantized_projection(path)) continue;
    kept.emplace_back(linear->weight, linear->weight.data());
    linear->weight.set_data(at::empty({0}, linear->weight.options()));  // moved empty
  }
  model.to(device);
  for (auto& [param, host] : kept) param.set_data(host);  // as Module::to sets data across devices
}

}  // namespace

CausalLM load_model(const std::string& dir, const LoadOptions& options) {
  ModelConfig config = load_config(dir);
  dtype_string(options.dtype);  // rejects non-float model dtypes
  const c10::Device device = parse_device(options.device);
  io::Checkpoint ckpt = io::Checkpoint::open(dir);
  detect_checkpoint_layout(config, ckpt);
  // config.json against the headers before the model allocates anything.
  check_checkpoint(config_json_path(dir), config, ckpt, /*reads_bnb_nf4=*/true);

  // A pre-quantized bitsandbytes checkpoint decides for itself: its 4-bit
  // projections are taken as stored (never re-quantized) whatever
  // options.quantize says, its float tensors (embeddings, lm_head, norms,
  // llm_int8_skip_modules) load as float ones, and options.quantize does not
  // quantize those either (transformers would not). `model.quantize: none`
  // therefore still gives an NF4 model on such a checkpoint: NF4 is what the
  // weights are, and dequantizing them would only cost memory. The compute
  // dtype is options.dtype (bnb_4bit_compute_dtype is not consulted). Every
  // state is read and checked here, before the model allocates anything.
  std::map<std::string, Nf4Weight> stored_nf4;  // parameter name -> state
  if (config.bnb_nf4) {
    for (const LinearShape& l : linear_shapes(config)) {
      const std::string name = checkpoint_name(config, l.path + ".weight");
      if (!is_bnb_quantized(ckpt, name)) continue;
      if (!is_quantized_projection(l.path)) {
        throw Error(ckpt.file_of(name).path() + ": tensor '" + name + "': a 4-bit " + l.path +
                        " is not supported (loratune keeps NF4 inside the decoder layers only)",
                    ErrorKind::kUnsupported);
      }
      stored_nf4.emplace(l.path + ".weight", read_bnb_nf4(ckpt, name, l.out_features, l.in_features,
                                                          config.bnb_nf4->double_quant));
    }
  }

  // Parameters are allocated but untouched: on CPU those pages cost nothing
  // and are dropped when a parameter takes the mapped tensor instead. An NF4
  // model is built on the CPU and moved to its device at the end.
  const bool quantize_at_load = options.quantize.kind == Quantization::kNf4 && !config.bnb_nf4;
  const bool nf4 = quantize_at_load || !stored_nf4.empty();
  const bool host_projections = options.layer_projections_on_host && !nf4 && !device.is_cpu();
  const c10::Device build = nf4 || host_projections ? c10::Device(c10::kCPU) : device;
  CausalLM model(config, at::TensorOptions().dtype(options.dtype).device(build));
  const auto params = model->named_parameters(/*recurse=*/true);
  check_params(dir, config, ckpt, params, stored_nf4);
  std::map<std::string, std::shared_ptr<LinearImpl>> quantized;  // parameter name -> projection
  if (nf4) {
    for (auto& [path, linear] : linear_modules(*model)) {
      if (quantize_at_load ? is_quantized_projection(path) : stored_nf4.count(path + ".weight")) {
        quantized.emplace(path + ".weight", linear);
      }
    }
  }

  torch::NoGradGuard no_grad;
  for (const auto& item : params) {
    const std::string name = checkpoint_name(config, item.key());
    at::Tensor param = item.value();
    at::Tensor src = ckpt.tensor(name);  // zero-copy CPU view of the mapping
    if (auto st = stored_nf4.find(item.key()); st != stored_nf4.end()) {
      quantized.at(item.key())->set_nf4(std::move(st->second));  // zero-copy views
    } else if (auto it = quantized.find(item.key()); it != quantized.end()) {
      // bitsandbytes quantizes the weight as loaded in the model dtype.
      const at::Tensor w = src.scalar_type() == options.dtype ? src : src.to(options.dtype);
      it->second->set_nf4(quantize_nf4(w, options.quantize.double_quant, name));
      ckpt.file_of(name).release(ckpt.info(name));
    } else if (build.is_cpu() && src.scalar_type() == options.dtype) {
      param.set_data(src);
    } else if (build.is_cuda() && src.scalar_type() != options.dtype) {
      // Upload in the file's dtype and convert on the GPU: copy_ across
      // devices would convert on the host first.
      param.copy_(src.to(build));
      ckpt.file_of(name).release(ckpt.info(name));
    } else {
      param.copy_(src);  // same dtype to CUDA: one host-to-device copy from the mapping
      ckpt.file_of(name).release(ckpt.info(name));
    }
    param.set_requires_grad(false);
  }
  if (host_projections) {
    move_except_projections(*model, device);
  } else if (build != device) {
    model->to(device);
  }
  model->eval();
  return model;
}

}  // namespace loratune::model
