// What a resumed run may change: config_changes() diffs two resolved configs
// key by key; resume_neutral_keys() lists the keys that do not change what is
// computed.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <map>

#include "trainer/config/config.h"
#include "trainer/io/error.h"
#include "trainer/train/train.h"

namespace loratune::train {
namespace {

// Leaf values of a YAML tree by dotted key ("train.optimizer.lr"); sequences
// are kept whole in flow style ("[a, b]").
void flatten(const YAML::Node& node, const std::string& prefix,
             std::map<std::string, std::string>* out) {
  if (node.IsMap()) {
    for (const auto& kv : node) {
      const std::string key = kv.first.as<std::string>();
      flatten(kv.second, prefix.empty() ? key : prefix + "." + key, out);
    }
    return;
  }
  YAML::Emitter e;
  e.SetSeqFormat(YAML::Flow);
  e.SetMapFormat(YAML::Flow);
  e << node;
  (*out)[prefix] = e.c_str();
}

std::map<std::string, std::string> leaves(const std::string& yaml, const char* which) {
  std::map<std::string, std::string> out;
  try {
    flatten(YAML::Load(yaml), "", &out);
  } catch (const YAML::Exception& e) {
    throw Error(std::string(which) + " config.yaml cannot be read: " + e.what(),
                ErrorKind::kCorrupt);
  }
  return out;
}

}  // namespace

const std::vector<std::string>& resume_neutral_keys() {
  static const std::vector<std::string> keys = {"train.log_every",
                                                "train.dist_timeout_s",
                                                "train.grad_bucket_mb",
                                                "train.save_every",
                                                "train.keep_checkpoints",
                                                "train.eval_every",
                                                "train.max_bad_steps",
                                                "output.dir",
                                                "output.merge",
                                                "output.merge_dtype",
                                                "output.overwrite",
                                                "output.gguf.type",
                                                "output.gguf.adapter",
                                                "data.cache_dir",
                                                "device"};
  return keys;
}

std::vector<ConfigChange> config_changes(const std::string& before_yaml,
                                         const std::string& after_yaml) {
  const auto before = leaves(before_yaml, "the run's");
  const auto after = leaves(after_yaml, "the new");
  const auto& neutral = resume_neutral_keys();
  auto is_neutral = [&](const std::string& k) {
    return std::find(neutral.begin(), neutral.end(), k) != neutral.end();
  };
  // A key the run's config.yaml lacks was added to loratune after the run
  // started; at its default it keeps the behaviour the run had.
  static const auto defaults = leaves(config::to_yaml(config::TrainConfig{}), "the default");
  std::vector<ConfigChange> out;
  for (const auto& [key, value] : after) {
    if (is_neutral(key)) continue;
    auto it = before.find(key);
    if (it == before.end()) {
      auto d = defaults.find(key);
      if (d != defaults.end() && d->second == value) continue;
    }
    const std::string old = it == before.end() ? "(absent)" : it->second;
    if (old != value) out.push_back({key, old, value});
  }
  for (const auto& [key, value] : before) {
    if (!is_neutral(key) && !after.count(key)) out.push_back({key, value, "(absent)"});
  }
  return out;
}

}  // namespace loratune::train
