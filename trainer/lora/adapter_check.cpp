// trainer/lora/adapter_check.cpp — adapter_model.safetensors against the
// LoRA layers PEFT would create (peft_io.h, check_adapter_tensors).
#include <ATen/core/Tensor.h>
#include <ATen/ops/all.h>
#include <ATen/ops/isfinite.h>
#include <c10/core/ScalarType.h>

#include <map>
#include <set>
#include <sstream>

#include "trainer/io/error.h"
#include "trainer/lora/peft_io.h"

namespace loratune::lora {
namespace {

constexpr const char* kPrefix = "base_model.model.";
constexpr size_t kShown = 2;  // problems spelled out in the message

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << at::IntArrayRef(s);
  return o.str();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// One factor's checks: dtype, then shape, explaining a rank that disagrees
// with adapter_config.json apart from factors that do not fit the base.
void check_factor(const io::TensorInfo& info, const AdaptedModule& m, bool is_a,
                  const std::string& config, std::vector<std::string>& problems) {
  const std::string t = "tensor '" + printable(info.name) + "'";
  if (!at::isFloatingType(info.scalar_type)) {
    problems.push_back(t + " is " + printable(info.dtype, 16) +
                       "; LoRA factors must be floating point");
  }
  const std::vector<int64_t> want =
      is_a ? std::vector<int64_t>{m.r, m.in_features} : std::vector<int64_t>{m.out_features, m.r};
  if (info.shape == want) return;
  if (info.shape.size() != 2) {
    problems.push_back(t + " has shape " + shape_str(info.shape) + "; expected " + shape_str(want));
    return;
  }
  const int64_t rank = is_a ? info.shape[0] : info.shape[1];
  const int64_t base = is_a ? info.shape[1] : info.shape[0];
  const int64_t base_want = is_a ? m.in_features : m.out_features;
  if (base != base_want) {
    problems.push_back(t + " is " + shape_str(info.shape) + ", which does not fit the base " +
                       "model's " + m.path + " (in_features " + std::to_string(m.in_features) +
                       ", out_features " + std::to_string(m.out_features) + "; expected " +
                       shape_str(want) + ")");
  } else {
    problems.push_back(t + " has rank " + std::to_string(rank) + " (shape " +
                       shape_str(info.shape) + ") but " + config + " gives " + m.path +
                       " r = " + std::to_string(m.r));
  }
}

// Why a tensor no LoRA layer uses is in the file.
std::string unexpected(const std::string& name, const std::set<std::string>& base_paths,
                       const std::vector<std::string>& base_list) {
  const std::string t = "tensor '" + printable(name) + "'";
  const std::string a = ".lora_A.weight", b = ".lora_B.weight", m = ".lora_magnitude_vector";
  if (name.rfind(kPrefix, 0) != 0 ||
      !(ends_with(name, a) || ends_with(name, b) || ends_with(name, m))) {
    return t + " is not a LoRA factor loratune reads (expected " + kPrefix +
           "<module>.lora_A.weight / .lora_B.weight / .lora_magnitude_vector)";
  }
  const size_t p = std::string(kPrefix).size();
  const size_t suffix = ends_with(name, m) ? m.size() : a.size();
  const std::string path = name.substr(p, name.size() - p - suffix);
  if (ends_with(name, m) && base_paths.count(path)) {
    return t + " is a DoRA magnitude, but use_dora is false in adapter_config.json " +
           "(PEFT would ignore it)";
  }
  if (base_paths.count(path)) {
    return t + " is for " + path + ", which target_modules does not select (PEFT would " +
           "not create a LoRA layer there)";
  }
  if (path == "lm_head" || ends_with(path, ".lm_head")) {
    return t + " is for " + printable(path) + ": this model ties lm_head to embed_tokens " +
           "(tie_word_embeddings), so it has no lm_head projection for LoRA";
  }
  std::string hint = closest_match(path, base_list);
  return t + " is for " + printable(path) + ", which is not a projection of the base model" +
         (hint.empty() ? "" : " (closest: " + hint + ")");
}

}  // namespace

void check_adapter_tensors(const io::SafetensorsFile& file,
                           const std::vector<AdaptedModule>& modules,
                           const std::vector<model::LinearShape>& linears,
                           const std::string& config) {
  std::vector<std::string> problems;
  std::set<std::string> expected;
  for (const AdaptedModule& m : modules) {
    for (bool is_a : {true, false}) {
      const std::string name = kPrefix + m.path + (is_a ? ".lora_A.weight" : ".lora_B.weight");
      expected.insert(name);
      const io::TensorInfo* info = file.find(name);
      if (info == nullptr) {
        problems.push_back("tensor '" + name + "' is missing (" + config + " targets " + m.path +
                           ")");
        continue;
      }
      check_factor(*info, m, is_a, config, problems);
    }
    if (!m.dora) continue;
    const std::string name = kPrefix + m.path + ".lora_magnitude_vector";
    expected.insert(name);
    const io::TensorInfo* info = file.find(name);
    if (info == nullptr) {
      problems.push_back("tensor '" + name + "' is missing (use_dora is true in " + config + ")");
    } else if (!at::isFloatingType(info->scalar_type) ||
               info->shape != std::vector<int64_t>{m.out_features}) {
      problems.push_back("tensor '" + name + "' is " + printable(info->dtype, 16) + " " +
                         shape_str(info->shape) + "; a DoRA magnitude of " + m.path +
                         " is floating point [" + std::to_string(m.out_features) + "]");
    }
  }
  std::set<std::string> base_paths;
  std::vector<std::string> base_list;
  for (const auto& l : linears) base_paths.insert(l.path), base_list.push_back(l.path);
  for (const io::TensorInfo& info : file.tensors()) {
    if (!expected.count(info.name))
      problems.push_back(unexpected(info.name, base_paths, base_list));
  }
  if (problems.empty()) {
    // Structure is right; now the values. A NaN or inf factor would turn
    // every output of its projection into NaN, silently (PEFT loads it).
    size_t bad = 0;
    std::string first;
    for (const std::string& name : expected) {
      if (at::isfinite(file.tensor(name)).all().item<bool>()) continue;
      if (bad++ == 0) first = name;
    }
    if (bad == 0) return;
    throw Error(file.path() + ": tensor '" + printable(first) + "' holds NaN or inf values" +
                    (bad > 1 ? " (" + std::to_string(bad) + " tensors in all)" : std::string()) +
                    "; the adapter was saved from a diverged run",
                ErrorKind::kCorrupt);
  }
  std::string msg = file.path() + ": ";
  for (size_t i = 0; i < problems.size() && i < kShown; ++i) msg += (i ? "; " : "") + problems[i];
  if (problems.size() > kShown) {
    msg += " (" + std::to_string(problems.size()) + " problems in all)";
  }
  throw Error(msg, ErrorKind::kCorrupt);
}

}  // namespace loratune::lora
