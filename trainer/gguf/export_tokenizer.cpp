// trainer/gguf/export_tokenizer.cpp — tokenizer.json (+ tokenizer_config.json,
// chat_template.jinja, config.json) -> the tokenizer.* keys of a GGUF, as
// llama.cpp's convert_hf_to_gguf.py writes them; the inverse of tokenizer.cpp
// and tokenizer_spm.cpp.
//
//   gpt2   (byte-level BPE) TextModel.get_vocab_base: ids 0..n_vocab-1, an
//          added token CONTROL when special (or it looks special: <|...|>),
//          else USER_DEFINED; other tokens NORMAL; ids without a token
//          "[PADn]" UNUSED. Merges as gguf-py's SpecialVocab joins them (a
//          space inside a part spelled U+0120). tokenizer.ggml.pre names the
//          pre-tokenizer: the Split regex of llama-bpe, qwen2, tekken or gpt-4o
//          (the names tokenizer.cpp maps back to the same regex), "gpt-2" for
//          a plain ByteLevel, "smollm" for Digits + ByteLevel.
//   llama  (a SentencePiece BPE vocabulary of the Llama-2 kind: byte_fallback
//          and a Sequence decoder, gguf-py's LlamaHfVocab test) tokens in id
//          order, BYTE for <0xNN>, UNKNOWN for the unk token (the model's
//          unk_token, else tokenizer_config.json's), CONTROL for
//          special added tokens, USER_DEFINED for other added tokens. Scores:
//          llama.cpp's SentencePiece tokenizer merges the adjacent pair whose
//          concatenation scores highest, so a normal token scores -(rank of
//          the first merge that makes it) and tokens no merge makes score
//          below every merge; transformers rebuilds the same merge order from
//          these scores (tokenizer_spm.cpp). (LlamaHfVocab writes -1000 for
//          every token, which loses the merge order.) add_space_prefix from
//          the Prepend normalizer or the Metaspace prepend_scheme.
//   both   special token ids, add_bos/add_eos/add_sep and the chat template
//          as gguf-py 0.19's SpecialVocab._load reads them (emulated below).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "trainer/gguf/export_detail.h"
#include "trainer/gguf/tokenizer_detail.h"
#include "trainer/io/file_util.h"

namespace fs = std::filesystem;

namespace loratune::gguf::detail {
namespace {

using nlohmann::json;

const char* kMetaspace = "\xe2\x96\x81";  // U+2581

// tokenizer.json's vocabulary: the model's, then the added tokens over it.
struct HfVocab {
  std::map<int64_t, std::string> text;  // id -> token text
  struct Added {
    std::string content;
    bool special = false;
  };
  std::map<int64_t, Added> added;  // id -> added token
  std::set<std::string> added_texts;
  std::vector<std::pair<std::string, int64_t>> added_list;  // file order
  int64_t model_size = 0;                                   // entries in model.vocab
};

// tokenizer.json value `j` of the expected kind, or kCorrupt naming `what`.
const json& need(const json& j, const char* key, bool (json::*is)() const, const std::string& path,
                 const char* what) {
  if (!j.is_object() || !j.contains(key) || !(j[key].*is)()) {
    throw Error(path + ": '" + key + "' is missing or not " + what, ErrorKind::kCorrupt);
  }
  return j[key];
}

HfVocab read_vocab(const json& tok, const std::string& path, int64_t n_vocab) {
  HfVocab v;
  const json& model = need(tok, "model", &json::is_object, path, "an object");
  const json& vocab = need(model, "vocab", &json::is_object, path, "an object");
  auto check_id = [&](const std::string& text, const json& id) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= n_vocab) {
      throw Error(path + ": token '" + printable(text) + "' has id " + id.dump() +
                      ", outside the model's " + std::to_string(n_vocab) +
                      " embedding rows (config.json vocab_size)",
                  ErrorKind::kCorrupt);
    }
    return id.get<int64_t>();
  };
  for (const auto& [text, id] : vocab.items()) v.text[check_id(text, id)] = text;
  v.model_size = static_cast<int64_t>(vocab.size());
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array()) {
    for (const json& a : tok["added_tokens"]) {
      if (!a.is_object() || !a.contains("content") || !a["content"].is_string() ||
          !a.contains("id")) {
        throw Error(path + ": an added_tokens entry lacks 'id' or 'content'", ErrorKind::kCorrupt);
      }
      const std::string content = a["content"];
      const int64_t id = check_id(content, a["id"]);
      const bool special = a.value("special", false);
      v.text[id] = content;
      v.added[id] = {content, special};
      v.added_texts.insert(content);
      v.added_list.emplace_back(content, id);
    }
  }
  return v;
}

// convert_hf_to_gguf's does_token_look_special.
bool looks_special(const std::string& t) {
  auto wraps = [&](const std::string& a, const std::string& b) {
    return t.size() >= a.size() + b.size() && t.compare(0, a.size(), a) == 0 &&
           t.compare(t.size() - b.size(), b.size(), b) == 0;
  };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || wraps("<|", "|>") ||
         wraps("<\xef\xbd\x9c", "\xef\xbd\x9c>") || wraps("<unused", ">");
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
  return s;
}

// The merges as "a b" strings (gguf-py's SpecialVocab spelling).
std::vector<std::string> merge_strings(const json& model, const std::string& path) {
  std::vector<std::string> out;
  if (!model.contains("merges") || !model["merges"].is_array()) return out;
  for (const json& m : model["merges"]) {
    if (m.is_string()) {
      out.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      // transformers >= 4.45 pairs: a space inside a part is written as U+0120
      out.push_back(replace_all(m[0], " ", "\xc4\xa0") + " " + replace_all(m[1], " ", "\xc4\xa0"));
    } else {
      throw Error(path + ": model.merges holds an entry that is neither \"a b\" nor [a, b]",
                  ErrorKind::kCorrupt);
    }
  }
  return out;
}

// The pre-tokenizer's list: a Sequence's members, or the one pre-tokenizer.
std::vector<json> pre_list(const json& pre) {
  if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers") &&
      pre["pretokenizers"].is_array()) {
    return pre["pretokenizers"].get<std::vector<json>>();
  }
  if (pre.is_null()) return {};
  return {pre};
}

// tokenizer.ggml.pre for a byte-level BPE pre-tokenizer (see the file comment).
std::string pre_name(const json& pre, const std::string& path) {
  const std::vector<json> list = pre_list(pre);
  auto is = [](const json& p, const char* type) {
    return p.is_object() && p.value("type", "") == type;
  };
  if (list.size() == 1 && is(list[0], "ByteLevel") && list[0].value("use_regex", true)) {
    return "gpt-2";
  }
  if (list.size() == 2 && is(list[0], "Digits") && list[0].value("individual_digits", false) &&
      is(list[1], "ByteLevel") && list[1].value("use_regex", true)) {
    return "smollm";
  }
  if (list.size() == 2 && is(list[0], "Split") && is(list[1], "ByteLevel") &&
      !list[1].value("use_regex", true) && list[0].value("behavior", "") == "Isolated" &&
      !list[0].value("invert", false) && list[0].contains("pattern") &&
      list[0]["pattern"].is_object() && list[0]["pattern"].contains("Regex") &&
      list[0]["pattern"]["Regex"].is_string()) {
    const std::string regex = list[0]["pattern"]["Regex"];
    for (const char* name : {"llama-bpe", "qwen2", "tekken", "gpt-4o"}) {
      const char* known = split_regex(name);
      if (known != nullptr && regex == known) return name;
    }
  }
  throw Error(path + ": pre_tokenizer " + printable(pre.dump(), 160) +
                  " has no llama.cpp pre-tokenizer name here (known: the Split regex of "
                  "llama-bpe, qwen2, tekken or gpt-4o + ByteLevel, a plain ByteLevel (gpt-2), "
                  "Digits + ByteLevel (smollm))",
              ErrorKind::kUnsupported);
}

// gguf-py's SpecialVocab: ids, add_* flags and the chat template.
struct Specials {
  std::vector<std::pair<std::string, int64_t>> ids;  // in dict insertion order
  std::vector<std::pair<std::string, bool>> add;
  json chat_template;  // null, a string or a list of {name, template}
  std::vector<std::string> types = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};

  void set_add(const std::string& typ, bool value) {
    for (auto& [k, v] : add) {
      if (k == typ) {
        v = value;
        return;
      }
    }
    add.emplace_back(typ, value);
  }
  void set_id(const std::string& typ, const json& tid, int64_t n_vocab, const std::string& src) {
    if (!tid.is_number_integer()) return;
    const int64_t id = tid.get<int64_t>();
    if (id < 0) {
      throw Error(src + ": " + typ + " token id " + std::to_string(id) + " is negative",
                  ErrorKind::kCorrupt);
    }
    if (id >= n_vocab) return;  // gguf-py skips it with a warning
    for (const auto& [k, v] : ids) {
      if (k == typ) return;  // the first source wins
    }
    ids.emplace_back(typ, id);
  }
};

// SpecialVocab._try_load_from_tokenizer_json's TemplateProcessing parsing.
void read_template_processing(const json& proc, json& cfg, bool have_cfg, json& bos, json& eos,
                              const json& cls, const json& sep, Specials& sp) {
  auto special_id = [](const json& item) -> json {
    if (item.is_object() && item.contains("SpecialToken") && item["SpecialToken"].is_object() &&
        item["SpecialToken"].contains("id")) {
      return item["SpecialToken"]["id"];
    }
    return nullptr;
  };
  auto truthy = [](const json& j) {
    return !(j.is_null() || (j.is_string() && j.get<std::string>().empty()));
  };
  const json single = proc.value("single", json::array());
  const json pair = proc.value("pair", json::array());
  json first = nullptr, last = nullptr;
  if (single.is_array() && single.size() > 1) {
    first = special_id(single.front());
    if (truthy(first)) {
      if (!have_cfg) bos = first;
      sp.set_add("bos", first == bos || first == cls);
    }
    last = special_id(single.back());
    if (truthy(last)) {
      if (!have_cfg) {
        eos = last;
      } else if (last != eos) {
        auto has = [&](const char* t) {
          return std::find(sp.types.begin(), sp.types.end(), t) != sp.types.end();
        };
        if (!has("eot")) {
          sp.types.push_back("eot");
          cfg["eot_token"] = eos;
        } else if (!has("eom")) {
          sp.types.push_back("eom");
          cfg["eom_token"] = eos;
        }
        cfg["eos_token"] = eos = last;
      }
      sp.set_add("eos", last == eos);
    }
  }
  if (!pair.is_array() || pair.empty()) return;
  size_t begin = truthy(first) && special_id(pair.front()) == first ? 1 : 0;
  size_t end = truthy(last) && special_id(pair.back()) == last ? pair.size() - 1 : pair.size();
  if (begin >= end) return;
  std::vector<json> mid(pair.begin() + static_cast<long>(begin),
                        pair.begin() + static_cast<long>(end));
  auto seq = [](const json& item) -> json {
    if (item.is_object() && item.contains("Sequence") && item["Sequence"].is_object())
      return item["Sequence"].value("id", json(nullptr));
    return nullptr;
  };
  if (seq(mid.front()) != "A" || seq(mid.back()) != "B" || mid.size() <= 2) return;
  mid = std::vector<json>(mid.begin() + 1, mid.end() - 1);  // A [sep] [eos] B
  bool add_sep = false;
  const json e0 = special_id(mid[0]);
  if (truthy(e0) && (e0 == sep || e0 == eos) && !truthy(last)) add_sep = true;
  if (mid.size() == 2) {
    const json e1 = special_id(mid[1]);
    if (truthy(e1) && (e1 == sep || e1 == eos)) add_sep = true;
  }
  sp.set_add("sep", add_sep);
  if (add_sep && !truthy(sep) && have_cfg) cfg["sep_token"] = eos;
}

Specials read_specials(const std::string& dir, const json& tok, const HfVocab& v, int64_t n_vocab) {
  Specials sp;
  const fs::path d(dir);
  json cfg = json::object();
  const fs::path cfg_path = d / "tokenizer_config.json";
  if (fs::is_regular_file(cfg_path)) cfg = io::read_json(cfg_path.string());
  const bool have_cfg = cfg.is_object() && !cfg.empty();
  if (!cfg.is_object()) cfg = json::object();
  json bos = cfg.value("bos_token", json(nullptr)), cls = cfg.value("cls_token", json(nullptr));
  json eos = cfg.value("eos_token", json(nullptr)), sep = cfg.value("sep_token", json(nullptr));
  auto truthy = [](const json& j) {
    return !(j.is_null() || (j.is_string() && j.get<std::string>().empty()));
  };
  if (!truthy(bos) && truthy(cls) && have_cfg) cfg["bos_token"] = bos = cls;
  if (!truthy(eos) && truthy(sep) && have_cfg) cfg["eos_token"] = eos = sep;
  if (tok.contains("post_processor") && tok["post_processor"].is_object()) {
    const json& pp = tok["post_processor"];
    const json procs = pp.contains("processors") ? pp["processors"] : json::array({pp});
    for (const json& p : procs) {
      if (p.is_object() && p.value("type", "") == "TemplateProcessing") {
        read_template_processing(p, cfg, have_cfg, bos, eos, cls, sep, sp);
      }
    }
  }
  if (have_cfg) {
    json alt = nullptr;
    if (fs::is_regular_file(d / "chat_template.jinja")) {
      alt = io::read_file((d / "chat_template.jinja").string());
    } else if (fs::is_regular_file(d / "chat_template.json")) {
      alt =
          io::read_json((d / "chat_template.json").string()).value("chat_template", json(nullptr));
    }
    sp.chat_template = cfg.contains("chat_template") ? cfg["chat_template"] : alt;
    if (!sp.chat_template.is_null() && !sp.chat_template.is_string() &&
        !sp.chat_template.is_array()) {
      sp.chat_template = nullptr;  // gguf-py ignores it with a warning
    }
    for (const std::string& typ : sp.types) {
      const json add = cfg.value("add_" + typ + "_token", json(nullptr));
      if (add.is_boolean()) sp.set_add(typ, add.get<bool>());
      const json entry = cfg.value(typ + "_token", json(nullptr));
      std::string content;
      if (entry.is_string()) {
        content = entry;
      } else if (entry.is_object() && entry.contains("content") && entry["content"].is_string()) {
        content = entry["content"];
      } else {
        continue;
      }
      for (const auto& [text, id] : v.added_list) {
        if (text == content) {
          sp.set_id(typ, id, n_vocab, cfg_path.string());
          break;
        }
      }
    }
  }
  const fs::path config_path = d / "config.json";
  if (fs::is_regular_file(config_path)) {
    const json config = io::read_json(config_path.string());
    for (const std::string& typ : sp.types) {
      json id = config.value(typ + "_token_id", json(nullptr));
      if (id.is_null() && config.contains("text_config") && config["text_config"].is_object()) {
        id = config["text_config"].value(typ + "_token_id", json(nullptr));
      }
      sp.set_id(typ, id, n_vocab, config_path.string());
    }
  }
  return sp;
}

void add_specials(Metadata& md, const Specials& sp) {
  static const std::map<std::string, std::string> kIdKeys = {
      {"bos", "bos_token_id"},       {"eos", "eos_token_id"},     {"unk", "unknown_token_id"},
      {"sep", "seperator_token_id"}, {"pad", "padding_token_id"}, {"mask", "mask_token_id"},
      {"eot", "eot_token_id"},       {"eom", "eom_token_id"}};  // gguf-py has no cls key
  for (const auto& [typ, id] : sp.ids) {
    auto it = kIdKeys.find(typ);
    if (it != kIdKeys.end()) {
      md.emplace_back("tokenizer.ggml." + it->second, u32_value(static_cast<uint32_t>(id)));
    }
  }
  for (const auto& [typ, value] : sp.add) {
    if (typ == "bos" || typ == "eos" || typ == "sep") {
      md.emplace_back("tokenizer.ggml.add_" + typ + "_token", bool_value(value));
    }
  }
  if (sp.chat_template.is_string()) {
    md.emplace_back("tokenizer.chat_template", string_value(sp.chat_template.get<std::string>()));
  } else if (sp.chat_template.is_array()) {  // gguf-py's add_chat_template for named templates
    std::string fallback;
    std::set<std::string> names;
    for (const json& choice : sp.chat_template) {
      if (!choice.is_object() || !choice.contains("template") || !choice["template"].is_string())
        continue;
      std::string name = choice.value("name", "");
      for (char& c : name) {
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      if (name.empty()) continue;
      if (name == "default") {
        fallback = choice["template"];
      } else if (names.insert(name).second) {
        md.emplace_back("tokenizer.chat_template." + name, string_value(choice["template"]));
      }
    }
    if (!names.empty()) {
      md.emplace_back("tokenizer.chat_templates",
                      string_array(std::vector<std::string>(names.begin(), names.end())));
    }
    if (!fallback.empty()) md.emplace_back("tokenizer.chat_template", string_value(fallback));
  }
}

// The gpt2 (byte-level BPE) vocabulary.
void gpt2_vocab(Metadata& md, const json& tok, const HfVocab& v, int64_t n_vocab,
                const std::string& path) {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int64_t i = 0; i < n_vocab; ++i) {
    auto it = v.text.find(i);
    if (it == v.text.end()) {
      tokens.push_back("[PAD" + std::to_string(i) + "]");
      types.push_back(kUnused);
      continue;
    }
    std::string t = it->second;
    if (v.added_texts.count(t)) {
      auto a = v.added.find(i);
      if ((a != v.added.end() && a->second.special) || looks_special(t)) {
        types.push_back(kControl);
      } else {
        t = replace_all(t, kMetaspace, " ");  // pre-normalized user-defined spaces
        types.push_back(kUserDefined);
      }
    } else {
      types.push_back(kNormal);
    }
    tokens.push_back(std::move(t));
  }
  md.emplace_back("tokenizer.ggml.model", string_value("gpt2"));
  md.emplace_back("tokenizer.ggml.pre", string_value(pre_name(tok["pre_tokenizer"], path)));
  md.emplace_back("tokenizer.ggml.tokens", string_array(tokens));
  md.emplace_back("tokenizer.ggml.token_type", i32_array(types));
  const std::vector<std::string> merges = merge_strings(tok["model"], path);
  if (merges.empty()) {
    throw Error(path + ": a byte-level BPE tokenizer without model.merges", ErrorKind::kCorrupt);
  }
  md.emplace_back("tokenizer.ggml.merges", string_array(merges));
}

bool has_space_prefix(const json& tok) {
  const json& norm = tok.contains("normalizer") ? tok["normalizer"] : json(nullptr);
  std::vector<json> norms;
  if (norm.is_object() && norm.value("type", "") == "Sequence" && norm.contains("normalizers")) {
    norms = norm["normalizers"].get<std::vector<json>>();
  } else if (norm.is_object()) {
    norms = {norm};
  }
  for (const json& n : norms) {
    if (n.is_object() && n.value("type", "") == "Prepend" && n.value("prepend", "") == kMetaspace)
      return true;
  }
  for (const json& p : pre_list(tok.contains("pre_tokenizer") ? tok["pre_tokenizer"] : json())) {
    if (!p.is_object() || p.value("type", "") != "Metaspace") continue;
    if (p.contains("prepend_scheme")) return p.value("prepend_scheme", "") != "never";
    return p.value("add_prefix_space", true);
  }
  return false;
}

// The llama (SentencePiece BPE) vocabulary.
// The unknown token's text: the BPE model's unk_token, else tokenizer_config.json's.
std::string unk_text(const json& model, const std::string& model_dir) {
  if (model.contains("unk_token") && model["unk_token"].is_string()) return model["unk_token"];
  const fs::path cfg_path = fs::path(model_dir) / "tokenizer_config.json";
  if (!fs::is_regular_file(cfg_path)) return "";
  const json cfg = io::read_json(cfg_path.string());
  const json unk = cfg.is_object() ? cfg.value("unk_token", json(nullptr)) : json(nullptr);
  if (unk.is_string()) return unk;
  if (unk.is_object() && unk.contains("content") && unk["content"].is_string()) {
    return unk["content"];
  }
  return "";
}

void spm_vocab(Metadata& md, const json& tok, const HfVocab& v, int64_t n_vocab,
               const std::string& path, const std::string& model_dir) {
  const json& model = tok["model"];
  const std::string unk = unk_text(model, model_dir);
  std::map<std::string, int64_t> rank;  // token text -> first merge that makes it
  const std::vector<std::string> merges = merge_strings(model, path);
  for (size_t k = 0; k < merges.size(); ++k) {
    const size_t sp = merges[k].find(' ');
    if (sp == std::string::npos) continue;
    rank.emplace(merges[k].substr(0, sp) + merges[k].substr(sp + 1), static_cast<int64_t>(k));
  }
  const auto n_merges = static_cast<int64_t>(merges.size());
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (int64_t i = 0; i < n_vocab; ++i) {
    auto it = v.text.find(i);
    if (it == v.text.end()) {
      tokens.push_back("[PAD" + std::to_string(i) + "]");
      scores.push_back(-1000.0f);
      types.push_back(kUnused);
      continue;
    }
    const std::string& t = it->second;
    auto added = v.added.find(i);
    int32_t type = kNormal;
    if (!unk.empty() && t == unk) {
      type = kUnknown;
    } else if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
               std::isxdigit(static_cast<unsigned char>(t[3])) &&
               std::isxdigit(static_cast<unsigned char>(t[4]))) {
      type = kByte;
    } else if (added != v.added.end()) {
      type = added->second.special ? kControl : kUserDefined;
    }
    float score = 0.0f;
    if (type == kNormal) {
      auto r = rank.find(t);
      score = -static_cast<float>(r != rank.end() ? r->second : n_merges + i);
    }
    tokens.push_back(t);
    scores.push_back(score);
    types.push_back(type);
  }
  md.emplace_back("tokenizer.ggml.model", string_value("llama"));
  md.emplace_back("tokenizer.ggml.pre", string_value("default"));
  md.emplace_back("tokenizer.ggml.tokens", string_array(tokens));
  md.emplace_back("tokenizer.ggml.scores", f32_array(scores));
  md.emplace_back("tokenizer.ggml.token_type", i32_array(types));
  md.emplace_back("tokenizer.ggml.add_space_prefix", bool_value(has_space_prefix(tok)));
}

}  // namespace

Metadata tokenizer_metadata(const std::string& model_dir, int64_t n_vocab) {
  const fs::path path = fs::path(model_dir) / "tokenizer.json";
  if (!fs::is_regular_file(path)) {
    const bool spm = fs::is_regular_file(fs::path(model_dir) / "tokenizer.model");
    throw Error(path.string() + ": no such file; export-gguf reads the vocabulary from " +
                    "tokenizer.json" +
                    (spm ? " (this model has only tokenizer.model: save it with transformers' "
                           "tokenizer.save_pretrained to get tokenizer.json)"
                         : ""),
                spm ? ErrorKind::kUnsupported : ErrorKind::kIo);
  }
  const std::string p = path.string();
  const json tok = io::read_json(p);
  const json& model = need(tok, "model", &json::is_object, p, "an object");
  if (model.value("type", "") != "BPE") {
    throw Error(p + ": model type '" + printable(model.value("type", std::string("?"))) +
                    "' is not supported by export-gguf (supported: BPE, byte-level or "
                    "SentencePiece-style)",
                ErrorKind::kUnsupported);
  }
  const HfVocab v = read_vocab(tok, p, n_vocab);
  const bool byte_fallback = model.value("byte_fallback", false);
  const bool sequence_decoder = tok.contains("decoder") && tok["decoder"].is_object() &&
                                tok["decoder"].value("type", "") == "Sequence";
  Metadata md;
  if (byte_fallback && sequence_decoder) {
    spm_vocab(md, tok, v, n_vocab, p, model_dir);
  } else {
    gpt2_vocab(md, tok, v, n_vocab, p);
  }
  add_specials(md, read_specials(model_dir, tok, v, n_vocab));
  return md;
}

}  // namespace loratune::gguf::detail
