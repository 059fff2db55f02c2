// trainer/model/loader.cpp — config + safetensors → CausalLM.
#include "trainer/model/loader.h"

#include <ATen/Context.h>
#include <c10/core/Device.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <set>
#include <sstream>
#include <vector>

#include "trainer/io/error.h"
#include "trainer/io/safetensors.h"
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

// Checkpoint tensors transformers skips when loading these models.
bool ignorable(const ModelConfig& c, const std::string& name) {
  const std::string inv = "rotary_emb.inv_freq";
  if (name.size() >= inv.size() && name.compare(name.size() - inv.size(), inv.size(), inv) == 0) {
    return true;
  }
  return c.tie_word_embeddings && name == "lm_head.weight";
}

// Compares the model's parameters with the checkpoint; throws one Error
// listing every kind of mismatch.
void check_names(const std::string& dir, const ModelConfig& c, const io::Checkpoint& ckpt,
                 const torch::OrderedDict<std::string, at::Tensor>& params) {
  std::vector<std::string> missing, misshapen, bad_dtype, unexpected;
  std::set<std::string> used;
  for (const auto& item : params) {
    const std::string name = checkpoint_name(c, item.key());
    if (!ckpt.contains(name)) {
      missing.push_back(name);
      continue;
    }
    used.insert(name);
    const io::TensorInfo& info = ckpt.info(name);
    if (at::IntArrayRef(info.shape) != item.value().sizes()) {
      misshapen.push_back(name + " (expected " + shape_str(item.value().sizes()) + ", got " +
                          shape_str(info.shape) + ")");
    }
    if (!at::isFloatingType(info.scalar_type)) {
      bad_dtype.push_back(name + " (" + info.dtype + ")");
    }
  }
  for (const auto& name : ckpt.names()) {
    if (!used.count(name) && !ignorable(c, name)) unexpected.push_back(name);
  }
  if (missing.empty() && misshapen.empty() && unexpected.empty() && bad_dtype.empty()) return;
  std::string msg =
      dir + ": the checkpoint does not match the " + c.model_type + " model of config.json";
  if (!missing.empty()) msg += "; " + list_names(missing, "missing tensors");
  if (!unexpected.empty()) msg += "; " + list_names(unexpected, "unexpected tensors");
  if (!misshapen.empty()) msg += "; " + list_names(misshapen, "tensors with the wrong shape");
  if (!bad_dtype.empty()) msg += "; " + list_names(bad_dtype, "tensors not floating point");
  throw Error(msg);
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
      throw Error(std::string("unsupported model dtype ") + c10::toString(t));
  }
}

std::string checkpoint_name(const ModelConfig& config, const std::string& param_name) {
  const FamilySpec& family = find_family(config.model_type, "config");
  return family.checkpoint_name ? family.checkpoint_name(param_name) : param_name;
}

CausalLM load_model(const std::string& dir, const LoadOptions& options) {
  const ModelConfig config = load_config(dir);
  dtype_string(options.dtype);  // rejects non-float model dtypes
  const c10::Device device = parse_device(options.device);
  io::Checkpoint ckpt = io::Checkpoint::open(dir);

  // Parameters are allocated but untouched: on CPU those pages cost nothing
  // and are dropped when a parameter takes the mapped tensor instead.
  CausalLM model(config, at::TensorOptions().dtype(options.dtype).device(device));
  const auto params = model->named_parameters(/*recurse=*/true);
  check_names(dir, config, ckpt, params);

  torch::NoGradGuard no_grad;
  for (const auto& item : params) {
    const std::string name = checkpoint_name(config, item.key());
    at::Tensor param = item.value();
    at::Tensor src = ckpt.tensor(name);  // zero-copy CPU view of the mapping
    if (device.is_cpu() && src.scalar_type() == options.dtype) {
      param.set_data(src);
    } else if (device.is_cuda() && src.scalar_type() != options.dtype) {
      // Upload in the file's dtype and convert on the GPU: copy_ across
      // devices would convert on the host first.
      param.copy_(src.to(device));
      ckpt.file_of(name).release(ckpt.info(name));
    } else {
      param.copy_(src);  // same dtype to CUDA: one host-to-device copy from the mapping
      ckpt.file_of(name).release(ckpt.info(name));
    }
    param.set_requires_grad(false);
  }
  model->eval();
  return model;
}

}  // namespace loratune::model
