// trainer/lora/lora.h — LoRA adapters on the decoder's projections, in the
// layout Hugging Face PEFT uses, so adapters move both ways between PEFT and
// loratune.
//
// A LoRA projection computes
//     y = x W^T + b + s · B(A(dropout(x)))      A [r, in], B [out, r]
// with s = lora_scale(alpha, r, use_rslora). A and B are float32 whatever the
// base dtype (as PEFT's autocast_adapter_dtype); the input is cast to float32
// for the adapter term and the term cast back to the input dtype. A starts
// Kaiming-uniform (a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))) and B zero,
// as PEFT initialises them, so a fresh adapter leaves the model unchanged.
//
// Parameter names follow PEFT: the module "model.layers.0.self_attn.q_proj"
// gains "model.layers.0.self_attn.q_proj.lora_A.weight" and ".lora_B.weight";
// in adapter_model.safetensors they are prefixed with "base_model.model.".
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/model/linear.h"
#include "trainer/model/model.h"

namespace loratune::lora {

// What a LoRA adapter is: the fields adapter_config.json records.
struct LoraSpec {
  int64_t r = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  bool use_rslora = false;
  // Module names matched as PEFT does (equal to the module path, or a suffix
  // after a '.'), or the single entry "all-linear": every projection inside
  // the decoder layers, never lm_head.
  std::vector<std::string> target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
  // Per-module rank / alpha overrides: key is a regex matched as PEFT's
  // get_pattern_key, re.match(r"(.*\.)?(KEY)$", module_path).
  std::map<std::string, int64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  std::string base_model_name_or_path;
};

// The one place the LoRA scale is computed: alpha / r, or alpha / sqrt(r)
// with rsLoRA.
double lora_scale(double alpha, int64_t r, bool use_rslora);

// The rank and alpha `spec` gives the module at `module_path`.
std::pair<int64_t, double> rank_and_alpha(const LoraSpec& spec, const std::string& module_path);

// The adapter attached to one projection. Registers "lora_A" and "lora_B"
// (each a model::Linear without bias, trainable, float32).
class LoraLinearImpl : public model::LinearAdapter {
 public:
  LoraLinearImpl(int64_t in_features, int64_t out_features, int64_t r, double alpha, double dropout,
                 bool use_rslora, const c10::Device& device);
  // x [..., in] -> s · B(A(dropout(x))) [..., out] in x's dtype.
  at::Tensor delta(const at::Tensor& x) override;
  // y + delta(x). When x, y and the adapter share a dtype, the term goes into
  // one GEMM, y + (s · A(dropout(x))) B^T, so no [..., out] product and sum
  // are made (s is applied on the [..., r] side: PEFT applies it after B,
  // which differs by rounding only, and not at all for a power-of-two s).
  at::Tensor add_delta(const at::Tensor& x, const at::Tensor& y) override;
  // A ~ U(-1/sqrt(in), 1/sqrt(in)) from the default generator, B = 0.
  void reset_parameters();

  model::Linear lora_A{nullptr};  // weight [r, in]
  model::Linear lora_B{nullptr};  // weight [out, r]
  int64_t r() const { return r_; }
  double scale() const { return scale_; }

 private:
  int64_t r_;
  double scale_;
  double dropout_;
};

// Attaches a fresh LoRA adapter (reset_parameters) to every projection of
// `model` that `spec` targets and returns their module paths in model order.
// Throws Error when a target name matches no projection (naming the closest
// module name) or a projection already has an adapter.
std::vector<std::string> inject_lora(model::CausalLMImpl& model, const LoraSpec& spec);

// The adapter tensors of `model` under their PEFT file names
// ("base_model.model.<path>.lora_A.weight"), in model order. Views, not copies.
std::vector<std::pair<std::string, at::Tensor>> adapter_tensors(model::CausalLMImpl& model);

// Every trainable adapter parameter of `model` (A and B of each projection).
std::vector<at::Tensor> adapter_parameters(model::CausalLMImpl& model);

}  // namespace loratune::lora
