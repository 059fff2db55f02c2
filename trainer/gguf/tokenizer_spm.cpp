// trainer/gguf/tokenizer_spm.cpp — tokenizer.ggml.model "llama" (a
// SentencePiece BPE vocabulary) as the tokenizer.json transformers 5.24 builds
// from it (gguf_tokenizer_mapping.py: sentencepiece_tokenizer, get_merges,
// generate_merges, add_gguf_special_tokens; models/llama LlamaTokenizer):
//   model        BPE over the tokens as the file spells them (a text that occurs
//                twice maps to its last id), fuse_unk, byte_fallback, no
//                unk_token; merges from tokenizer.ggml.merges when the file has
//                them, else derived from the vocabulary and tokenizer.ggml.scores
//                as generate_merges derives them (below)
//   pre_tokenizer Metaspace("▁", prepend_scheme "first", split false);
//   decoder      Replace("▁"," "), ByteFallback, Fuse, Strip(" ", 1, 0)
//   except when tokenizer.ggml.add_space_prefix is false (Gemma): normalizer
//                Replace(" ", "▁"), no pre-tokenizer, decoder without the
//                Strip, as Gemma's tokenizer.json and transformers'
//                GemmaTokenizer from such a file
//   added tokens LlamaTokenizer's defaults <s>, </s>, <unk> (special; a default
//                missing from the vocabulary gets the next id past it, in that
//                order, as transformers appends it), then every control token
//                (type 3, special), then every user-defined one (type 4, not
//                special); tokenizer.cpp adds the named special tokens last.
#include <algorithm>
#include <cmath>
#include <string_view>
#include <unordered_map>

#include "trainer/gguf/tokenizer_detail.h"

namespace loratune::gguf::detail {
namespace {

const char* kMetaspace = "\xe2\x96\x81";  // U+2581, SentencePiece's space

struct Candidate {
  std::string_view left, right;
  double score;
  size_t left_len, right_len;  // in code points
  int64_t left_id, right_id;
};

// transformers' generate_merges(vocab, vocab_scores): for every distinct token
// text (first occurrence order, the score of its last occurrence), each split
// into two texts of the vocabulary, ordered by the ids of the two parts; then
// all of them stably ordered by (score, left length, right length), highest
// first. Lengths count code points, as Python's len(str) does.
std::vector<std::pair<std::string_view, std::string_view>> generate_merges(
    const GgufVocab& v, const std::vector<Value>& scores,
    const std::unordered_map<std::string_view, int64_t>& ids) {
  std::vector<Candidate> all;
  std::unordered_map<std::string_view, bool> seen;
  seen.reserve(ids.size());
  std::vector<size_t> bounds;  // byte offset of every code point boundary
  std::vector<Candidate> local;
  for (int64_t id = 0; id < v.size(); ++id) {
    const std::string_view text = v.token(id);
    if (!seen.emplace(text, true).second) continue;
    const int64_t last = ids.at(text);  // a repeated text scores as its last occurrence
    const double score = scores[static_cast<size_t>(last)].f;
    bounds.clear();
    for (size_t i = 0; i < text.size(); ++i) {
      if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) bounds.push_back(i);
    }
    bounds.push_back(text.size());
    local.clear();
    for (size_t k = 1; k + 1 < bounds.size(); ++k) {
      const std::string_view l = text.substr(0, bounds[k]), r = text.substr(bounds[k]);
      auto li = ids.find(l), ri = ids.find(r);
      if (li == ids.end() || ri == ids.end()) continue;
      local.push_back({l, r, score, k, bounds.size() - 1 - k, li->second, ri->second});
    }
    std::stable_sort(local.begin(), local.end(), [](const Candidate& a, const Candidate& b) {
      return a.left_id != b.left_id ? a.left_id < b.left_id : a.right_id < b.right_id;
    });
    all.insert(all.end(), local.begin(), local.end());
  }
  std::stable_sort(all.begin(), all.end(), [](const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.left_len != b.left_len) return a.left_len > b.left_len;
    return a.right_len > b.right_len;
  });
  std::vector<std::pair<std::string_view, std::string_view>> out;
  out.reserve(all.size());
  for (const Candidate& c : all) out.emplace_back(c.left, c.right);
  return out;
}

}  // namespace

TokenizerParts spm_parts(const GgufFile& f, const GgufVocab& v) {
  TokenizerParts p;
  std::unordered_map<std::string_view, int64_t> ids;  // text -> last id
  ids.reserve(static_cast<size_t>(v.size()));
  std::vector<uint32_t> cps;
  for (int64_t id = 0; id < v.size(); ++id) {
    const std::string& t = v.token(id);
    cps.clear();
    if (!code_points(t, &cps)) {
      throw Error(f.path() + ": tokenizer.ggml.tokens[" + std::to_string(id) + "] '" +
                      printable(t) + "' is not valid UTF-8",
                  ErrorKind::kCorrupt);
    }
    ids[t] = id;
  }

  Json merges = Json::array();
  if (f.find("tokenizer.ggml.merges")) {
    const auto& list = f.get_array("tokenizer.ggml.merges", ValueType::kString);
    for (size_t k = 0; k < list.size(); ++k) {
      const std::string& m = list[k].s;
      const size_t sp = m.find(' ');
      if (sp == std::string::npos || m.find(' ', sp + 1) != std::string::npos) {
        throw Error(f.path() + ": tokenizer.ggml.merges[" + std::to_string(k) + "] '" +
                        printable(m) + "' is not two tokens separated by one space",
                    ErrorKind::kCorrupt);
      }
      merges.push_back(Json::array({m.substr(0, sp), m.substr(sp + 1)}));
    }
  } else {
    if (f.find("tokenizer.ggml.scores") == nullptr) {
      throw Error(f.path() + ": a llama tokenizer without tokenizer.ggml.merges needs " +
                      "tokenizer.ggml.scores to order its merges; neither is present",
                  ErrorKind::kCorrupt);
    }
    const auto& scores = f.get_array("tokenizer.ggml.scores", ValueType::kFloat32);
    if (static_cast<int64_t>(scores.size()) != v.size()) {
      throw Error(f.path() + ": tokenizer.ggml.scores has " + std::to_string(scores.size()) +
                      " entries for " + std::to_string(v.size()) + " tokens",
                  ErrorKind::kCorrupt);
    }
    for (size_t k = 0; k < scores.size(); ++k) {
      if (std::isnan(scores[k].f)) {
        throw Error(f.path() + ": tokenizer.ggml.scores[" + std::to_string(k) + "] is NaN",
                    ErrorKind::kCorrupt);
      }
    }
    for (const auto& [l, r] : generate_merges(v, scores, ids)) {
      merges.push_back(Json::array({std::string(l), std::string(r)}));
    }
  }

  VocabBuilder vocab;
  for (int64_t id = 0; id < v.size(); ++id) {
    vocab.set(v.token(id), id);  // a repeated text keeps its first position and its last id
    p.text_ids[v.token(id)] = id;
  }
  int64_t next = v.size();
  for (const char* d : {"<s>", "</s>", "<unk>"}) {
    auto it = p.text_ids.find(d);
    const int64_t id = it != p.text_ids.end() ? it->second : next++;
    p.added[id] = added_token(id, d, true);
  }
  for (int64_t id = 0; id < v.size(); ++id) {
    if (v.types[id] == kControl) {
      const int64_t at = p.text_ids.at(v.token(id));
      p.added[at] = added_token(at, v.token(id), true);
    }
  }
  for (int64_t id = 0; id < v.size(); ++id) {
    if (v.types[id] == kUserDefined) {
      const int64_t at = p.text_ids.at(v.token(id));
      p.added[at] = added_token(at, v.token(id), false);
    }
  }

  const Json replace_space =
      Json{{"type", "Replace"}, {"pattern", {{"String", kMetaspace}}}, {"content", " "}};
  if (f.find("tokenizer.ggml.add_space_prefix") != nullptr &&
      !f.get_bool("tokenizer.ggml.add_space_prefix")) {
    // No dummy prefix (Gemma): spaces become "▁" and nothing is prepended or
    // stripped, as Gemma's own tokenizer.json (and transformers' GGUF loader,
    // which builds a GemmaTokenizer for these files) do.
    p.normalizer =
        Json{{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMetaspace}};
    p.pre_tokenizer = nullptr;
    p.decoder = Json{{"type", "Sequence"},
                     {"decoders", Json::array({replace_space, Json{{"type", "ByteFallback"}},
                                               Json{{"type", "Fuse"}}})}};
  } else {
    p.normalizer = nullptr;
    p.pre_tokenizer = Json{{"type", "Metaspace"},
                           {"replacement", kMetaspace},
                           {"prepend_scheme", "first"},
                           {"split", false}};
    p.decoder =
        Json{{"type", "Sequence"},
             {"decoders",
              Json::array({replace_space, Json{{"type", "ByteFallback"}}, Json{{"type", "Fuse"}},
                           Json{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  }
  p.model = Json{{"type", "BPE"},
                 {"dropout", nullptr},
                 {"unk_token", nullptr},
                 {"continuing_subword_prefix", nullptr},
                 {"end_of_word_suffix", nullptr},
                 {"fuse_unk", true},
                 {"byte_fallback", true},
                 {"ignore_merges", false},
                 {"vocab", vocab.take()},
                 {"merges", std::move(merges)}};
  return p;
}

}  // namespace loratune::gguf::detail
