// The BPE model of `tokenizers`: rank-ordered merges applied with a priority
// queue per word, byte fallback, unknown-token fusing, ignore_merges, and a
// per-word cache.
#include <array>
#include <cstdio>
#include <mutex>
#include <queue>

#include "trainer/tokenizer/pipeline.h"

namespace loratune::tokenizer {

namespace {

constexpr size_t kCacheCapacity = 200000;  // words; beyond it words are not cached
constexpr size_t kCacheMaxWordBytes = 256;

struct Symbol {
  int32_t id;
  int32_t prev, next;
  uint32_t begin, len;
};

struct Merge {
  uint32_t rank;
  uint32_t pos;
  int32_t new_id;
  // std::priority_queue pops the largest: lowest rank first, then leftmost.
  bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

}  // namespace

using TokenSpan = std::pair<int32_t, std::pair<uint32_t, uint32_t>>;

struct Bpe::Impl {
  BpeOptions opt;
  // Vocabulary keyed by model symbols (raw bytes when byte_level).
  std::unordered_map<std::string, int32_t> symbols;
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges;  // (a, b) -> (rank, merged id)
  std::array<int32_t, 256> byte_id;      // byte-level: single-byte symbol ids
  std::array<int32_t, 256> fallback_id;  // "<0xXX>" ids
  int32_t unk_id = -1;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<TokenSpan>> cache;
  const std::unordered_map<std::string, int32_t>* strings = nullptr;  // Bpe::vocab_

  // The vocabulary keyed by model symbols.
  const std::unordered_map<std::string, int32_t>& vocab() const {
    return opt.byte_level ? symbols : *strings;
  }

  void merge_word(std::string_view w, std::vector<TokenSpan>& out) const;
};

Bpe::Bpe(std::unordered_map<std::string, int32_t> vocab,
         const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions opt,
         const std::string& where)
    : impl_(std::make_unique<Impl>()), vocab_(std::move(vocab)) {
  Impl& m = *impl_;
  m.opt = opt;
  m.strings = &vocab_;
  int32_t max_id = -1;
  for (const auto& [tok, id] : vocab_) {
    if (id < 0) throw Error(where + ": vocab id of '" + tok + "' is negative", ErrorKind::kCorrupt);
    max_id = std::max(max_id, id);
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  for (const auto& [tok, id] : vocab_) id_to_token_[id] = tok;

  m.byte_id.fill(-1);
  m.fallback_id.fill(-1);
  if (opt.byte_level) m.symbols.reserve(vocab_.size());
  for (const auto& [tok, id] : vocab_) {
    if (!opt.byte_level) break;  // symbols are the vocab strings themselves
    // Read the token through the byte alphabet; tokens with characters
    // outside it can never come out of the byte-level model.
    std::string raw;
    bool ok = true;
    for (size_t i = 0; i < tok.size() && ok; i += utf8_len(static_cast<unsigned char>(tok[i]))) {
      int b = unicode_to_byte(utf8_at(tok, i));
      ok = b >= 0;
      raw += static_cast<char>(b);
    }
    if (!ok) continue;
    m.symbols.emplace(raw, id);
    if (raw.size() == 1) m.byte_id[static_cast<unsigned char>(raw[0])] = id;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = vocab_.find(name);
    if (it != vocab_.end()) m.fallback_id[b] = it->second;
  }
  if (!opt.unk_token.empty()) {
    auto it = vocab_.find(opt.unk_token);
    if (it == vocab_.end())
      throw Error(where + ": unk_token '" + opt.unk_token + "' is not in the vocab",
                  ErrorKind::kCorrupt);
    m.unk_id = it->second;
  }
  m.merges.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
    if (ia == vocab_.end() || ib == vocab_.end())
      throw Error(where + ": merges[" + std::to_string(r) + "] uses a token not in the vocab: '" +
                      (ia == vocab_.end() ? a : b) + "'",
                  ErrorKind::kCorrupt);
    if (iab == vocab_.end())
      throw Error(where + ": merges[" + std::to_string(r) + "] makes '" + a + b +
                      "', which is not in the vocab",
                  ErrorKind::kCorrupt);
    m.merges[pair_key(ia->second, ib->second)] = {static_cast<uint32_t>(r), iab->second};
  }
}

Bpe::~Bpe() = default;

const std::string* Bpe::id_to_token(int32_t id) const {
  if (id < 0 || id >= size() || (id_to_token_[id].empty() && !vocab_.count(""))) return nullptr;
  return &id_to_token_[id];
}

const int32_t* Bpe::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? nullptr : &it->second;
}

void Bpe::Impl::merge_word(std::string_view w, std::vector<TokenSpan>& out) const {
  std::vector<Symbol> sym;
  sym.reserve(w.size());
  auto add = [&](int32_t id, uint32_t begin, uint32_t len) {
    int32_t n = static_cast<int32_t>(sym.size());
    sym.push_back({id, n - 1, -1, begin, len});
    if (n > 0) sym[n - 1].next = n;
  };
  // A pending unknown run: (id, begin, len).
  int32_t unk_len = 0;
  uint32_t unk_begin = 0;
  for (size_t i = 0; i < w.size();) {
    size_t len = opt.byte_level ? 1 : utf8_len(static_cast<unsigned char>(w[i]));
    int32_t id = -1;
    if (opt.byte_level) {
      id = byte_id[static_cast<unsigned char>(w[i])];
    } else {
      auto it = vocab().find(std::string(w.substr(i, len)));
      if (it != vocab().end()) id = it->second;
    }
    if (id >= 0) {
      if (unk_len) add(unk_id, unk_begin, unk_len), unk_len = 0;
      add(id, static_cast<uint32_t>(i), static_cast<uint32_t>(len));
    } else {
      bool fell_back = false;
      if (opt.byte_fallback) {
        fell_back = true;
        for (size_t k = 0; k < len; ++k)
          fell_back = fell_back && fallback_id[static_cast<unsigned char>(w[i + k])] >= 0;
        // As in tokenizers, a pending unknown run is not flushed here.
        if (fell_back)
          for (size_t k = 0; k < len; ++k)
            add(fallback_id[static_cast<unsigned char>(w[i + k])], static_cast<uint32_t>(i + k), 1);
      }
      if (!fell_back && unk_id >= 0) {
        if (unk_len && opt.fuse_unk) {
          unk_len += static_cast<int32_t>(len);
        } else {
          if (unk_len) add(unk_id, unk_begin, unk_len);
          unk_begin = static_cast<uint32_t>(i);
          unk_len = static_cast<int32_t>(len);
        }
      }
    }
    i += len;
  }
  if (unk_len) add(unk_id, unk_begin, unk_len);

  std::priority_queue<Merge> queue;
  auto lookup = [&](int32_t a, int32_t b) -> const std::pair<uint32_t, int32_t>* {
    auto it = merges.find(pair_key(a, b));
    return it == merges.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i)
    if (auto* mg = lookup(sym[i].id, sym[i + 1].id))
      queue.push({mg->first, static_cast<uint32_t>(i), mg->second});
  while (!queue.empty()) {
    Merge top = queue.top();
    queue.pop();
    Symbol& cur = sym[top.pos];
    if (cur.len == 0 || cur.next < 0) continue;
    Symbol right = sym[cur.next];
    auto* mg = lookup(cur.id, right.id);
    if (!mg || mg->second != top.new_id) continue;
    int32_t right_pos = cur.next;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    sym[right_pos].len = 0;
    if (right.next >= 0) sym[right.next].prev = static_cast<int32_t>(top.pos);
    if (cur.prev >= 0)
      if (auto* p = lookup(sym[cur.prev].id, cur.id))
        queue.push({p->first, static_cast<uint32_t>(cur.prev), p->second});
    if (cur.next >= 0)
      if (auto* p = lookup(cur.id, sym[cur.next].id)) queue.push({p->first, top.pos, p->second});
  }
  for (const Symbol& s : sym)
    if (s.len) out.push_back({s.id, {s.begin, s.begin + s.len}});
}

void Bpe::tokenize(std::string_view word, std::vector<TokenSpan>& out) const {
  if (word.empty()) return;
  const Impl& m = *impl_;
  if (m.opt.ignore_merges) {
    auto it = m.vocab().find(std::string(word));
    if (it != m.vocab().end()) {
      out.push_back({it->second, {0, static_cast<uint32_t>(word.size())}});
      return;
    }
  }
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  std::string key(word);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(m.cache_mutex);
    auto it = m.cache.find(key);
    if (it != m.cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = out.size();
  m.merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(m.cache_mutex);
    if (m.cache.size() < kCacheCapacity)
      m.cache.emplace(std::move(key), std::vector<TokenSpan>(out.begin() + first, out.end()));
  }
}

}  // namespace loratune::tokenizer
