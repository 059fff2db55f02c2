// load_tokenizer: picks tokenizer.json or tokenizer.model and reads
// tokenizer_config.json / generation_config.json.
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "trainer/tokenizer/loader.h"

namespace loratune::tokenizer {

namespace {

bool is_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The text of a template file, refused past the Jinja engine's source budget
// (jinja_budgets.h: 1 MiB) before it is read.
std::string read_template_file(const std::string& path) {
  constexpr uintmax_t kMaxBytes = uintmax_t{1} << 20;
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(path + ": cannot read: " + ec.message(), ErrorKind::kIo);
  if (size > kMaxBytes) {
    throw Error(path + ": chat template of " + std::to_string(size) +
                    " bytes exceeds the limit of " + std::to_string(kMaxBytes) + " bytes",
                ErrorKind::kResource);
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) throw Error(path + ": cannot read", ErrorKind::kIo);
  // transformers reads it as UTF-8 text and refuses other bytes.
  try {
    check_utf8(text.str(), path);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (a chat template must be UTF-8 text)",
                ErrorKind::kCorrupt);
  }
  return text.str();
}

// Templates saved as files next to tokenizer_config.json, as transformers
// (>= 4.50) saves and reads them: DIR/chat_template.jinja replaces whatever
// the config's "chat_template" holds (string or list) as the default
// template, and each DIR/additional_chat_templates/NAME.jinja adds (or
// replaces) the template NAME.
void read_template_files(const std::string& dir, TokenizerConfig& cfg) {
  auto set = [&](const std::string& name, std::string source) {
    auto it = std::find_if(cfg.chat_templates.begin(), cfg.chat_templates.end(),
                           [&](const ChatTemplate& t) { return t.name == name; });
    if (it != cfg.chat_templates.end()) {
      it->source = std::move(source);
    } else {
      cfg.chat_templates.push_back({name, std::move(source)});
    }
  };
  const std::string main_file = dir + "/chat_template.jinja";
  if (is_file(main_file)) cfg.chat_templates = {{"default", read_template_file(main_file)}};
  const std::filesystem::path extra = std::filesystem::path(dir) / "additional_chat_templates";
  std::error_code ec;
  if (!std::filesystem::is_directory(extra, ec)) return;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(extra, ec)) {
    if (e.path().extension() == ".jinja" && is_file(e.path().string())) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) set(f.stem().string(), read_template_file(f.string()));
}

std::optional<AddedToken> parse_named(const Json& v, const std::string& where) {
  if (v.is_null()) return std::nullopt;
  AddedToken t;
  t.special = true;
  if (v.is_string()) {
    t.content = v.get<std::string>();
    return t;
  }
  if (!v.is_object() || !v.contains("content") || !v["content"].is_string())
    throw Error(where + ": must be a string, null, or an object with a string 'content'",
                ErrorKind::kCorrupt);
  t.content = v["content"].get<std::string>();
  t.lstrip = json_bool(v, "lstrip", false, where);
  t.rstrip = json_bool(v, "rstrip", false, where);
  t.normalized = json_bool(v, "normalized", false, where);
  t.single_word = json_bool(v, "single_word", false, where);
  return t;
}

std::optional<bool> opt_bool(const Json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  return json_bool(j, key, false, where);
}

}  // namespace

TokenizerConfig read_tokenizer_config(const std::string& path) {
  TokenizerConfig cfg;
  cfg.path = path;
  Json j = read_json_file(path);
  if (!j.is_object()) throw Error(path + ": expected a JSON object", ErrorKind::kCorrupt);
  if (j.contains("tokenizer_class") && j["tokenizer_class"].is_string()) {
    cfg.tokenizer_class = j["tokenizer_class"].get<std::string>();
    const std::string fast = "Fast";
    if (cfg.tokenizer_class.size() > fast.size() &&
        cfg.tokenizer_class.compare(cfg.tokenizer_class.size() - fast.size(), fast.size(), fast) ==
            0 &&
        cfg.tokenizer_class != "PreTrainedTokenizerFast")
      cfg.tokenizer_class.resize(cfg.tokenizer_class.size() - fast.size());
  }
  for (const char* name : {"bos_token", "eos_token", "unk_token", "pad_token", "mask_token",
                           "sep_token", "cls_token"}) {
    if (!j.contains(name)) continue;
    cfg.named[name] = NamedToken{true, parse_named(j[name], path + ": '" + name + "'")};
  }
  cfg.add_bos_token = opt_bool(j, "add_bos_token", path);
  cfg.add_eos_token = opt_bool(j, "add_eos_token", path);
  cfg.add_prefix_space = opt_bool(j, "add_prefix_space", path);
  cfg.legacy = opt_bool(j, "legacy", path);
  for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const Json& v = j[key];
    if (!v.is_array() && !v.is_object())
      throw Error(path + ": '" + key + "' must be a list or an object", ErrorKind::kCorrupt);
    for (const Json& x : v) {
      auto t = parse_named(x, path + ": '" + key + "'");
      if (t) cfg.extra_special.push_back(*t);
    }
  }
  if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object()) {
    std::vector<AddedToken> list;
    for (auto it = j["added_tokens_decoder"].begin(); it != j["added_tokens_decoder"].end(); ++it) {
      std::string where = path + ": added_tokens_decoder['" + it.key() + "']";
      auto t = parse_named(it.value(), where);
      if (!t) throw Error(where + ": must not be null", ErrorKind::kCorrupt);
      t->special = json_bool(it.value(), "special", false, where);
      try {
        size_t used = 0;
        t->id = std::stoi(it.key(), &used);
        if (used != it.key().size()) throw std::invalid_argument("");
      } catch (const std::exception&) {
        throw Error(where + ": the key must be an integer id", ErrorKind::kCorrupt);
      }
      list.push_back(*t);
    }
    std::sort(list.begin(), list.end(),
              [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
    cfg.added_tokens_decoder = std::move(list);
  }
  if (j.contains("chat_template") && !j["chat_template"].is_null()) {
    const Json& ct = j["chat_template"];
    if (ct.is_string()) {
      cfg.chat_templates.push_back({"default", ct.get<std::string>()});
    } else if (ct.is_array()) {
      for (const Json& x : ct) {
        if (!x.is_object() || !x.contains("name") || !x["name"].is_string() ||
            !x.contains("template") || !x["template"].is_string())
          throw Error(
              path + ": 'chat_template' list items must be {\"name\": str, \"template\": str}",
              ErrorKind::kCorrupt);
        cfg.chat_templates.push_back(
            {x["name"].get<std::string>(), x["template"].get<std::string>()});
      }
    } else {
      throw Error(path + ": 'chat_template' must be a string or a list of {name, template}",
                  ErrorKind::kCorrupt);
    }
  }
  return cfg;
}

std::vector<int32_t> read_generation_eos(const std::string& path) {
  Json j = read_json_file(path);
  std::vector<int32_t> out;
  if (!j.is_object() || !j.contains("eos_token_id") || j["eos_token_id"].is_null()) return out;
  const Json& v = j["eos_token_id"];
  auto add = [&](const Json& x) {
    if (!x.is_number_integer())
      throw Error(path + ": 'eos_token_id' must be an integer or a list of integers",
                  ErrorKind::kCorrupt);
    // transformers keeps any int (a negative one never matches); refuse what
    // int32 cannot hold rather than truncate it to another token.
    if ((x.is_number_unsigned() &&
         x.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) ||
        (!x.is_number_unsigned() && x.get<int64_t>() < std::numeric_limits<int32_t>::min()))
      throw Error(path + ": 'eos_token_id' " + x.dump() + " is out of range for a token id",
                  ErrorKind::kCorrupt);
    int32_t id = x.get<int32_t>();
    if (std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
  };
  if (v.is_array()) {
    for (const Json& x : v) add(x);
  } else {
    add(v);
  }
  return out;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, const EncodeOptions& opt) const {
  std::vector<Token> toks = encode_with_offsets(text, opt);
  std::vector<int32_t> ids(toks.size());
  for (size_t i = 0; i < toks.size(); ++i) ids[i] = toks[i].id;
  return ids;
}

std::optional<std::string> Tokenizer::chat_template(const std::string& name) const {
  for (const auto& t : chat_templates_)
    if (t.name == name) return t.source;
  return std::nullopt;
}

std::string Tokenizer::missing_chat_template() const {
  if (chat_templates_.empty()) return "has no chat template";
  std::string names;
  for (const auto& t : chat_templates_) names += (names.empty() ? "'" : ", '") + t.name + "'";
  return "has chat templates " + names + " but none named 'default'";
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw Error(dir + ": not a directory", ErrorKind::kIo);
  const std::string json_path = dir + "/tokenizer.json", model_path = dir + "/tokenizer.model";
  const std::string config_path = dir + "/tokenizer_config.json",
                    gen_path = dir + "/generation_config.json";
  TokenizerConfig cfg;
  if (is_file(config_path)) cfg = read_tokenizer_config(config_path);
  read_template_files(dir, cfg);
  std::vector<int32_t> gen_eos;
  if (is_file(gen_path)) gen_eos = read_generation_eos(gen_path);
  if (is_file(json_path)) return load_hf_tokenizer(dir, json_path, cfg, gen_eos);
  if (is_file(model_path)) return load_sp_tokenizer(dir, model_path, cfg, gen_eos);
  throw Error(dir + ": no tokenizer.json or tokenizer.model in the model directory",
              ErrorKind::kIo);
}

}  // namespace loratune::tokenizer
