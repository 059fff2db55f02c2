// A tokenizer.json tokenizer (the `tokenizers` pipeline) as transformers 5.x
// builds it for the class named in tokenizer_config.json.
#include <unordered_map>

#include "trainer/tokenizer/loader.h"

namespace loratune::tokenizer {

namespace {

constexpr const char* kMetaspace = "\xE2\x96\x81";  // U+2581
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

class HfTokenizer : public Tokenizer {
 public:
  using Tokenizer::added_;  // the loader fills it
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Bpe> model;
  PostProcessor post;
  std::unique_ptr<Decoder> decoder;
  std::unordered_map<int32_t, size_t> added_by_id;  // index into added_
  std::unordered_map<std::string, int32_t> added_by_content;
  AddedMatcher raw_matcher, norm_matcher;

  std::vector<Token> encode_with_offsets(const std::string& text,
                                         const EncodeOptions& opt) const override {
    check_utf8(text, "encode");
    std::vector<Token> out;
    if (opt.add_special_tokens)
      for (int32_t id : post.prefix) out.push_back({id, 0, 0});
    std::vector<std::pair<Normalized, int32_t>> stage1, stage2;
    raw_matcher.split(Normalized(text, 0), opt.split_special_tokens, stage1);
    for (auto& [piece, id] : stage1) {
      if (piece.text().empty()) continue;
      if (id >= 0) {
        stage2.emplace_back(std::move(piece), id);
        continue;
      }
      if (normalizer) normalizer->normalize(piece);
      norm_matcher.split(piece, opt.split_special_tokens, stage2);
    }
    std::vector<Normalized> words;
    std::vector<std::pair<int32_t, std::pair<uint32_t, uint32_t>>> toks;
    for (auto& [piece, id] : stage2) {
      if (piece.text().empty()) continue;
      if (id >= 0) {
        auto r = piece.original(0, piece.text().size());
        out.push_back({id, r.first, r.second});
        continue;
      }
      words.clear();
      words.push_back(std::move(piece));
      if (pre_tokenizer) pre_tokenizer->pre_tokenize(words);
      for (const Normalized& w : words) {
        toks.clear();
        model->tokenize(w.text(), toks);
        for (const auto& [tid, span] : toks) {
          auto r = w.original(span.first, span.second);
          out.push_back({tid, r.first, r.second});
        }
      }
    }
    if (opt.add_special_tokens) {
      auto end = static_cast<uint32_t>(text.size());
      for (int32_t id : post.suffix) out.push_back({id, end, end});
    }
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    std::vector<std::string> toks;
    toks.reserve(ids.size());
    for (int32_t id : ids) {
      auto it = added_by_id.find(id);
      if (it != added_by_id.end()) {
        const AddedToken& t = added_[it->second];
        if (!(skip_special_tokens && t.special)) toks.push_back(t.content);
      } else if (const std::string* s = model->id_to_token(id)) {
        toks.push_back(*s);
      }
    }
    std::string out;
    if (!decoder) {
      for (size_t i = 0; i < toks.size(); ++i) out += (i ? " " : "") + toks[i];
      return out;
    }
    decoder->decode_chain(toks);
    for (const auto& t : toks) out += t;
    return out;
  }

  bool id_to_token(int32_t id, std::string* token) const override {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) return *token = added_[it->second].content, true;
    if (const std::string* s = model->id_to_token(id)) return *token = *s, true;
    return false;
  }

  std::optional<int32_t> token_to_id(const std::string& token) const override {
    auto it = added_by_content.find(token);
    if (it != added_by_content.end()) return it->second;
    if (const int32_t* id = model->token_to_id(token)) return *id;
    return std::nullopt;
  }

  int32_t vocab_size() const override {
    int32_t n = model->size();
    for (const auto& t : added_) n = std::max(n, t.id + 1);
    return n;
  }

  // Adds or updates an added token (transformers' add_tokens).
  void add_token(AddedToken t) {
    auto it = added_by_content.find(t.content);
    if (it != added_by_content.end()) {
      added_[added_by_id.at(it->second)].special |= t.special;
      return;
    }
    if (const int32_t* id = model->token_to_id(t.content)) {
      t.id = *id;
    } else {
      t.id = vocab_size();
    }
    added_by_id[t.id] = added_.size();
    added_by_content[t.content] = t.id;
    added_.push_back(std::move(t));
  }

  void build_matchers() {
    std::vector<std::pair<std::string, AddedToken>> raw, norm;
    for (const AddedToken& t : added_) {
      if (!t.normalized) {
        raw.emplace_back(t.content, t);
        continue;
      }
      Normalized n(t.content, 0);
      if (normalizer) normalizer->normalize(n);
      norm.emplace_back(n.text(), t);
    }
    raw_matcher.build(raw);
    norm_matcher.build(norm);
  }
};

AddedToken parse_added(const Json& j, const std::string& where) {
  if (!j.is_object() || !j.contains("content") || !j["content"].is_string())
    throw Error(where + ": an added token needs a string 'content'", ErrorKind::kCorrupt);
  AddedToken t;
  t.content = j["content"].get<std::string>();
  if (j.contains("id")) {
    t.id = json_id(j["id"], where + ": 'id'");
  }
  t.special = json_bool(j, "special", false, where);
  t.lstrip = json_bool(j, "lstrip", false, where);
  t.rstrip = json_bool(j, "rstrip", false, where);
  t.normalized = json_bool(j, "normalized", !t.special, where);
  t.single_word = json_bool(j, "single_word", false, where);
  return t;
}

std::unique_ptr<Bpe> parse_bpe(TokenizerJson& file, const std::string& where,
                               const std::string& cls, bool byte_level,
                               const std::string& gemma_unk) {
  const Json& m = file.tree["model"];
  if (!m.is_object()) throw Error(where + ": 'model' must be an object", ErrorKind::kCorrupt);
  std::string type = json_opt_string(m, "type", file.has_merges ? "BPE" : "", where);
  if (type != "BPE")
    throw Error(where + ": model type '" + type + "' is not supported (supported: BPE)",
                ErrorKind::kUnsupported);
  check_keys(m,
             {"dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
              "byte_fallback", "ignore_merges", "vocab", "merges"},
             where);
  // tokenizers reads these as Option<f32> / Option<String>: other types are refused.
  if (m.contains("dropout") && !m["dropout"].is_null()) {
    if (!m["dropout"].is_number())
      throw Error(where + ": 'dropout' must be a number or null", ErrorKind::kCorrupt);
    if (m["dropout"].get<double>() != 0.0)
      throw Error(where + ": BPE dropout is not supported", ErrorKind::kUnsupported);
  }
  const std::string unk_token = json_opt_string(m, "unk_token", "", where);
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!json_opt_string(m, k, "", where).empty())
      throw Error(where + ": BPE option '" + k + "' is not supported", ErrorKind::kUnsupported);
  for (const char* k : {"fuse_unk", "byte_fallback", "ignore_merges"})
    json_bool(m, k, false, where);
  if (!file.has_vocab)
    throw Error(where + ": model 'vocab' must be an object", ErrorKind::kCorrupt);
  if (!file.has_merges) throw Error(where + ": model 'merges' must be a list", ErrorKind::kCorrupt);
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(file.vocab.size());
  for (auto& [tok, id] : file.vocab) vocab.emplace(std::move(tok), id);
  file.vocab.clear();
  const auto& merges = file.merges;
  BpeOptions opt;
  opt.byte_level = byte_level;
  if (cls == "LlamaTokenizer" || cls == "GemmaTokenizer" || cls == "Qwen2Tokenizer") {
    // transformers rebuilds BPE(vocab, merges) with the class's options.
    opt.fuse_unk = cls != "Qwen2Tokenizer";
    opt.byte_fallback = cls != "Qwen2Tokenizer";
    if (cls == "GemmaTokenizer") opt.unk_token = gemma_unk;
    return std::make_unique<Bpe>(std::move(vocab), merges, opt, where);
  }
  opt.unk_token = unk_token;
  opt.fuse_unk = json_bool(m, "fuse_unk", false, where);
  opt.byte_fallback = json_bool(m, "byte_fallback", false, where);
  opt.ignore_merges = json_bool(m, "ignore_merges", false, where);
  return std::make_unique<Bpe>(std::move(vocab), merges, opt, where);
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& dir, const std::string& path,
                                             const TokenizerConfig& cfg,
                                             const std::vector<int32_t>& gen_eos) {
  TokenizerJson file = read_tokenizer_json(path);
  const Json& j = file.tree;
  if (!j.is_object() || !j.contains("model"))
    throw Error(path + ": not a tokenizer.json (no 'model' object)", ErrorKind::kCorrupt);
  const std::string& cls = cfg.tokenizer_class;
  auto tok = std::make_unique<HfTokenizer>();

  // Pipeline components: from the file, or rebuilt as the transformers class does.
  std::string unk_default;
  std::map<std::string, std::string> defaults;  // class defaults of named tokens
  if (cls == "LlamaTokenizer") {
    bool prefix = cfg.add_prefix_space.value_or(true);
    std::string scheme = prefix ? (cfg.legacy.value_or(false) ? "always" : "first") : "never";
    tok->pre_tokenizer = make_pre_tokenizer(Json{{"type", "Metaspace"},
                                                 {"replacement", kMetaspace},
                                                 {"prepend_scheme", scheme},
                                                 {"split", false}},
                                            path + ": LlamaTokenizer pre_tokenizer");
    Json seq = Json::array(
        {Json{{"type", "Replace"}, {"pattern", {{"String", kMetaspace}}}, {"content", " "}},
         Json{{"type", "ByteFallback"}}, Json{{"type", "Fuse"}}});
    if (prefix) seq.push_back(Json{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    tok->decoder = make_decoder(Json{{"type", "Sequence"}, {"decoders", seq}},
                                path + ": LlamaTokenizer decoder");
    defaults = {{"unk_token", "<unk>"}, {"bos_token", "<s>"}, {"eos_token", "</s>"}};
  } else if (cls == "GemmaTokenizer") {
    tok->normalizer = make_normalizer(
        Json{{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMetaspace}},
        path + ": GemmaTokenizer");
    tok->pre_tokenizer = make_pre_tokenizer(Json{{"type", "Split"},
                                                 {"pattern", {{"String", " "}}},
                                                 {"behavior", "MergedWithPrevious"},
                                                 {"invert", false}},
                                            path + ": GemmaTokenizer");
    tok->decoder = make_decoder(
        Json{{"type", "Sequence"},
             {"decoders", Json::array({Json{{"type", "Replace"},
                                            {"pattern", {{"String", kMetaspace}}},
                                            {"content", " "}},
                                       Json{{"type", "ByteFallback"}}, Json{{"type", "Fuse"}}})}},
        path + ": GemmaTokenizer");
    defaults = {{"unk_token", "<unk>"},
                {"bos_token", "<bos>"},
                {"eos_token", "<eos>"},
                {"pad_token", "<pad>"},
                {"mask_token", "<mask>"}};
  } else if (cls == "Qwen2Tokenizer") {
    tok->normalizer = make_normalizer(Json{{"type", "NFC"}}, path + ": Qwen2Tokenizer");
    tok->pre_tokenizer = make_pre_tokenizer(
        Json{{"type", "Sequence"},
             {"pretokenizers",
              Json::array({Json{{"type", "Split"},
                                {"pattern", {{"Regex", kQwen2Pattern}}},
                                {"behavior", "Isolated"},
                                {"invert", false}},
                           Json{{"type", "ByteLevel"},
                                {"add_prefix_space", cfg.add_prefix_space.value_or(false)},
                                {"use_regex", false}}})}},
        path + ": Qwen2Tokenizer");
    tok->decoder = make_decoder(Json{{"type", "ByteLevel"}}, path + ": Qwen2Tokenizer");
    defaults = {{"unk_token", "<|endoftext|>"},
                {"eos_token", "<|endoftext|>"},
                {"pad_token", "<|endoftext|>"}};
  } else {
    tok->normalizer = make_normalizer(j.value("normalizer", Json()), path + ": normalizer");
    tok->pre_tokenizer =
        make_pre_tokenizer(j.value("pre_tokenizer", Json()), path + ": pre_tokenizer");
    tok->decoder = make_decoder(j.value("decoder", Json()), path + ": decoder");
  }
  bool byte_level = tok->pre_tokenizer && tok->pre_tokenizer->byte_level();
  std::string gemma_unk = "<unk>";
  if (auto it = cfg.named.find("unk_token"); it != cfg.named.end() && it->second.present)
    gemma_unk = it->second.token ? it->second.token->content : "";
  tok->model = parse_bpe(file, path + ": model", cls, byte_level, gemma_unk);
  file.merges.clear();

  // Added tokens: rebuilt classes take them from tokenizer_config.json.
  std::vector<AddedToken> added;
  bool rebuilt = !defaults.empty();
  if (rebuilt && cfg.added_tokens_decoder) {
    added = *cfg.added_tokens_decoder;
  } else if (j.contains("added_tokens")) {
    if (!j["added_tokens"].is_array())
      throw Error(path + ": 'added_tokens' must be a list", ErrorKind::kCorrupt);
    for (size_t i = 0; i < j["added_tokens"].size(); ++i)
      added.push_back(
          parse_added(j["added_tokens"][i], path + ": added_tokens[" + std::to_string(i) + "]"));
  }
  for (AddedToken& t : added) {
    if (t.id < 0)
      throw Error(path + ": added token '" + t.content + "' has a negative id",
                  ErrorKind::kCorrupt);
    // tokenizers' AddedVocabulary: a content seen before keeps its first id
    // and takes the later entry's options; the later id is not an added token.
    if (auto it = tok->added_by_content.find(t.content); it != tok->added_by_content.end()) {
      AddedToken& first = tok->added_[tok->added_by_id.at(it->second)];
      t.id = first.id;
      first = t;
      continue;
    }
    tok->added_by_id[t.id] = tok->added_.size();
    tok->added_by_content[t.content] = t.id;
    tok->added_.push_back(t);
  }
  // transformers adds tokenizer_config.json's added_tokens_decoder again
  // over tokenizer.json's: a token already there keeps its id and takes the
  // config's options (lstrip, rstrip, normalized, single_word, special).
  if (!rebuilt && cfg.added_tokens_decoder) {
    for (const AddedToken& t : *cfg.added_tokens_decoder) {
      auto it = tok->added_by_content.find(t.content);
      if (it == tok->added_by_content.end()) continue;
      AddedToken& cur = tok->added_[tok->added_by_id.at(it->second)];
      const int32_t id = cur.id;
      cur = t;
      cur.id = id;
    }
  }

  // Named special tokens (config, else class default) become special added tokens.
  SpecialTokens sp;
  auto resolve = [&](const char* name, std::string* text, int32_t* id) {
    std::optional<AddedToken> t;
    auto it = cfg.named.find(name);
    if (it != cfg.named.end() && it->second.present) {
      t = it->second.token;
    } else if (defaults.count(name)) {
      t = AddedToken{0, defaults[name], true};
    }
    if (!t) return;
    t->special = true;
    tok->add_token(*t);
    if (text) *text = t->content, *id = tok->added_by_content.at(t->content);
  };
  resolve("bos_token", &sp.bos, &sp.bos_id);
  resolve("eos_token", &sp.eos, &sp.eos_id);
  resolve("unk_token", &sp.unk, &sp.unk_id);
  resolve("pad_token", &sp.pad, &sp.pad_id);
  for (const char* other : {"mask_token", "sep_token", "cls_token"})
    resolve(other, nullptr, nullptr);
  for (AddedToken t : cfg.extra_special) {
    t.special = true;
    tok->add_token(t);
  }
  tok->build_matchers();

  // Post-processor: the file's. transformers 5.24's from_pretrained does not
  // apply tokenizer_config.json add_bos_token / add_eos_token to it (checked
  // against AutoTokenizer: Llama 2 with add_eos_token=true adds no EOS).
  tok->post = make_post_processor(j.value("post_processor", Json()), path + ": post_processor");

  std::vector<int32_t> eos = gen_eos;
  if (eos.empty() && sp.eos_id >= 0) eos.push_back(sp.eos_id);
  std::vector<AddedToken> added_list = tok->added_;
  TokenizerLoader::set_common(*tok, sp, std::move(added_list), eos, cfg.chat_templates,
                              path + " (" + (cls.empty() ? "TokenizersBackend" : cls) + ")");
  return tok;
}

}  // namespace loratune::tokenizer
