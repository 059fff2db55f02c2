// trainer/data/batch.cpp — examples -> sequences (optionally packed) ->
// padded batches; the seeded, resumable loader.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "trainer/data/data.h"
#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::data {
namespace {

// The SplitMix64 generator (Steele, Lea, Flood 2014): a 64-bit counter
// stepped by the golden ratio and mixed. Specified by these few lines, so a
// seed gives the same stream with every compiler and standard library.
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() { return mix64(state_ += kGolden); }
  // Uniform in [0, bound) by rejection (no modulo bias), bound >= 1.
  uint64_t below(uint64_t bound) {
    const uint64_t limit = ~0ull - (~0ull % bound);  // largest multiple of bound
    for (;;) {
      uint64_t r = next();
      if (r < limit) return r % bound;
    }
  }

 private:
  uint64_t state_;
};

void append_example(Sequence* s, const Example& ex, int32_t segment) {
  const bool first = s->input_ids.empty();
  s->input_ids.insert(s->input_ids.end(), ex.input_ids.begin(), ex.input_ids.end());
  const size_t at = s->labels.size();
  s->labels.insert(s->labels.end(), ex.labels.begin(), ex.labels.end());
  // No loss from one example's last token onto the next example's first.
  if (!first) s->labels[at] = kIgnoreIndex;
  for (size_t t = 0; t < ex.input_ids.size(); ++t) {
    s->position_ids.push_back(static_cast<int32_t>(t));
    s->segment_ids.push_back(segment);
  }
}

}  // namespace

std::vector<int64_t> permutation(int64_t n, uint64_t seed, uint64_t stream) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  Rng rng(mix64(seed + kGolden) ^ mix64(stream + 2 * kGolden));
  for (int64_t i = n - 1; i > 0; --i) {  // Fisher–Yates
    int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

std::vector<Sequence> make_sequences(const std::vector<Example>& examples, int64_t max_seq_len,
                                     bool packing) {
  std::vector<Sequence> out;
  for (size_t i = 0; i < examples.size(); ++i) {
    if (static_cast<int64_t>(examples[i].input_ids.size()) > max_seq_len) {
      throw Error("example " + std::to_string(i) + " has " +
                      std::to_string(examples[i].input_ids.size()) + " tokens > max_seq_len " +
                      std::to_string(max_seq_len) + " (truncate before making sequences)",
                  ErrorKind::kInternal);
    }
  }
  if (!packing) {
    out.resize(examples.size());
    for (size_t i = 0; i < examples.size(); ++i) append_example(&out[i], examples[i], 1);
    return out;
  }
  // Best-fit decreasing: longest first (ties by index); each goes into the
  // open bin with the least room that still fits it, else a new bin.
  std::vector<size_t> order(examples.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return examples[a].input_ids.size() > examples[b].input_ids.size();
  });
  std::vector<std::vector<size_t>> bins;
  std::multimap<int64_t, size_t> room;  // free tokens -> bin; equal keys in insertion order
  for (size_t i : order) {
    const int64_t len = static_cast<int64_t>(examples[i].input_ids.size());
    auto it = room.lower_bound(len);
    size_t bin;
    int64_t free_tokens;
    if (it == room.end()) {
      bin = bins.size();
      bins.emplace_back();
      free_tokens = max_seq_len;
    } else {
      bin = it->second;
      free_tokens = it->first;
      room.erase(it);
    }
    bins[bin].push_back(i);
    if (free_tokens - len > 0) room.emplace(free_tokens - len, bin);
  }
  out.resize(bins.size());
  for (size_t b = 0; b < bins.size(); ++b) {
    int32_t segment = 0;
    for (size_t i : bins[b]) append_example(&out[b], examples[i], ++segment);
  }
  return out;
}

Batch collate(const std::vector<const Sequence*>& rows, int32_t pad_id) {
  if (rows.empty()) throw Error("collate: empty batch", ErrorKind::kInternal);
  Batch b;
  b.rows = static_cast<int64_t>(rows.size());
  for (const Sequence* s : rows) b.seq_len = std::max<int64_t>(b.seq_len, s->input_ids.size());
  const size_t n = static_cast<size_t>(b.rows * b.seq_len);
  b.input_ids.assign(n, pad_id);
  b.labels.assign(n, kIgnoreIndex);
  b.position_ids.assign(n, 0);
  b.segment_ids.assign(n, 0);
  b.attention_mask.assign(n, 0);
  for (size_t r = 0; r < rows.size(); ++r) {
    const Sequence& s = *rows[r];
    const size_t base = r * static_cast<size_t>(b.seq_len);
    std::copy(s.input_ids.begin(), s.input_ids.end(), b.input_ids.begin() + base);
    std::copy(s.labels.begin(), s.labels.end(), b.labels.begin() + base);
    std::copy(s.position_ids.begin(), s.position_ids.end(), b.position_ids.begin() + base);
    std::copy(s.segment_ids.begin(), s.segment_ids.end(), b.segment_ids.begin() + base);
    std::fill_n(b.attention_mask.begin() + base, s.input_ids.size(), 1);
    b.target_tokens += target_tokens(s);
  }
  return b;
}

int64_t target_tokens(const Sequence& s) {
  int64_t n = 0;
  for (size_t t = 1; t < s.labels.size(); ++t) n += s.labels[t] != kIgnoreIndex;
  return n;
}

int32_t pad_id_for(const tokenizer::Tokenizer& tok) {
  const auto& s = tok.special_tokens();
  if (s.pad_id >= 0) return s.pad_id;
  if (s.eos_id >= 0) return s.eos_id;
  return 0;
}

// ---- DataLoader -------------------------------------------------------------

DataLoader::DataLoader(std::vector<Sequence> sequences, int64_t batch_size, int32_t pad_id,
                       uint64_t seed, bool shuffle)
    : sequences_(std::move(sequences)),
      batch_size_(batch_size),
      pad_id_(pad_id),
      seed_(seed),
      shuffle_(shuffle) {
  if (sequences_.empty()) throw Error("DataLoader: no sequences", ErrorKind::kInternal);
  if (batch_size_ < 1)
    throw Error("DataLoader: batch size must be >= 1, got " + std::to_string(batch_size_),
                ErrorKind::kInternal);
  targets_.reserve(sequences_.size());
  for (const Sequence& s : sequences_) targets_.push_back(target_tokens(s));
}

int64_t DataLoader::batches_per_epoch() const {
  return (sequences_per_epoch() + batch_size_ - 1) / batch_size_;
}

std::vector<int64_t> DataLoader::epoch_order(int64_t epoch) const {
  const int64_t n = sequences_per_epoch();
  if (!shuffle_) {
    std::vector<int64_t> p(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) p[i] = i;
    return p;
  }
  // Stream per epoch; the validation split uses stream ~0 (prepare.cpp).
  return permutation(n, seed_, static_cast<uint64_t>(epoch));
}

void DataLoader::seek(LoaderPosition p) {
  if (p.epoch < 0 || p.index < 0 || p.index > sequences_per_epoch()) {
    throw Error("DataLoader: cannot seek to epoch " + std::to_string(p.epoch) + " index " +
                    std::to_string(p.index) + " (an epoch has " +
                    std::to_string(sequences_per_epoch()) + " sequences)",
                ErrorKind::kCorrupt);  // a checkpoint's data position that does not fit
  }
  pos_ = p;
}

DataLoader::Span DataLoader::take(LoaderPosition* p) const {
  const int64_t n = sequences_per_epoch();
  if (p->index >= n) *p = {p->epoch + 1, 0};
  const Span s{p->epoch, p->index, std::min(p->index + batch_size_, n)};
  p->index = s.end;
  if (p->index == n) *p = {p->epoch + 1, 0};
  return s;
}

Batch DataLoader::next() {
  const Span s = take(&pos_);
  if (order_epoch_ != s.epoch) {
    order_ = epoch_order(s.epoch);
    order_epoch_ = s.epoch;
  }
  std::vector<const Sequence*> rows;
  for (int64_t i = s.begin; i < s.end; ++i) rows.push_back(&sequences_[order_[i]]);
  return collate(rows, pad_id_);
}

BatchCounts DataLoader::peek_counts(int64_t k) const {
  if (k < 0)
    throw Error("DataLoader: cannot count " + std::to_string(k) + " batches", ErrorKind::kInternal);
  BatchCounts c;
  LoaderPosition p = pos_;
  std::vector<int64_t> other;  // the order of an epoch order_ does not hold
  int64_t other_epoch = -1;
  for (int64_t b = 0; b < k; ++b) {
    const Span s = take(&p);
    const std::vector<int64_t>* order = &order_;
    if (order_epoch_ != s.epoch) {
      if (other_epoch != s.epoch) {
        other = epoch_order(s.epoch);
        other_epoch = s.epoch;
      }
      order = &other;
    }
    for (int64_t i = s.begin; i < s.end; ++i) {
      const size_t at = static_cast<size_t>((*order)[i]);
      c.target_tokens += targets_[at];
      c.tokens += static_cast<int64_t>(sequences_[at].input_ids.size());
    }
  }
  return c;
}

void DataLoader::skip(int64_t k) {
  if (k < 0)
    throw Error("DataLoader: cannot skip " + std::to_string(k) + " batches", ErrorKind::kInternal);
  for (int64_t b = 0; b < k; ++b) take(&pos_);
}

}  // namespace loratune::data
