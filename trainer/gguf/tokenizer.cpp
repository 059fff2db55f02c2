// trainer/gguf/tokenizer.cpp — tokenizer.json / tokenizer_config.json from a
// GGUF's tokenizer.* metadata, built as transformers 5.24's
// convert_gguf_tokenizer builds them (integrations/gguf/gguf_tokenizer_mapping.py).
// This file reads the keys every tokenizer model shares (tokens, token_type,
// special token ids, add_bos/add_eos, the chat template), writes the post-
// processor and tokenizer_config.json, and builds the gpt2 model:
//   gpt2: byte-level BPE; a token with a character outside the byte alphabet
//   is respelled from its UTF-8 bytes; merges "a b" -> ["a", "b"]; tokens of
//   type 3 (control) spelled in the byte alphabet become special added tokens,
//   type 4 (user-defined) plain added tokens; the pre-tokenizer is ByteLevel
//   with GPT-2's regex unless tokenizer.ggml.pre names a known split regex
//   (then Split(regex, isolated) + ByteLevel(use_regex false)).
// llama (SentencePiece) is built in tokenizer_spm.cpp. Other
// tokenizer.ggml.model values are refused with kUnsupported.
#include <map>
#include <set>
#include <string_view>
#include <unordered_set>

#include "trainer/gguf/gguf.h"
#include "trainer/gguf/tokenizer_detail.h"

namespace loratune::gguf {
namespace detail {

Json added_token(int64_t id, const std::string& content, bool special) {
  return Json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
              {"rstrip", false}, {"normalized", false}, {"special", special}};
}

bool code_points(const std::string& s, std::vector<uint32_t>* out) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (int k = 1; k < n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 2) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    static const uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};  // shortest form per length
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    out->push_back(cp);
    i += n;
  }
  return true;
}

}  // namespace detail

namespace {

using detail::added_token;
using detail::GgufVocab;
using detail::Json;
using detail::TokenizerParts;

const char* kLlama3Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kQwen2Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kQwen35Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kGpt4oSplit =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kTekkenSplit =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

}  // namespace

namespace detail {

const char* split_regex(const std::string& pre) {
  static const std::map<std::string, const char*> kSplits = {
      {"llama3", kLlama3Split},       {"llama-v3", kLlama3Split},
      {"llama-bpe", kLlama3Split},    {"falcon3", kLlama3Split},
      {"falcon-h1", kLlama3Split},    {"pixtral", kLlama3Split},
      {"midm-2.0", kLlama3Split},     {"lfm2", kLlama3Split},
      {"jina-v5-nano", kLlama3Split}, {"dbrx", kLlama3Split},
      {"smaug-bpe", kLlama3Split},    {"tekken", kTekkenSplit},
      {"qwen2", kQwen2Split},         {"deepseek-r1-qwen", kQwen2Split},
      {"kormo", kQwen2Split},         {"f2llmv2", kQwen2Split},
      {"megrez", kQwen2Split},        {"qwen35", kQwen35Split},
      {"gpt-4o", kGpt4oSplit},        {"llama4", kGpt4oSplit},
      {"kanana2", kGpt4oSplit},       {"talkie", kGpt4oSplit},
      {"minimax-m2", kGpt4oSplit},
  };
  auto it = kSplits.find(pre);
  return it == kSplits.end() ? nullptr : it->second;
}

}  // namespace detail

namespace {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's bytes_to_unicode: byte -> the code point that spells it.
std::vector<uint32_t> byte_alphabet() {
  std::vector<uint32_t> map(256, 0);
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    map[b] = printable ? b : next++;
  }
  return map;
}

Json byte_level(bool add_prefix_space, bool use_regex) {
  return Json{{"type", "ByteLevel"},
              {"add_prefix_space", add_prefix_space},
              {"trim_offsets", true},
              {"use_regex", use_regex}};
}

std::string dump(const Json& j, const std::string& path, const char* what) {
  try {
    return j.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {  // invalid UTF-8 in a token or template
    throw Error(path + ": " + what + " holds text that is not valid UTF-8", ErrorKind::kCorrupt);
  }
}

// transformers' byte_level_tokenizer + add_gguf_special_tokens + set_split_regex.
TokenizerParts gpt2_parts(const GgufFile& f, const GgufVocab& v) {
  const auto& merges = f.get_array("tokenizer.ggml.merges", ValueType::kString);
  const std::vector<uint32_t> alphabet = byte_alphabet();
  const std::set<uint32_t> spelled(alphabet.begin(), alphabet.end());
  TokenizerParts p;
  detail::VocabBuilder vocab;
  std::vector<bool> in_alphabet(static_cast<size_t>(v.size()));
  for (int64_t id = 0; id < v.size(); ++id) {
    const std::string& t = v.token(id);
    std::vector<uint32_t> cps;
    bool ok = detail::code_points(t, &cps);
    for (uint32_t cp : cps) ok = ok && spelled.count(cp) != 0;
    in_alphabet[id] = ok;
    std::string s;
    if (ok) {
      s = t;
    } else {
      for (unsigned char b : t) append_utf8(s, alphabet[b]);
    }
    vocab.set(s, id);  // a respelling that collides: the later id wins, as in a Python dict
  }
  Json merge_list = Json::array();
  for (size_t k = 0; k < merges.size(); ++k) {
    const std::string& m = merges[k].s;
    const size_t sp = m.find(' ');
    if (sp == std::string::npos || m.find(' ', sp + 1) != std::string::npos) {
      throw Error(f.path() + ": tokenizer.ggml.merges[" + std::to_string(k) + "] '" + printable(m) +
                      "' is not two tokens separated by one space",
                  ErrorKind::kCorrupt);
    }
    merge_list.push_back(Json::array({m.substr(0, sp), m.substr(sp + 1)}));
  }
  for (int64_t id = 0; id < v.size(); ++id) {
    if (v.types[id] == detail::kControl && in_alphabet[id])
      p.added[id] = added_token(id, v.token(id), true);
    if (v.types[id] == detail::kUserDefined && vocab.contains(v.token(id)))
      p.added[id] = added_token(id, v.token(id), false);
  }
  const std::string pre_name =
      f.find("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : std::string();
  if (const char* split = detail::split_regex(pre_name)) {
    p.pre_tokenizer = Json{{"type", "Sequence"},
                           {"pretokenizers", Json::array({Json{{"type", "Split"},
                                                               {"pattern", Json{{"Regex", split}}},
                                                               {"behavior", "Isolated"},
                                                               {"invert", false}},
                                                          byte_level(false, false)})}};
  } else {
    p.pre_tokenizer = byte_level(false, true);
  }
  p.decoder = byte_level(true, true);
  p.model = Json{{"type", "BPE"},
                 {"dropout", nullptr},
                 {"unk_token", nullptr},
                 {"continuing_subword_prefix", ""},
                 {"end_of_word_suffix", ""},
                 {"fuse_unk", false},
                 {"byte_fallback", false},
                 {"ignore_merges", false},
                 {"vocab", vocab.take()},
                 {"merges", std::move(merge_list)}};
  return p;
}

// An optional special-token id key, checked against the vocabulary; -1 when absent.
int64_t id_key(const GgufFile& f, const char* key, int64_t n) {
  if (f.find(key) == nullptr) return -1;
  const int64_t v = f.get_int(key);
  if (v < 0 || v >= n) {
    throw Error(f.path() + ": metadata key '" + key + "' is " + std::to_string(v) +
                    ", outside the " + std::to_string(n) + " tokens",
                ErrorKind::kCorrupt);
  }
  return v;
}

GgufVocab read_vocab(const GgufFile& f, const std::string& model) {
  GgufVocab v;
  v.model = model;
  v.tokens = &f.get_array("tokenizer.ggml.tokens", ValueType::kString);
  const int64_t n = v.size();
  if (n == 0) {
    throw Error(f.path() + ": tokenizer.ggml.tokens is empty", ErrorKind::kCorrupt);
  }
  // Every token must be text a tokenizer.json can hold and loratune's and
  // transformers' loaders accept: non-empty UTF-8 without NUL.
  for (int64_t id = 0; id < n; ++id) {
    const std::string& t = v.token(id);
    const std::string at = f.path() + ": tokenizer.ggml.tokens[" + std::to_string(id) + "] ";
    std::vector<uint32_t> cps;
    if (t.empty()) throw Error(at + "is empty", ErrorKind::kCorrupt);
    if (!detail::code_points(t, &cps))
      throw Error(at + "'" + printable(t) + "' is not valid UTF-8", ErrorKind::kCorrupt);
    if (t.find('\0') != std::string::npos)
      throw Error(at + "'" + printable(t) + "' holds a NUL byte", ErrorKind::kCorrupt);
  }
  v.types.assign(static_cast<size_t>(n), detail::kNormal);
  if (f.find("tokenizer.ggml.token_type")) {
    const auto& tt = f.get_array("tokenizer.ggml.token_type", ValueType::kInt32);
    if (static_cast<int64_t>(tt.size()) != n) {
      throw Error(f.path() + ": tokenizer.ggml.token_type has " + std::to_string(tt.size()) +
                      " entries for " + std::to_string(n) + " tokens",
                  ErrorKind::kCorrupt);
    }
    for (size_t k = 0; k < tt.size(); ++k) v.types[k] = tt[k].i;
  }
  v.bos = id_key(f, "tokenizer.ggml.bos_token_id", n);
  v.eos = id_key(f, "tokenizer.ggml.eos_token_id", n);
  v.unk = id_key(f, "tokenizer.ggml.unknown_token_id", n);
  v.pad = id_key(f, "tokenizer.ggml.padding_token_id", n);
  // transformers (like llama.cpp) adds BOS to a SentencePiece vocabulary that
  // does not say otherwise.
  v.add_bos = f.find("tokenizer.ggml.add_bos_token") ? f.get_bool("tokenizer.ggml.add_bos_token")
                                                     : model == "llama";
  v.add_eos = f.find("tokenizer.ggml.add_eos_token") && f.get_bool("tokenizer.ggml.add_eos_token");
  return v;
}

// The BPE model's merges against its vocabulary, as tokenizers' BPE builder
// checks them when it loads the tokenizer.json (MergeTokenOutOfVocabulary):
// both parts and their concatenation must be tokens. A file whose merges
// name tokens it does not have (or a vocabulary of repeated texts) is
// refused here rather than written as a directory no loader accepts.
void check_merges(const GgufFile& f, const Json& model) {
  // ordered_json looks keys up linearly: index the vocabulary once.
  std::unordered_set<std::string_view> vocab;
  for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it)
    vocab.insert(it.key());
  const Json& merges = model.at("merges");
  const bool from_file = f.find("tokenizer.ggml.merges") != nullptr;
  for (size_t k = 0; k < merges.size(); ++k) {
    const std::string& a = merges[k][0].get_ref<const std::string&>();
    const std::string& b = merges[k][1].get_ref<const std::string&>();
    for (const std::string& t : {a, b, a + b}) {
      if (vocab.count(t) != 0) continue;
      throw Error(f.path() + ": " +
                      (from_file ? "tokenizer.ggml.merges[" + std::to_string(k) + "] '" +
                                       printable(a + " " + b) + "'"
                                 : std::string("merge '") + printable(a + " " + b) +
                                       "' derived from tokenizer.ggml.scores") +
                      ": '" + printable(t) + "' is not in tokenizer.ggml.tokens",
                  ErrorKind::kCorrupt);
    }
  }
}

}  // namespace

HfTokenizer map_tokenizer(const GgufFile& f) {
  HfTokenizer out;
  if (f.find("tokenizer.ggml.model") == nullptr) return out;
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "gpt2" && model != "llama") {
    throw Error(f.path() + ": tokenizer.ggml.model '" + printable(model) +
                    "' is not supported by import (supported: gpt2, llama)",
                ErrorKind::kUnsupported);
  }
  const GgufVocab v = read_vocab(f, model);
  TokenizerParts parts = model == "gpt2" ? gpt2_parts(f, v) : detail::spm_parts(f, v);
  check_merges(f, parts.model);
  auto id_of = [&](int64_t id) {  // the id the vocabulary gives token `id`'s text
    auto it = parts.text_ids.find(v.token(id));
    return it == parts.text_ids.end() ? id : it->second;
  };
  // llama: the named special tokens are special added tokens (transformers'
  // TokenizersBackend adds them last, so they win over an earlier entry for the
  // same id). gpt2 leaves them to tokenizer_config.json, from which loratune's
  // and transformers' loaders add them.
  for (int64_t id : {v.bos, v.eos, v.unk, v.pad}) {
    if (id >= 0 && model == "llama")
      parts.added[id_of(id)] = added_token(id_of(id), v.token(id), true);
  }
  Json added = Json::array();
  for (auto& [id, t] : parts.added) added.push_back(std::move(t));

  // transformers' update_post_processor: BOS/EOS around each sequence when the
  // file asks for them and names the token.
  Json single = Json::array(), pair = Json::array(), specials = Json::object();
  auto special = [&](int64_t id, int type_id) {
    const std::string& text = v.token(id);
    specials[text] = Json{{"id", text}, {"ids", {id_of(id)}}, {"tokens", {text}}};
    return Json{{"SpecialToken", Json{{"id", text}, {"type_id", type_id}}}};
  };
  const bool bos = v.add_bos && v.bos >= 0, eos = v.add_eos && v.eos >= 0;
  if (bos) single.push_back(special(v.bos, 0));
  single.push_back(Json{{"Sequence", Json{{"id", "A"}, {"type_id", 0}}}});
  if (eos) single.push_back(special(v.eos, 0));
  pair = single;
  if (bos) pair.push_back(special(v.bos, 1));
  pair.push_back(Json{{"Sequence", Json{{"id", "B"}, {"type_id", 1}}}});
  if (eos) pair.push_back(special(v.eos, 1));
  Json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", std::move(added)},
      {"normalizer", parts.normalizer},
      {"pre_tokenizer", parts.pre_tokenizer},
      {"post_processor", Json{{"type", "TemplateProcessing"},
                              {"single", single},
                              {"pair", pair},
                              {"special_tokens", specials}}},
      {"decoder", parts.decoder},
      {"model", std::move(parts.model)},
  };
  out.tokenizer_json = dump(tok, f.path(), "the vocabulary");

  Json cfg = {{"backend", "tokenizers"}, {"tokenizer_class", "TokenizersBackend"}};
  cfg["add_bos_token"] = v.add_bos;
  cfg["add_eos_token"] = v.add_eos;
  auto name = [&](const char* key, int64_t id) {
    cfg[key] = id >= 0 ? Json(v.token(id)) : Json(nullptr);
  };
  name("bos_token", v.bos);
  name("eos_token", v.eos);
  name("unk_token", v.unk);
  name("pad_token", v.pad);
  cfg["clean_up_tokenization_spaces"] = false;
  if (f.find("tokenizer.chat_template")) {
    out.chat_template = f.get_string("tokenizer.chat_template");
    // The limit loratune's loader (and its Jinja engine) holds templates to.
    constexpr size_t kMaxTemplateBytes = size_t{1} << 20;
    if (out.chat_template.size() > kMaxTemplateBytes) {
      throw Error(f.path() + ": tokenizer.chat_template of " +
                      std::to_string(out.chat_template.size()) + " bytes exceeds the limit of " +
                      std::to_string(kMaxTemplateBytes) + " bytes",
                  ErrorKind::kResource);
    }
    cfg["chat_template"] = out.chat_template;
  }
  out.tokenizer_config_json = dump(cfg, f.path(), "tokenizer.chat_template or a special token");
  return out;
}

}  // namespace loratune::gguf
