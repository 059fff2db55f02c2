// Matching added tokens in text, as tokenizers' AddedVocabulary does.
#include <algorithm>

#include "trainer/tokenizer/loader.h"

namespace loratune::tokenizer {

namespace {

char32_t last_char(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return utf8_at(s, i);
}

bool is_word_char(char32_t c) {
  return is_alphanumeric(c) || c == '_';
}

// Start of the whitespace run that ends s.
size_t trailing_space_start(std::string_view s) {
  size_t e = s.size();
  while (e > 0) {
    size_t i = e - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    if (!is_whitespace(utf8_at(s, i))) break;
    e = i;
  }
  return e;
}

// Length of the whitespace run that starts s.
size_t leading_space_len(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && is_whitespace(utf8_at(s, i)))
    i += utf8_len(static_cast<unsigned char>(s[i]));
  return i;
}

}  // namespace

void AddedMatcher::build(const std::vector<std::pair<std::string, AddedToken>>& tokens) {
  for (const auto& [text, tok] : tokens) {
    if (text.empty()) continue;
    int32_t node = 0;
    for (unsigned char c : text) {
      auto& nx = nodes_[node].next;
      auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(c, int32_t{-1}));
      if (it != nx.end() && it->first == c) {
        node = it->second;
      } else {
        int32_t fresh = static_cast<int32_t>(nodes_.size());
        nx.insert(it, {c, fresh});
        nodes_.emplace_back();
        node = fresh;
      }
    }
    first_byte_[static_cast<unsigned char>(text[0])] = true;
    nodes_[node].token = static_cast<int32_t>(tokens_.size());
    tokens_.push_back(tok);
  }
}

void AddedMatcher::split(const Normalized& n, bool skip_special,
                         std::vector<std::pair<Normalized, int32_t>>& out) const {
  const std::string& s = n.text();
  if (empty()) {
    out.emplace_back(n, -1);
    return;
  }
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    if (!first_byte_[static_cast<unsigned char>(s[pos])]) {
      ++pos;
      continue;
    }
    // Longest token starting at pos.
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t i = pos; i < s.size(); ++i) {
      const auto& nx = nodes_[node].next;
      auto c = static_cast<unsigned char>(s[i]);
      auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(c, int32_t{-1}));
      if (it == nx.end() || it->first != c) break;
      node = it->second;
      if (nodes_[node].token >= 0) best = nodes_[node].token, best_end = i + 1;
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[best];
    size_t start = pos, stop = best_end;
    pos = best_end;
    if (skip_special && tok.special) continue;
    if (tok.single_word) {
      bool start_ok = start == 0 || !is_word_char(last_char(std::string_view(s).substr(0, start)));
      bool stop_ok = stop == s.size() || !is_word_char(utf8_at(s, stop));
      if (!start_ok || !stop_ok) continue;
    }
    if (tok.lstrip)
      start = std::max(trailing_space_start(std::string_view(s).substr(0, start)), start_offset);
    if (tok.rstrip) stop += leading_space_len(std::string_view(s).substr(stop));
    if (start_offset < start) out.emplace_back(n.slice(start_offset, start), -1);
    out.emplace_back(n.slice(start, stop), tok.id);
    start_offset = stop;
    pos = std::max(pos, stop);
  }
  if (start_offset < s.size() || s.empty()) out.emplace_back(n.slice(start_offset, s.size()), -1);
}

}  // namespace loratune::tokenizer
