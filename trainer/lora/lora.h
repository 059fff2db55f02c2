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
//
// Variants (as PEFT implements them; docs/lora-variants.md):
//   * DoRA (use_dora): a trainable magnitude m [out] ("lora_magnitude_vector")
//     rescales each output row of W + s·B·A:
//         y = m / ‖W + s·BA‖_row ⊙ (x W^T + s·B(A(x))) + b
//     with the row norm detached from autograd; m starts as that norm, so a
//     fresh DoRA adapter leaves the model unchanged too.
//   * PiSSA / OLoRA init: A and B start from the top-r SVD (QR for OLoRA) of
//     W, and the base weight becomes the residual W - s·B0·A0, so the model
//     is unchanged at step 0. The adapter written to disk is then the
//     equivalent plain LoRA of rank 2r against the original W
//     ([A; A0], [B, -B0]), as PEFT's path_initial_model_for_weight_conversion
//     writes it: it loads on the untouched base everywhere.
//   * gaussian init: A ~ N(0, 1/r), B = 0.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/io/error.h"
#include "trainer/model/linear.h"
#include "trainer/model/loader.h"
#include "trainer/model/model.h"

namespace loratune::lora {

// How a fresh adapter starts (lora.init; PEFT's init_lora_weights).
enum class LoraInit {
  kDefault,   // A Kaiming-uniform, B = 0 (init_lora_weights = true)
  kGaussian,  // A ~ N(0, 1/r), B = 0 ("gaussian")
  kPissa,     // top-r SVD of W; W becomes the residual ("pissa")
  kOlora,     // QR of W; W becomes the residual ("olora")
};

// What a LoRA adapter is: the fields adapter_config.json records.
struct LoraSpec {
  int64_t r = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  bool use_rslora = false;
  // DoRA: a trainable magnitude vector per adapted projection.
  bool use_dora = false;
  // How fresh adapters start; kPissa / kOlora also rewrite the base weights
  // (rewrites_base). Adapters read from disk are never re-initialised.
  LoraInit init = LoraInit::kDefault;
  // Module names matched as PEFT does (equal to the module path, or a suffix
  // after a '.'), or the single entry "all-linear": every projection inside
  // the decoder layers, never lm_head.
  std::vector<std::string> target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
  // Per-module rank / alpha overrides: key is a regex matched as PEFT's
  // get_pattern_key, re.match(r"(.*\.)?(KEY)$", module_path); the first key
  // that matches wins, so they keep adapter_config.json's order (PEFT reads
  // the file into a dict, which keeps it).
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  std::string base_model_name_or_path;
  // The rest are read from PEFT adapters (adapter_config.json) and matched as
  // PEFT's check_target_module_exists does; training configs leave them empty.
  // target_modules given as a string other than "all-linear": a regex the
  // whole module path must match (re.fullmatch); target_modules is then empty.
  std::string target_regex;
  // exclude_modules: a list (equal to the path or a '.'-suffix of it) or a
  // regex string (full match); excluded modules are never adapted.
  std::vector<std::string> exclude_modules;
  std::string exclude_regex;
  // layers_to_transform (empty: every layer) and layers_pattern; applied only
  // to modules matched by a '.'-suffix of a target_modules entry, as PEFT.
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> layers_pattern;
};

// Whether fresh adapters of `spec` replace their base weight by a residual
// (PiSSA, OLoRA): such runs save the rank-2r plain-LoRA equivalent.
bool rewrites_base(const LoraSpec& spec);

// The spec of what save_adapter writes for `spec`: itself, or for an init
// that rewrites the base the plain LoRA of rank 2r with the same scales
// (alpha doubled, or times sqrt(2) with rsLoRA; rank and alpha patterns
// likewise) and init kDefault.
LoraSpec saved_spec(const LoraSpec& spec);

// PEFT's name of an init in adapter_config.json / the config ("pissa").
std::string init_name(LoraInit init);

// The one place the LoRA scale is computed: alpha / r, or alpha / sqrt(r)
// with rsLoRA.
double lora_scale(double alpha, int64_t r, bool use_rslora);

// The rank and alpha `spec` gives the module at `module_path`.
std::pair<int64_t, double> rank_and_alpha(const LoraSpec& spec, const std::string& module_path);

// Whether PEFT would put a LoRA layer on the projection at `module_path`
// (e.g. "model.layers.0.self_attn.q_proj") for `spec`: exclusions first,
// then target_regex / target_modules ("all-linear": every projection inside
// the decoder layers), then layers_to_transform. Throws Error for a pattern
// that is not a valid regular expression.
bool is_targeted(const LoraSpec& spec, const std::string& module_path);

// Refuses (kUnsupported, naming `what`) a regex that std::regex would not
// compile, or that it would read differently from Python's re, with which
// PEFT matches: POSIX bracket classes ("[[:digit:]]" is a set and a ']' to
// Python), "{,n}", and escapes of letters outside \d \D \s \S \w \W \b \B
// \n \r \t \f \v \x \u (\A, \Z are anchors to Python, letters to
// ECMAScript).
void check_regex(const std::string& pattern, const std::string& what);
// Whether all of `text` matches `pattern` (check_regex'd, compiled once per
// pattern text and thread).
bool regex_full_match(const std::string& pattern, const std::string& text, const char* what);

// One projection that gets an adapter, with the rank, alpha and scale that
// `spec` gives it (rank_pattern / alpha_pattern applied).
struct AdaptedModule {
  std::string path;  // "model.layers.0.self_attn.q_proj"
  int64_t in_features = 0;
  int64_t out_features = 0;
  int64_t r = 0;
  double alpha = 0;
  double scale = 0;   // lora_scale(alpha, r, use_rslora)
  bool dora = false;  // has a magnitude vector (spec.use_dora)
};

// The projections among `linears` (a model's, in model order) that `spec`
// targets: exactly the LoRA layers PEFT would create. Allocates nothing.
// Throws Error of `kind` prefixed by `source` ("lora.target_modules", or an
// adapter_config.json path) when nothing is targeted, when a rank is not
// positive, or, with `every_name_must_match` (a training config, where an
// unmatched name is a typo; PEFT itself only requires some match), when a
// target_modules entry matches no projection (naming the closest).
std::vector<AdaptedModule> plan_lora(const LoraSpec& spec,
                                     const std::vector<model::LinearShape>& linears,
                                     const std::string& source, ErrorKind kind,
                                     bool every_name_must_match);

// The projections of `model` as LinearShape (path, in, out), in model order.
// Paths here and in everything adapters are matched and named by (plan_lora,
// AdaptedModule, adapter files) are PEFT's module paths,
// model::peft_module_path: the model's own except for a multimodal Gemma 3
// ("model.language_model.layers.0.self_attn.q_proj").
std::vector<model::LinearShape> linear_shapes_of(model::CausalLMImpl& model);
// The same for a model of `config`, without building it (merge, export).
std::vector<model::LinearShape> peft_linear_shapes(const model::ModelConfig& config);

// Attaches a fresh adapter per entry of `plan` to `model`'s projection of
// that path, initialised as spec.init says (PiSSA / OLoRA rewrite the
// projection's weight) and with a DoRA magnitude when spec.use_dora. Throws
// Error when a path is not a projection of `model` or already has an
// adapter, or (kConfig) when PiSSA / OLoRA meet an NF4 weight or a rank
// above min(in, out).
void attach_lora(model::CausalLMImpl& model, const std::vector<AdaptedModule>& plan,
                 const LoraSpec& spec);

// The adapter attached to one projection. Registers "lora_A" and "lora_B"
// (each a model::Linear without bias, trainable, float32), and with DoRA the
// parameter "lora_magnitude_vector" (float32 [out], trainable).
class LoraLinearImpl : public model::LinearAdapter {
 public:
  LoraLinearImpl(int64_t in_features, int64_t out_features, int64_t r, double alpha, double dropout,
                 bool use_rslora, const c10::Device& device);
  // x [..., in] -> s · B(A(dropout(x))) [..., out] in x's dtype (plain LoRA).
  at::Tensor delta(const at::Tensor& x) override;
  // y + delta(x). When x, y and the adapter share a dtype, the term goes into
  // one GEMM, y + (s · A(dropout(x))) B^T, so no [..., out] product and sum
  // are made (s is applied on the [..., r] side: PEFT applies it after B,
  // which differs by rounding only, and not at all for a power-of-two s).
  // With DoRA: y + (g - 1) ⊙ (y - b) + g ⊙ s·B(A(x)), g = m / ‖W + s·BA‖_row
  // (norm detached), as PEFT's DoraLinearLayer; with dropout active in
  // training, y - b is recomputed as dropout(x) W^T, again as PEFT.
  at::Tensor add_delta(const at::Tensor& x, const at::Tensor& y) override;
  // A ~ U(-1/sqrt(in), 1/sqrt(in)) from the default generator, B = 0.
  void reset_parameters();
  // A ~ N(0, 1/r) from the default generator, B = 0 (PEFT's "gaussian").
  void reset_gaussian();
  // PiSSA / OLoRA: A, B from `w` [out, in] (any float dtype) as PEFT's
  // pissa_init / olora_init compute them, kept also as the initial factors;
  // returns the residual w - s·B·A in float32 for the caller to store as the
  // projection's weight.
  at::Tensor init_from_weight(const at::Tensor& w, LoraInit how);
  // Adds the DoRA magnitude, m = ‖w + s·B·A‖ per output row (w [out, in]
  // the base weight as the forward sees it). Call before the adapter is
  // attached (LinearImpl::set_adapter registers it).
  void enable_dora(const at::Tensor& w);

  model::Linear lora_A{nullptr};  // weight [r, in]
  model::Linear lora_B{nullptr};  // weight [out, r]
  at::Tensor magnitude;           // [out] float32 with DoRA, else undefined
  int64_t r() const { return r_; }
  double scale() const { return scale_; }
  bool dora() const { return magnitude.defined(); }
  // The factors PiSSA / OLoRA started from (undefined otherwise).
  const at::Tensor& init_A() const { return init_A_; }
  const at::Tensor& init_B() const { return init_B_; }

 private:
  at::Tensor dora_add(const at::Tensor& x, const at::Tensor& y);

  int64_t r_;
  double scale_;
  double dropout_;
  at::Tensor init_A_, init_B_;
};

// Attaches a fresh LoRA adapter (reset_parameters) to every projection of
// `model` that `spec` targets (plan_lora, then attach_lora) and returns their
// module paths in model order. Throws Error when a target name matches no
// projection (naming the closest module name) or a projection already has
// an adapter.
std::vector<std::string> inject_lora(model::CausalLMImpl& model, const LoraSpec& spec);

// The adapter parameters of `model` under their PEFT file names
// ("base_model.model.<path>.lora_A.weight", ".lora_B.weight" and with DoRA
// ".lora_magnitude_vector"), in model order: what the optimizer updates and
// checkpoints hold. Views, not copies.
std::vector<std::pair<std::string, at::Tensor>> adapter_tensors(model::CausalLMImpl& model);

// What save_adapter writes: adapter_tensors, except that an adapter started
// by PiSSA / OLoRA is written as the equivalent plain LoRA on the original
// weight, A' = [A; A0] [2r, in] and B' = [B, -B0] [out, 2r] (fresh tensors).
std::vector<std::pair<std::string, at::Tensor>> saved_adapter_tensors(model::CausalLMImpl& model);

// Every trainable adapter parameter of `model` (A, B and any magnitude).
std::vector<at::Tensor> adapter_parameters(model::CausalLMImpl& model);

}  // namespace loratune::lora
