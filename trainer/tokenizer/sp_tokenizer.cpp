// A SentencePiece tokenizer.model through libsentencepiece, with the special
// tokens of tokenizer_config.json recognised in the text like transformers'
// slow (SentencePiece) tokenizers do.
#include <sentencepiece_processor.h>

#include "trainer/tokenizer/loader.h"

namespace loratune::tokenizer {

namespace {

class SpTokenizer : public Tokenizer {
 public:
  using Tokenizer::added_;  // the loader fills it
  sentencepiece::SentencePieceProcessor sp;
  std::vector<int32_t> prefix, suffix;
  std::unordered_map<int32_t, size_t> added_by_id;
  std::unordered_map<std::string, int32_t> added_by_content;
  AddedMatcher matcher;

  std::vector<Token> encode_with_offsets(const std::string& text,
                                         const EncodeOptions& opt) const override {
    check_utf8(text, "encode");
    std::vector<Token> out;
    if (opt.add_special_tokens)
      for (int32_t id : prefix) out.push_back({id, 0, 0});
    std::vector<std::pair<Normalized, int32_t>> pieces;
    matcher.split(Normalized(text, 0), opt.split_special_tokens, pieces);
    for (const auto& [piece, id] : pieces) {
      if (piece.text().empty()) continue;
      auto base = piece.original(0, piece.text().size());
      if (id >= 0) {
        out.push_back({id, base.first, base.second});
        continue;
      }
      auto spt = sp.EncodeAsImmutableProto(piece.text());
      for (const auto& p : spt.pieces())
        out.push_back({static_cast<int32_t>(p.id()), base.first + p.begin(), base.first + p.end()});
    }
    if (opt.add_special_tokens) {
      auto end = static_cast<uint32_t>(text.size());
      for (int32_t id : suffix) out.push_back({id, end, end});
    }
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    std::string out;
    std::vector<int> run;
    auto flush = [&] {
      if (!run.empty()) out += sp.DecodeIds(run);
      run.clear();
    };
    for (int32_t id : ids) {
      auto it = added_by_id.find(id);
      if (it != added_by_id.end()) {
        flush();
        const AddedToken& t = added_[it->second];
        if (!(skip_special_tokens && t.special)) out += t.content;
      } else if (id >= 0 && id < sp.GetPieceSize()) {
        run.push_back(id);
      }
    }
    flush();
    return out;
  }

  bool id_to_token(int32_t id, std::string* token) const override {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) return *token = added_[it->second].content, true;
    if (id < 0 || id >= sp.GetPieceSize()) return false;
    *token = sp.IdToPiece(id);
    return true;
  }

  std::optional<int32_t> token_to_id(const std::string& token) const override {
    auto it = added_by_content.find(token);
    if (it != added_by_content.end()) return it->second;
    int id = sp.PieceToId(token);
    if (id == sp.unk_id() && token != sp.IdToPiece(id)) return std::nullopt;
    return id;
  }

  int32_t vocab_size() const override {
    int32_t n = sp.GetPieceSize();
    for (const auto& t : added_) n = std::max(n, t.id + 1);
    return n;
  }

  void add_token(AddedToken t) {
    auto it = added_by_content.find(t.content);
    if (it != added_by_content.end()) {
      added_[added_by_id.at(it->second)].special |= t.special;
      return;
    }
    auto id = token_to_id(t.content);
    t.id = id ? *id : vocab_size();
    added_by_id[t.id] = added_.size();
    added_by_content[t.content] = t.id;
    added_.push_back(std::move(t));
  }
};

}  // namespace

std::unique_ptr<Tokenizer> load_sp_tokenizer(const std::string& dir, const std::string& path,
                                             const TokenizerConfig& cfg,
                                             const std::vector<int32_t>& gen_eos) {
  auto tok = std::make_unique<SpTokenizer>();
  auto status = tok->sp.Load(path);
  if (!status.ok())
    throw Error(path + ": not a valid SentencePiece model (" + status.ToString() + ")",
                ErrorKind::kCorrupt);
  if (cfg.added_tokens_decoder)
    for (const AddedToken& t : *cfg.added_tokens_decoder) {
      tok->added_by_id[t.id] = tok->added_.size();
      tok->added_by_content[t.content] = t.id;
      tok->added_.push_back(t);
    }
  // Named tokens: the config's, else the model's own <s>, </s>, <unk> pieces.
  SpecialTokens sp;
  auto resolve = [&](const char* name, int model_id, std::string* text, int32_t* id) {
    std::optional<AddedToken> t;
    auto it = cfg.named.find(name);
    if (it != cfg.named.end() && it->second.present) {
      t = it->second.token;
    } else if (model_id >= 0) {
      t = AddedToken{0, tok->sp.IdToPiece(model_id), true};
    }
    if (!t) return;
    t->special = true;
    tok->add_token(*t);
    *text = t->content;
    *id = tok->added_by_content.at(t->content);
  };
  resolve("bos_token", tok->sp.bos_id(), &sp.bos, &sp.bos_id);
  resolve("eos_token", tok->sp.eos_id(), &sp.eos, &sp.eos_id);
  resolve("unk_token", tok->sp.unk_id(), &sp.unk, &sp.unk_id);
  resolve("pad_token", tok->sp.pad_id(), &sp.pad, &sp.pad_id);
  for (AddedToken t : cfg.extra_special) {
    t.special = true;
    tok->add_token(t);
  }
  std::vector<std::pair<std::string, AddedToken>> match;
  for (const AddedToken& t : tok->added_) match.emplace_back(t.content, t);
  tok->matcher.build(match);
  // LlamaTokenizer defaults: BOS yes, EOS no.
  if (cfg.add_bos_token.value_or(true) && sp.bos_id >= 0) tok->prefix = {sp.bos_id};
  if (cfg.add_eos_token.value_or(false) && sp.eos_id >= 0) tok->suffix = {sp.eos_id};
  std::vector<int32_t> eos = gen_eos;
  if (eos.empty() && sp.eos_id >= 0) eos.push_back(sp.eos_id);
  std::vector<AddedToken> added = tok->added_;
  TokenizerLoader::set_common(*tok, sp, std::move(added), eos, cfg.chat_templates,
                              path + " (SentencePiece)");
  return tok;
}

}  // namespace loratune::tokenizer
