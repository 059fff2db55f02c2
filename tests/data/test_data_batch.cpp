// Sequences, packing, padding, shuffling and the resumable loader, on
// synthetic examples (no tokenizer needed).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "trainer/data/data.h"
#include "trainer/io/error.h"

namespace loratune::data {
namespace {

// Example i has length lengths[i]; token t is 1000 * (i + 1) + t so every
// token identifies its example and place; the first two labels are masked.
std::vector<Example> synthetic(const std::vector<int>& lengths) {
  std::vector<Example> out;
  for (size_t i = 0; i < lengths.size(); ++i) {
    Example e;
    for (int t = 0; t < lengths[i]; ++t) {
      e.input_ids.push_back(static_cast<int32_t>(1000 * (i + 1) + t));
      e.labels.push_back(t < 2 ? kIgnoreIndex : e.input_ids.back());
    }
    out.push_back(e);
  }
  return out;
}

std::vector<int> lengths_for(int n, uint64_t seed, int max_len) {
  std::vector<int64_t> p = permutation(n, seed, 7);
  std::vector<int> out;
  for (int i = 0; i < n; ++i) out.push_back(1 + static_cast<int>((p[i] * 37) % max_len));
  return out;
}

TEST(DataBatch, UnpackedSequenceIsTheExample) {
  auto ex = synthetic({5, 3});
  auto seqs = make_sequences(ex, 8, false);
  ASSERT_EQ(seqs.size(), 2u);
  EXPECT_EQ(seqs[0].input_ids, ex[0].input_ids);
  EXPECT_EQ(seqs[0].labels, ex[0].labels);
  EXPECT_EQ(seqs[0].position_ids, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(seqs[1].segment_ids, (std::vector<int32_t>{1, 1, 1}));
}

TEST(DataBatch, PackingKeepsEveryExampleWholeAndRestartsPositions) {
  const int64_t max_len = 64;
  auto lengths = lengths_for(300, 3, static_cast<int>(max_len));
  auto ex = synthetic(lengths);
  auto seqs = make_sequences(ex, max_len, true);
  std::set<size_t> seen;
  int64_t tokens = 0, total = 0;
  for (int l : lengths) total += l;
  for (const Sequence& s : seqs) {
    ASSERT_LE(static_cast<int64_t>(s.input_ids.size()), max_len);
    ASSERT_EQ(s.labels.size(), s.input_ids.size());
    ASSERT_EQ(s.position_ids.size(), s.input_ids.size());
    ASSERT_EQ(s.segment_ids.size(), s.input_ids.size());
    tokens += static_cast<int64_t>(s.input_ids.size());
    size_t t = 0;
    int32_t segment = 0;
    while (t < s.input_ids.size()) {
      ++segment;
      const size_t i = static_cast<size_t>(s.input_ids[t] / 1000 - 1);  // example index
      ASSERT_TRUE(seen.insert(i).second) << "example " << i << " appears twice";
      for (size_t k = 0; k < ex[i].input_ids.size(); ++k, ++t) {
        ASSERT_LT(t, s.input_ids.size()) << "example " << i << " split across sequences";
        EXPECT_EQ(s.input_ids[t], ex[i].input_ids[k]);
        EXPECT_EQ(s.position_ids[t], static_cast<int32_t>(k));
        EXPECT_EQ(s.segment_ids[t], segment);
        // The first token of every example after the first is not a target.
        int32_t want = (k == 0 && segment > 1) ? kIgnoreIndex : ex[i].labels[k];
        EXPECT_EQ(s.labels[t], want);
      }
    }
  }
  EXPECT_EQ(seen.size(), ex.size());
  EXPECT_EQ(tokens, total);
  // Best-fit decreasing fills bins well: fewer than 20% more than the bound.
  EXPECT_LT(static_cast<double>(seqs.size()), 1.2 * std::ceil(double(total) / max_len) + 1);
  // Deterministic.
  auto again = make_sequences(ex, max_len, true);
  ASSERT_EQ(again.size(), seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(again[i].input_ids, seqs[i].input_ids);
}

TEST(DataBatch, PackingRefusesUntruncatedExamples) {
  EXPECT_THROW(make_sequences(synthetic({9}), 8, true), Error);
}

TEST(DataBatch, TruncationCountsAndDropsTargetlessExamples) {
  auto ex = synthetic({10, 3, 2, 6});  // the 2-token example has no target
  DataStats s;
  truncate_and_filter(&ex, 5, &s);
  EXPECT_EQ(s.truncated, 2);
  EXPECT_EQ(s.dropped_no_targets, 1);
  EXPECT_EQ(s.examples, 3);
  ASSERT_EQ(ex.size(), 3u);
  EXPECT_EQ(ex[0].input_ids.size(), 5u);
  EXPECT_EQ(ex[1].input_ids.size(), 3u);
  EXPECT_EQ(s.tokens, 5 + 3 + 5);
  EXPECT_EQ(s.target_tokens, 3 + 1 + 3);
}

TEST(DataBatch, CollatePadsRight) {
  auto seqs = make_sequences(synthetic({4, 2}), 8, false);
  Batch b = collate({&seqs[0], &seqs[1]}, /*pad_id=*/7);
  ASSERT_EQ(b.rows, 2);
  ASSERT_EQ(b.seq_len, 4);
  EXPECT_EQ(b.input_ids, (std::vector<int32_t>{1000, 1001, 1002, 1003, 2000, 2001, 7, 7}));
  EXPECT_EQ(b.labels, (std::vector<int32_t>{-100, -100, 1002, 1003, -100, -100, -100, -100}));
  EXPECT_EQ(b.attention_mask, (std::vector<uint8_t>{1, 1, 1, 1, 1, 1, 0, 0}));
  EXPECT_EQ(b.position_ids, (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 0, 0}));
  EXPECT_EQ(b.segment_ids, (std::vector<int32_t>{1, 1, 1, 1, 1, 1, 0, 0}));
  EXPECT_EQ(b.target_tokens, 2);
}

TEST(DataBatch, PermutationIsSeededAndUnbiasedEnough) {
  auto p = permutation(1000, 42, 0);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_EQ(p, permutation(1000, 42, 0));
  EXPECT_NE(p, permutation(1000, 43, 0));
  EXPECT_NE(p, permutation(1000, 42, 1));
  // Each of 4 items lands in each place about 1/4 of the time.
  std::map<std::pair<int64_t, int64_t>, int> count;
  for (uint64_t s = 0; s < 4000; ++s) {
    auto q = permutation(4, s, 0);
    for (int64_t i = 0; i < 4; ++i) ++count[{i, q[i]}];
  }
  for (const auto& [k, c] : count) EXPECT_NEAR(c, 1000, 150);
}

std::vector<std::vector<int32_t>> drain(DataLoader* l, int n) {
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < n; ++i) out.push_back(l->next().input_ids);
  return out;
}

TEST(DataBatch, LoaderShufflesPerEpochDeterministically) {
  auto seqs = make_sequences(synthetic(lengths_for(10, 1, 6)), 8, false);
  DataLoader a(seqs, 3, 0, 99, true), b(seqs, 3, 0, 99, true), c(seqs, 3, 0, 100, true);
  EXPECT_EQ(a.batches_per_epoch(), 4);
  EXPECT_EQ(a.epoch_order(0), b.epoch_order(0));
  EXPECT_NE(a.epoch_order(0), a.epoch_order(1));
  EXPECT_NE(a.epoch_order(0), c.epoch_order(0));
  auto ea = drain(&a, 8), eb = drain(&b, 8);
  EXPECT_EQ(ea, eb);
  EXPECT_EQ(a.position(), (LoaderPosition{2, 0}));
  // Last batch of an epoch holds the remaining 10 - 9 = 1 sequence.
  DataLoader d(seqs, 3, 0, 99, true);
  drain(&d, 3);
  EXPECT_EQ(d.next().rows, 1);
  EXPECT_EQ(d.position(), (LoaderPosition{1, 0}));
  // Without shuffle every epoch is the input order.
  DataLoader e(seqs, 4, 0, 99, false);
  EXPECT_EQ(e.next().input_ids.front(), 1000);
  EXPECT_EQ(e.epoch_order(3), e.epoch_order(0));
}

TEST(DataBatch, LoaderResumesExactlyFromAPosition) {
  auto seqs = make_sequences(synthetic(lengths_for(11, 2, 6)), 8, false);
  DataLoader a(seqs, 2, 0, 5, true);
  drain(&a, 7);  // into epoch 1
  LoaderPosition saved = a.position();
  EXPECT_EQ(saved, (LoaderPosition{1, 2}));
  auto expected = drain(&a, 9);  // crosses into epoch 2
  DataLoader resumed(seqs, 2, 0, 5, true);
  resumed.seek(saved);
  EXPECT_EQ(drain(&resumed, 9), expected);
  EXPECT_THROW(resumed.seek({0, 12}), Error);
  EXPECT_THROW(resumed.seek({-1, 0}), Error);
}

// peek_counts(k) is what collating the next k batches counts (target tokens
// after the shift, non-padding tokens), for packed and unpacked shuffled
// data, across epoch ends; it does not move the loader, and skip(k) lands
// where k calls of next() do.
TEST(DataBatch, PeekCountsEqualTheCollatedCounts) {
  for (bool packing : {false, true}) {
    SCOPED_TRACE(packing ? "packed" : "unpacked");
    auto seqs = make_sequences(synthetic(lengths_for(23, 4, 12)), 16, packing);
    DataLoader counted(seqs, 3, 0, 17, true), collated(seqs, 3, 0, 17, true);
    const int64_t per_epoch = counted.batches_per_epoch();
    for (int64_t k : {int64_t{0}, int64_t{1}, int64_t{2}, per_epoch - 1, per_epoch + 2}) {
      for (int step = 0; step < 3 * per_epoch; ++step) {  // through several epoch ends
        const LoaderPosition at = counted.position();
        const BatchCounts c = counted.peek_counts(k);
        EXPECT_EQ(counted.position(), at);
        BatchCounts want;
        DataLoader ahead = collated;
        for (int64_t b = 0; b < k; ++b) {
          const Batch batch = ahead.next();
          want.target_tokens += batch.target_tokens;
          for (uint8_t m : batch.attention_mask) want.tokens += m;
          int64_t shifted = 0;  // labels[:, 1:] != -100, row by row
          for (int64_t r = 0; r < batch.rows; ++r) {
            for (int64_t t = 1; t < batch.seq_len; ++t) {
              shifted += batch.labels[static_cast<size_t>(r * batch.seq_len + t)] != kIgnoreIndex;
            }
          }
          ASSERT_EQ(shifted, batch.target_tokens);
        }
        ASSERT_EQ(c.target_tokens, want.target_tokens) << "k " << k << " step " << step;
        ASSERT_EQ(c.tokens, want.tokens) << "k " << k << " step " << step;
        // Skipping lands where collating does (next() on odd steps, so
        // peek_counts also runs with the loader's own epoch order cached).
        if (step % 2 == 0) {
          counted.skip(2);
        } else {
          counted.next();
          counted.next();
        }
        collated.next();
        collated.next();
        ASSERT_EQ(counted.position(), collated.position());
      }
    }
    EXPECT_THROW(counted.peek_counts(-1), Error);
    EXPECT_THROW(counted.skip(-1), Error);
  }
}

}  // namespace
}  // namespace loratune::data
