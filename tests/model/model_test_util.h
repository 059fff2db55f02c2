// Helpers shared by the trainer/model tests: fixture paths, reference tensors
// and small tensor comparisons.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace loratune::test {

// The variants scripts/make_tiny_model.py --all writes (the fixture tiny_models).
const std::vector<std::string>& tiny_variants();
std::string tiny_model_dir(const std::string& variant);  // testdata/models/<variant>
// A tensor of testdata/ref_logits/<variant>.safetensors (fixture ref_logits).
at::Tensor ref_tensor(const std::string& variant, const std::string& name);

// Copies a tiny model directory into a fresh temp directory; returns its path.
std::string copy_model(const std::string& variant, const std::string& tag);

double max_abs_diff(const at::Tensor& a, const at::Tensor& b);
// Fraction of rows (last dim = vocab) whose argmax agrees.
double argmax_agreement(const at::Tensor& a, const at::Tensor& b);

}  // namespace loratune::test
