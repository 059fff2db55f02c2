#include "model/model_test_util.h"

#include <ATen/ops/abs.h>
#include <ATen/ops/argmax.h>

#include <filesystem>

#include "common/test_env.h"
#include "trainer/io/safetensors.h"

namespace fs = std::filesystem;

namespace loratune::test {

const std::vector<std::string>& tiny_variants() {
  static const std::vector<std::string> v = variants();
  return v;
}

std::string tiny_model_dir(const std::string& variant) {
  return testdata_dir() + "/models/" + variant;
}

at::Tensor ref_tensor(const std::string& variant, const std::string& name) {
  auto f = io::SafetensorsFile::open(testdata_dir() + "/ref_logits/" + variant + ".safetensors");
  return f->tensor(name);
}

std::string copy_model(const std::string& variant, const std::string& tag) {
  std::string dst = make_temp_dir(tag) + "/" + variant;
  fs::copy(tiny_model_dir(variant), dst, fs::copy_options::recursive);
  return dst;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

double argmax_agreement(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.to(at::kFloat).reshape({-1, a.size(-1)}).argmax(-1);
  at::Tensor y = b.to(at::kFloat).reshape({-1, b.size(-1)}).argmax(-1);
  return x.eq(y).to(at::kDouble).mean().item<double>();
}

}  // namespace loratune::test
