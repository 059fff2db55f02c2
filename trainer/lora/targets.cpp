// trainer/lora/targets.cpp — which projections get a LoRA layer, matched as
// PEFT's check_target_module_exists (peft/tuners/tuners_utils.py) does.
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <regex>
#include <set>

#include "trainer/io/error.h"
#include "trainer/lora/lora.h"

namespace loratune::lora {
namespace {

// `path` equals `name` or ends with "." + name (PEFT's list matching).
bool ends_with_component(const std::string& path, const std::string& name) {
  if (path == name) return true;
  return path.size() > name.size() &&
         path.compare(path.size() - name.size(), name.size(), name) == 0 &&
         path[path.size() - name.size() - 1] == '.';
}

std::string last_component(const std::string& path) {
  size_t dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}

// What Python's re and std::regex's ECMAScript grammar read differently
// (check_regex), or "" when the pattern means the same to both as far as
// loratune can tell. Alternation, classes, quantifiers and groups agree;
// Python-only syntax such as (?P<name>...) does not compile here.
std::string python_difference(const std::string& p) {
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    const char next = i + 1 < p.size() ? p[i + 1] : '\0';
    if (c == '\\') {
      if (std::isalpha(static_cast<unsigned char>(next)) &&
          std::string("dDsSwWbBnrtfvxu").find(next) == std::string::npos) {
        return std::string("the escape \\") + next;
      }
      ++i;  // the escaped character is literal (or a class) to both
    } else if (in_class) {
      if (c == '[' && (next == ':' || next == '=' || next == '.')) {
        return std::string("the POSIX bracket expression [") + next;
      }
      if (c == ']') in_class = false;
    } else if (c == '[') {
      in_class = true;
      if (next == '^') ++i;
      if (i + 1 < p.size() && p[i + 1] == ']') ++i;  // a leading ']' is literal
    } else if (c == '{' && next == ',') {
      return "the quantifier {,n}";
    }
  }
  return "";
}

// Compiled once per pattern text, after check_regex.
const std::regex& compiled(const std::string& pattern, const std::string& what) {
  static thread_local std::map<std::string, std::regex> cache;
  auto it = cache.find(pattern);
  if (it != cache.end()) return it->second;
  check_regex(pattern, what);
  return cache.emplace(pattern, std::regex(pattern)).first->second;
}

bool full_match(const std::string& pattern, const std::string& path, const char* what) {
  return std::regex_match(path, compiled(pattern, what));
}

// The first layer index in `path`, as PEFT finds it for layers_to_transform:
// re.match(r".*?\.[^.]*\.(\d+)\.") without layers_pattern, else
// re.match(r"(?:^|.*?\.)<pattern>\.(\d+)\.") for the first pattern that
// matches. -1 when none does.
int64_t layer_index(const std::string& path, const std::vector<std::string>& patterns) {
  std::smatch m;
  auto search = [&](const std::string& re) {
    return std::regex_search(path, m, compiled(re, "layers_pattern"),
                             std::regex_constants::match_continuous);
  };
  bool found = false;
  if (patterns.empty()) {
    found = search(R"(.*?\.[^.]*\.(\d+)\.)");
  } else {
    for (const auto& p : patterns) {
      if ((found = search("(?:^|.*?\\.)" + p + "\\.(\\d+)\\."))) break;
    }
  }
  // The index is the last group: a pattern's own groups come before it.
  const auto& idx = m[m.size() - 1];
  if (!found || idx.length() > 9) return -1;
  return std::stoll(idx.str());
}

}  // namespace

void check_regex(const std::string& pattern, const std::string& what) {
  const std::string diff = python_difference(pattern);
  if (!diff.empty()) {
    throw Error(what + " '" + printable(pattern) + "': " + diff +
                    " means something else to Python's re, with which PEFT matches; write it "
                    "without",
                ErrorKind::kUnsupported);
  }
  try {
    std::regex re(pattern);
  } catch (const std::regex_error& e) {
    throw Error(
        what + " '" + printable(pattern) +
            "' is not a regular expression loratune can use (ECMAScript syntax): " + e.what(),
        ErrorKind::kUnsupported);
  }
}

bool regex_full_match(const std::string& pattern, const std::string& text, const char* what) {
  return full_match(pattern, text, what);
}

bool is_targeted(const LoraSpec& spec, const std::string& path) {
  if (!spec.exclude_regex.empty() && full_match(spec.exclude_regex, path, "exclude_modules")) {
    return false;
  }
  for (const auto& e : spec.exclude_modules) {
    if (ends_with_component(path, e)) return false;
  }
  if (!spec.target_regex.empty()) return full_match(spec.target_regex, path, "target_modules");
  const bool all_linear = spec.target_modules.size() == 1 && spec.target_modules[0] == "all-linear";
  // PEFT expands all-linear to the full paths of every linear layer but the
  // output head, and a full path bypasses layers_to_transform. (On a
  // multimodal Gemma 3 PEFT's all-linear also takes the vision tower's,
  // which loratune does not have; save_adapter writes such an adapter's
  // target_modules as the language model's paths.)
  if (all_linear) {
    return path.rfind("model.layers.", 0) == 0 ||
           path.rfind("model.language_model.layers.", 0) == 0 ||
           path.rfind("language_model.model.layers.", 0) == 0;  // transformers 4.50, 4.51
  }
  if (std::find(spec.target_modules.begin(), spec.target_modules.end(), path) !=
      spec.target_modules.end()) {
    return true;
  }
  bool found = false;
  for (const auto& t : spec.target_modules) found = found || ends_with_component(path, t);
  if (!found || spec.layers_to_transform.empty()) return found;
  const int64_t layer = layer_index(path, spec.layers_pattern);
  return std::find(spec.layers_to_transform.begin(), spec.layers_to_transform.end(), layer) !=
         spec.layers_to_transform.end();
}

std::vector<AdaptedModule> plan_lora(const LoraSpec& spec,
                                     const std::vector<model::LinearShape>& linears,
                                     const std::string& source, ErrorKind kind,
                                     bool every_name_must_match) {
  if (spec.target_modules.empty() && spec.target_regex.empty()) {
    throw Error(source + " is empty", kind);
  }
  std::vector<AdaptedModule> plan;
  for (const auto& lin : linears) {
    if (!is_targeted(spec, lin.path)) continue;
    auto [r, alpha] = rank_and_alpha(spec, lin.path);
    if (r < 1) {
      throw Error(source + ": the rank of " + lin.path + " would be " + std::to_string(r) +
                      " (r and rank_pattern values must be >= 1)",
                  kind);
    }
    plan.push_back({lin.path, lin.in_features, lin.out_features, r, alpha,
                    lora_scale(alpha, r, spec.use_rslora), spec.use_dora});
  }
  const bool all_linear = spec.target_modules.size() == 1 && spec.target_modules[0] == "all-linear";
  if (!all_linear) {
    // PEFT raises ("Target module Qwen2Attention(...) is not supported") when
    // a name or regex selects a module that holds projections rather than
    // being one: the projections' proper prefixes (model, model.layers,
    // model.layers.0, model.layers.0.self_attn, ...).
    std::set<std::string> containers;
    for (const auto& lin : linears) {
      for (size_t dot = lin.path.find('.'); dot != std::string::npos;
           dot = lin.path.find('.', dot + 1)) {
        containers.insert(lin.path.substr(0, dot));
      }
    }
    for (const auto& c : containers) {
      if (!is_targeted(spec, c)) continue;
      throw Error(source + " selects " + printable(c) +
                      ", which holds projections rather than being one (PEFT refuses it too); "
                      "name the projections, such as q_proj, or use all-linear",
                  kind);
    }
  }
  if (every_name_must_match && spec.target_regex.empty() && !all_linear) {
    std::vector<std::string> names;
    for (const auto& lin : linears) names.push_back(last_component(lin.path));
    for (const auto& t : spec.target_modules) {
      bool used = false;
      for (const auto& lin : linears) used = used || ends_with_component(lin.path, t);
      if (used) continue;
      std::string hint = closest_match(t, names);
      throw Error(source + ": '" + printable(t) + "' matches no projection of this model" +
                      (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                      "; use module names such as q_proj, or all-linear",
                  kind);
    }
  }
  if (plan.empty()) {
    std::string what =
        spec.target_regex.empty() ? "" : " (the regex '" + printable(spec.target_regex) + "')";
    throw Error(source + what + " matched no projection of this model", kind);
  }
  return plan;
}

std::vector<model::LinearShape> linear_shapes_of(model::CausalLMImpl& model) {
  std::vector<model::LinearShape> out;
  for (const auto& [path, linear] : model::linear_modules(model)) {
    out.push_back({model::peft_module_path(model.config(), path), linear->in_features(),
                   linear->out_features()});
  }
  return out;
}

std::vector<model::LinearShape> peft_linear_shapes(const model::ModelConfig& config) {
  std::vector<model::LinearShape> out = model::linear_shapes(config);
  for (auto& l : out) l.path = model::peft_module_path(config, l.path);
  return out;
}

void attach_lora(model::CausalLMImpl& model, const std::vector<AdaptedModule>& plan,
                 const LoraSpec& spec) {
  std::map<std::string, std::shared_ptr<model::LinearImpl>> by_path;
  for (auto& [path, linear] : model::linear_modules(model)) {
    by_path.emplace(model::peft_module_path(model.config(), path), linear);
  }
  std::vector<model::LinearImpl*> targets;
  for (const AdaptedModule& m : plan) {
    auto it = by_path.find(m.path);
    if (it == by_path.end()) {
      throw Error("attach_lora: " + m.path + " is not a projection of this model",
                  ErrorKind::kInternal);
    }
    model::LinearImpl& linear = *it->second;
    // Checked for every module before any weight is rewritten.
    if (rewrites_base(spec)) {
      const std::string how = "lora.init " + init_name(spec.init);
      if (linear.nf4() != nullptr) {
        throw Error(how + " rewrites the base weights, which an NF4 (QLoRA) base cannot " +
                        "hold exactly; use lora.init default or gaussian with model.quantize nf4",
                    ErrorKind::kConfig);
      }
      if (m.r > std::min(m.in_features, m.out_features)) {
        throw Error(how + ": rank " + std::to_string(m.r) + " of " + m.path +
                        " exceeds min(in, out) = " +
                        std::to_string(std::min(m.in_features, m.out_features)) + " (lower lora.r)",
                    ErrorKind::kConfig);
      }
    }
    targets.push_back(&linear);
  }
  for (size_t i = 0; i < plan.size(); ++i) {
    const AdaptedModule& m = plan[i];
    model::LinearImpl& linear = *targets[i];
    auto lora =
        std::make_shared<LoraLinearImpl>(linear.in_features(), linear.out_features(), m.r, m.alpha,
                                         spec.dropout, spec.use_rslora, linear.weight.device());
    if (spec.init == LoraInit::kGaussian) lora->reset_gaussian();
    if (rewrites_base(spec)) {
      at::NoGradGuard no_grad;
      // A fresh tensor replaces the weight's storage: the loaded weight may
      // be a read-only view of the checkpoint's mapping.
      linear.weight.set_data(lora->init_from_weight(linear.weight, spec.init)
                                 .to(linear.weight.scalar_type())
                                 .contiguous());
    }
    if (m.dora) lora->enable_dora(linear.dense_weight());
    linear.set_adapter(std::move(lora));
  }
}

}  // namespace loratune::lora
