// Reading a config: the YAML file, then the `a.b=value` overrides, then validate().
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/parser.h>

#include "trainer/config/config.h"
#include "trainer/config/detail.h"
#include "trainer/io/error.h"

namespace loratune::config {
namespace {

using detail::describe;
using detail::Origins;

// Where values come from: a file (errors carry its line numbers) or one
// override (errors quote it).
struct Source {
  std::string name;  // "configs/x.yaml" or "override 'lora.r=0'"
  bool has_lines;

  std::string where(const YAML::Mark& m) const {
    if (!has_lines || m.line < 0) return name;
    return name + ":" + std::to_string(m.line + 1);
  }
};

// Offset of the first byte that does not start a valid UTF-8 sequence
// (overlong forms, surrogates and code points past U+10FFFF included), or
// npos. YAML text is UTF-8; yaml-cpp would pass invalid bytes through on
// reading and write U+FFFD for them, so the resolved config would not load
// back as the same config.
size_t invalid_utf8_at(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    char32_t cp = 0, min = 0;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b >> 5) == 0x6) {
      n = 1, cp = b & 0x1F, min = 0x80;
    } else if ((b >> 4) == 0xE) {
      n = 2, cp = b & 0x0F, min = 0x800;
    } else if ((b >> 3) == 0x1E) {
      n = 3, cp = b & 0x07, min = 0x10000;
    } else {
      return i;
    }
    if (i + n >= s.size()) return i;  // truncated at the end
    for (size_t k = 1; k <= n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c >> 6) != 0x2) return i;
      cp = (cp << 6) | (c & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += n + 1;
  }
  return std::string::npos;
}

// Throws "<name>:<line>:<column>: invalid UTF-8 ..." for text that is not UTF-8.
void require_utf8(const std::string& text, const std::string& name, bool has_lines) {
  const size_t at = invalid_utf8_at(text);
  if (at == std::string::npos) return;
  std::string where = name;
  if (has_lines) {
    const size_t line = 1 + static_cast<size_t>(std::count(text.begin(), text.begin() + at, '\n'));
    const size_t nl = at == 0 ? std::string::npos : text.rfind('\n', at - 1);
    const size_t column = at - (nl == std::string::npos ? 0 : nl + 1) + 1;
    where += ":" + std::to_string(line) + ":" + std::to_string(column);
  }
  throw Error(where + ": invalid UTF-8 (byte " + std::to_string(at) + "); a config is UTF-8 text");
}

std::string join(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

std::string last_component(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}

// The schema as a tree: leaf keys, and the child names of every section.
struct Schema {
  std::map<std::string, const detail::Field*> leaves;
  std::map<std::string, std::vector<std::string>> children;  // "" is the root
  std::vector<std::string> all_paths;                        // leaves and sections

  bool is_section(const std::string& path) const {
    return !path.empty() && children.count(path) > 0;
  }
};

const Schema& schema() {
  static const Schema s = [] {
    Schema out;
    for (const auto& f : detail::fields()) {
      out.leaves[f.path] = &f;
      out.all_paths.push_back(f.path);
      std::string child = f.path;
      // Register each ancestor section with its child, once, in schema order.
      for (size_t dot = child.rfind('.');; dot = child.rfind('.')) {
        const std::string parent = dot == std::string::npos ? "" : child.substr(0, dot);
        auto& kids = out.children[parent];
        const std::string name = last_component(child);
        if (std::find(kids.begin(), kids.end(), name) != kids.end()) break;
        kids.push_back(name);
        if (parent.empty()) break;
        if (std::find(out.all_paths.begin(), out.all_paths.end(), parent) == out.all_paths.end()) {
          out.all_paths.push_back(parent);
        }
        child = parent;
      }
    }
    return out;
  }();
  return s;
}

// Names the same settings have in PEFT, the HF Trainer, axolotl and
// torchtune, so users coming from there get pointed at our key.
const std::map<std::string, std::string>& key_aliases() {
  static const std::map<std::string, std::string> m = {
      {"rank", "lora.r"},
      {"lora_r", "lora.r"},
      {"lora_rank", "lora.r"},
      {"lora_alpha", "lora.alpha"},
      {"lora_dropout", "lora.dropout"},
      {"lora_target_modules", "lora.target_modules"},
      {"lora_attn_modules", "lora.target_modules"},
      {"lora_target_linear", "lora.target_modules"},
      {"lora_model_dir", "lora.init_from"},
      {"base_model", "model.path"},
      {"model_name_or_path", "model.path"},
      {"torch_dtype", "model.dtype"},
      {"datasets", "data.train"},
      {"dataset", "data.train"},
      {"train_file", "data.train"},
      {"validation_file", "data.validation"},
      {"val_set_size", "data.val_fraction"},
      {"sequence_len", "data.max_seq_len"},
      {"max_seq_length", "data.max_seq_len"},
      {"seq_len", "data.max_seq_len"},
      {"sample_packing", "data.packing"},
      {"packed", "data.packing"},
      {"train_on_inputs", "data.train_on_prompt"},
      {"dataset_prepared_path", "data.cache_dir"},
      {"num_epochs", "train.epochs"},
      {"num_train_epochs", "train.epochs"},
      {"batch_size", "train.micro_batch_size"},
      {"per_device_train_batch_size", "train.micro_batch_size"},
      {"learning_rate", "train.optimizer.lr"},
      {"optim", "train.optimizer.name"},
      {"adam_beta1", "train.optimizer.betas"},
      {"adam_beta2", "train.optimizer.betas"},
      {"adam_epsilon", "train.optimizer.eps"},
      {"lr_scheduler", "train.scheduler.name"},
      {"lr_scheduler_type", "train.scheduler.name"},
      {"num_warmup_steps", "train.scheduler.warmup_steps"},
      {"clip_grad_norm", "train.max_grad_norm"},
      {"bf16", "train.mixed_precision"},
      {"fp16", "train.mixed_precision"},
      {"enable_activation_checkpointing", "train.gradient_checkpointing"},
      {"activation_checkpointing", "train.gradient_checkpointing"},
      {"eval_steps", "train.eval_every"},
      {"save_steps", "train.save_every"},
      {"save_total_limit", "train.keep_checkpoints"},
      {"logging_steps", "train.log_every"},
      {"log_every_n_steps", "train.log_every"},
      {"output_dir", "output.dir"},
      {"overwrite_output_dir", "output.overwrite"},
  };
  return m;
}

// The valid key path closest to `prefix.key`, or "".
std::string suggest_key(const std::string& prefix, const std::string& key) {
  const Schema& s = schema();
  const std::string full = join(prefix, key);
  // 1. a name another tool uses for one of our keys
  if (auto it = key_aliases().find(key); it != key_aliases().end()) return it->second;
  // 2. a typo among the keys of the same section
  if (auto it = s.children.find(prefix); it != s.children.end()) {
    const std::string m = closest_match(key, it->second);
    if (!m.empty()) return join(prefix, m);
  }
  // 3. the same name in another section ("train.lr" -> "train.optimizer.lr")
  std::vector<std::string> same;
  for (const auto& p : s.all_paths) {
    if (last_component(p) == key && p != full) same.push_back(p);
  }
  if (same.size() == 1) return same[0];
  // 4. the closest full path
  return closest_match(full, s.all_paths);
}

void apply_map(TrainConfig& cfg, const YAML::Node& map, const std::string& prefix,
               const Source& src, Origins& origins);

// A NUL byte in a value ("\0" in a double-quoted YAML string) would cut a
// path where the operating system reads it, so another file would be used.
// And an application tag ("!foo 3") means something to another program only;
// read as its plain value it would pass unnoticed.
void check_value_node(const YAML::Node& node, const std::string& where, const std::string& path) {
  const std::string& tag = node.Tag();
  if (!tag.empty() && tag != "?" && tag != "!" && tag.rfind("tag:yaml.org,2002:", 0) != 0) {
    throw Error(where + ": " + path + ": unknown YAML tag '" + printable(tag, 60) +
                "' (write the plain value)");
  }
  if (node.IsScalar() && node.Scalar().find('\0') != std::string::npos) {
    throw Error(where + ": " + path +
                ": the value contains a NUL byte (\\x00): " + printable(node.Scalar(), 120));
  }
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) check_value_node(node[i], where, path);
  } else if (node.IsMap()) {
    for (const auto& kv : node) check_value_node(kv.second, where, path);
  }
}

// Sets the key at `path` (a leaf or a whole section) from `node`.
void apply_value(TrainConfig& cfg, const std::string& path, const YAML::Node& node,
                 const std::string& where, const Source& src, Origins& origins) {
  const Schema& s = schema();
  if (auto it = s.leaves.find(path); it != s.leaves.end()) {
    check_value_node(node, where, path);
    it->second->read(cfg, node, {where, path});
    origins[path] = where;
    return;
  }
  if (s.is_section(path)) {
    if (!node.IsDefined() || node.IsNull()) return;  // an empty section keeps the defaults
    if (!node.IsMap()) {
      std::string keys;
      for (const auto& k : s.children.at(path)) keys += (keys.empty() ? "" : ", ") + k;
      throw Error(where + ": " + path + ": expected a map with keys " + keys + ", got " +
                  describe(node));
    }
    apply_map(cfg, node, path, src, origins);
    return;
  }
  const size_t dot = path.rfind('.');
  const std::string prefix = dot == std::string::npos ? "" : path.substr(0, dot);
  const std::string best = suggest_key(prefix, last_component(path));
  throw Error(where + ": unknown key '" + printable(path) + "'" +
              (best.empty() ? "" : " (did you mean '" + best + "'?)"));
}

void apply_map(TrainConfig& cfg, const YAML::Node& map, const std::string& prefix,
               const Source& src, Origins& origins) {
  std::map<std::string, int> seen;  // key -> its 1-based line (0 when unknown)
  for (const auto& kv : map) {
    const std::string where = src.where(kv.first.Mark());
    if (!kv.first.IsScalar()) {
      throw Error(where + ": expected a key name" + (prefix.empty() ? "" : " in " + prefix) +
                  ", got " + describe(kv.first));
    }
    const std::string path = join(prefix, kv.first.Scalar());
    // A dotted key would be a second spelling of a nested one, so `lora.r: 8`
    // next to `lora: {r: 16}` could not be caught as a duplicate.
    if (kv.first.Scalar().find('.') != std::string::npos) {
      throw Error(where + ": key '" + printable(kv.first.Scalar()) +
                  "' contains '.'; nest it in its section instead (dotted paths are for "
                  "command-line overrides)");
    }
    const auto [it, fresh] = seen.emplace(kv.first.Scalar(), kv.first.Mark().line + 1);
    if (!fresh) {
      const bool line_known = src.has_lines && it->second > 0;
      throw Error(where + ": duplicate key '" + printable(path) + "'" +
                  (line_known ? " (first set at line " + std::to_string(it->second) + ")" : ""));
    }
    apply_value(cfg, path, kv.second, where, src, origins);
  }
}

void apply_override(TrainConfig& cfg, const std::string& text, Origins& origins) {
  const Source src{"override '" + printable(text) + "'", false};
  const size_t eq = text.find('=');
  auto trim = [](std::string s) {
    const char* ws = " \t";
    s.erase(0, s.find_first_not_of(ws));
    s.erase(s.find_last_not_of(ws) + 1);
    return s;
  };
  const std::string key = eq == std::string::npos ? "" : trim(text.substr(0, eq));
  if (key.empty()) {
    throw Error(src.name + ": expected key=value, e.g. train.optimizer.lr=1e-4");
  }
  YAML::Node node;
  try {
    node = YAML::Load(text.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw Error(src.name + ": " + printable(key) + ": the value is not valid YAML: " + e.msg);
  }
  apply_value(cfg, key, node, src.name, src, origins);
}

// Parser events that are dropped: only the document count (and where the
// last document started) is wanted.
class IgnoreEvents : public YAML::EventHandler {
 public:
  YAML::Mark start;
  void OnDocumentStart(const YAML::Mark& mark) override { start = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// The number of documents in `text`, counting at most `cap`. Not
// YAML::LoadAll: yaml-cpp 0.7 (Debian 12) reports empty documents forever,
// without consuming anything, for a stray "," (jbeder/yaml-cpp#1040), so
// LoadAll never returns and fills memory. A document that starts where the
// previous one did is that case: a syntax error at that character.
size_t count_documents(const std::string& text, const std::string& name, size_t cap) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  IgnoreEvents events;
  size_t n = 0;
  int previous = -1;
  while (n < cap && parser.HandleNextDocument(events)) {
    if (events.start.pos == previous) {
      const size_t at = static_cast<size_t>(previous);
      throw Error(name + ":" + std::to_string(events.start.line + 1) + ":" +
                  std::to_string(events.start.column + 1) + ": YAML syntax error: unexpected '" +
                  printable(at < text.size() ? text.substr(at, 1) : "") + "'");
    }
    previous = events.start.pos;
    ++n;
  }
  return n;
}

// yaml-cpp 0.7 ends a double- or single-quoted scalar that the file never
// closes at the end of the file, without an error ("dir: \"/runs/x" is read as
// "/runs/x "). A key appended after the text shows it: a well-formed file
// keeps it as a top-level key, an open quote swallows it.
bool quote_left_open(const std::string& text) {
  static const char* kProbe = "loratune_end_of_file_probe";
  try {
    const YAML::Node again = YAML::Load(text + "\n" + kProbe + ": 0\n");
    return again.IsMap() && !again[kProbe].IsDefined();
  } catch (const YAML::Exception&) {
    return false;  // not this case (e.g. a "..." document end): nothing to add
  }
}

TrainConfig parse_document(const std::string& text, const std::string& name,
                           const std::vector<std::string>& overrides) {
  constexpr size_t kMaxCounted = 16;
  require_utf8(text, name, true);
  for (const auto& o : overrides) require_utf8(o, "override '" + printable(o) + "'", false);
  std::vector<YAML::Node> docs;
  size_t count = 0;
  try {
    count = count_documents(text, name, kMaxCounted);
    if (count > 0) docs.push_back(YAML::Load(text));  // the first document
  } catch (const YAML::Exception& e) {
    const std::string pos = e.mark.line < 0 ? ""
                                            : ":" + std::to_string(e.mark.line + 1) + ":" +
                                                  std::to_string(e.mark.column + 1);
    throw Error(name + pos + ": YAML syntax error: " + e.msg);
  }
  if (count == 1 && docs[0].IsMap() && quote_left_open(text)) {
    throw Error(name +
                ": YAML syntax error: a quoted value is not closed before the end of the "
                "file (a \" or ' without its closing quote)");
  }
  if (count > 1) {
    throw Error(name + ": expected one YAML document, found " +
                (count < kMaxCounted ? std::to_string(count)
                                     : "more than " + std::to_string(kMaxCounted - 1)));
  }
  TrainConfig cfg;
  Origins origins;
  const Source src{name, true};
  if (!docs.empty() && docs[0].IsDefined() && !docs[0].IsNull()) {
    if (!docs[0].IsMap()) {
      throw Error(src.where(docs[0].Mark()) +
                  ": expected a map of config keys (model, lora, data, train, output, ...), "
                  "got " +
                  describe(docs[0]));
    }
    apply_map(cfg, docs[0], "", src, origins);
  }
  for (const auto& o : overrides) apply_override(cfg, o, origins);
  detail::validate_with_origins(cfg, origins, name);
  return cfg;
}

}  // namespace

TrainConfig load_train_config(const std::string& yaml_path,
                              const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (std::filesystem::is_directory(yaml_path, ec)) {
    throw Error(yaml_path + ": is a directory, expected a YAML config file", ErrorKind::kIo);
  }
  std::ifstream in(yaml_path, std::ios::binary);
  if (!in) {
    throw Error(yaml_path + ": cannot open config file: " + std::strerror(errno), ErrorKind::kIo);
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    throw Error(yaml_path + ": cannot read config file: " + std::strerror(errno), ErrorKind::kIo);
  }
  return parse_document(text.str(), yaml_path, overrides);
}

TrainConfig config_from_yaml_string(const std::string& yaml,
                                    const std::vector<std::string>& overrides,
                                    const std::string& source_name) {
  return parse_document(yaml, source_name, overrides);
}

}  // namespace loratune::config
