// Packing through the training path (data::make_sequences -> collate ->
// to_micro_batch -> micro_batch_loss_sum): a packed batch gives the same
// per-example summed token losses, and the same LoRA gradients, as the
// examples run one by one without padding. Float32, on the llama, mistral
// (sliding window 64), qwen2 (sliding window 48) and qwen3 tiny models, with
// examples longer than the windows and masked prompts (-100 labels).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/zeros_like.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "common/test_env.h"
#include "train_test_util.h"
#include "trainer/lora/lora.h"
#include "trainer/model/loader.h"

using namespace loratune;

namespace {

constexpr double kRelTol = 1e-5;
const c10::Device kCpu(c10::kCPU);

// An example of `len` random ids; the first `prompt` labels are -100 (a
// prompt with data.train_on_prompt false), the rest are the ids.
data::Example make_example(int64_t len, int64_t prompt, int64_t vocab, at::Generator& g) {
  at::Tensor ids = at::randint(3, vocab, {len}, g, at::TensorOptions().dtype(at::kLong));
  data::Example ex;
  for (int64_t t = 0; t < len; ++t) {
    ex.input_ids.push_back(static_cast<int32_t>(ids[t].item<int64_t>()));
    ex.labels.push_back(t < prompt ? data::kIgnoreIndex : ex.input_ids.back());
  }
  return ex;
}

// Packs `group` into exactly one row (max_seq_len = the group's total length).
data::Sequence pack_one_row(const std::vector<data::Example>& group) {
  int64_t total = 0;
  for (const auto& ex : group) total += static_cast<int64_t>(ex.input_ids.size());
  auto rows = data::make_sequences(group, total, /*packing=*/true);
  EXPECT_EQ(rows.size(), 1u);
  return rows.at(0);
}

// Summed token loss of each segment of each packed row, from one forward of
// the packed micro-batch: out[b][s-1] for segment id s of row b.
std::vector<std::vector<double>> packed_segment_losses(model::CausalLMImpl& m,
                                                       const train::MicroBatch& mb) {
  at::NoGradGuard no_grad;
  model::ForwardOptions fo;
  fo.position_ids = mb.position_ids;
  fo.segment_ids = mb.segment_ids;
  at::Tensor logits = m.forward(mb.input_ids, fo);  // [B,T,V]
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  // ce[b][t] is the loss of logits[b][t] against labels[b][t+1]: [B,T-1]
  at::Tensor ce = at::cross_entropy_loss(logits.slice(1, 0, -1).reshape({-1, V}),
                                         mb.labels.slice(1, 1).reshape({-1}), {},
                                         at::Reduction::None, data::kIgnoreIndex)
                      .view({B, T - 1});
  at::Tensor seg = mb.segment_ids.slice(1, 1);  // segment of each target [B,T-1]
  std::vector<std::vector<double>> out(B);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = mb.segment_ids[b].max().item<int64_t>();
    for (int64_t s = 1; s <= n; ++s) {
      out[b].push_back(ce[b].masked_select(seg[b].eq(s)).sum().item<double>());
    }
  }
  return out;
}

// The index in `examples` of the example whose ids fill segment `s` of `row`.
size_t example_of_segment(const data::Sequence& row, int32_t s,
                          const std::vector<data::Example>& examples) {
  std::vector<int32_t> ids;
  for (size_t t = 0; t < row.input_ids.size(); ++t) {
    if (row.segment_ids[t] == s) ids.push_back(row.input_ids[t]);
  }
  for (size_t i = 0; i < examples.size(); ++i) {
    if (examples[i].input_ids == ids) return i;
  }
  ADD_FAILURE() << "segment " << s << " matches no example";
  return 0;
}

std::vector<at::Tensor> grads_of(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> out;
  for (const auto& p : params) {
    EXPECT_TRUE(p.grad().defined()) << "a LoRA parameter got no gradient";
    out.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
  }
  return out;
}

class Packing : public ::testing::TestWithParam<std::string> {};

TEST_P(Packing, PackedBatchGivesPerExampleLossesAndGradientsOfSeparateRuns) {
  model::CausalLM m = model::load_model(test::tiny_model(GetParam()));
  lora::LoraSpec spec;
  spec.target_modules = {"all-linear"};
  spec.dropout = 0.0;  // dropout masks would differ between the two layouts
  lora::inject_lora(*m, spec);
  auto params = lora::adapter_parameters(*m);
  at::manual_seed(3);
  for (auto& p : params) p.detach().normal_(0, 0.05);  // B nonzero: every grad is nonzero
  m->train();

  // Two rows of 3 and 4 examples of different lengths; 75 and 52 are longer
  // than the sliding windows (64, 48). Prompts of 0 tokens check the packer's
  // -100 at the boundary; the others mask a prompt prefix.
  const int64_t vocab = m->config().vocab_size;
  at::Generator g = at::detail::createCPUGenerator(17);
  const std::vector<std::vector<std::pair<int64_t, int64_t>>> groups = {
      {{75, 20}, {30, 0}, {14, 5}}, {{52, 10}, {23, 7}, {9, 0}, {17, 16}}};
  std::vector<data::Example> examples;
  std::vector<data::Sequence> rows;
  for (const auto& group : groups) {
    std::vector<data::Example> exs;
    for (auto [len, prompt] : group) exs.push_back(make_example(len, prompt, vocab, g));
    rows.push_back(pack_one_row(exs));
    examples.insert(examples.end(), exs.begin(), exs.end());
  }
  ASSERT_EQ(rows[0].segment_ids.back(), 3);
  ASSERT_EQ(rows[1].segment_ids.back(), 4);
  const train::MicroBatch packed =
      train::to_micro_batch(data::collate({&rows[0], &rows[1]}, 0), kCpu, /*packed=*/true);
  ASSERT_EQ(packed.input_ids.size(1), 75 + 30 + 14);  // row 1 is padded

  // Each example alone: one unpadded row.
  std::vector<data::Sequence> alone = data::make_sequences(examples, 128, /*packing=*/false);
  std::vector<double> alone_loss(examples.size());
  std::vector<at::Tensor> grad_sum;
  int64_t alone_targets = 0;
  for (size_t i = 0; i < alone.size(); ++i) {
    train::MicroBatch mb = train::to_micro_batch(data::collate({&alone[i]}, 0), kCpu, false);
    alone_targets += mb.target_tokens;
    for (auto& p : params) p.mutable_grad() = at::Tensor();
    at::Tensor loss = train::micro_batch_loss_sum(*m, mb);
    alone_loss[i] = loss.item<double>();
    loss.backward();
    auto gi = grads_of(params);
    if (grad_sum.empty()) {
      grad_sum = gi;
    } else {
      for (size_t k = 0; k < gi.size(); ++k) grad_sum[k].add_(gi[k]);
    }
  }
  EXPECT_EQ(packed.target_tokens, alone_targets) << "packing dropped or added targets";

  // Per-example losses from one packed forward.
  auto seg_loss = packed_segment_losses(*m, packed);
  double worst_loss = 0;
  for (size_t b = 0; b < rows.size(); ++b) {
    for (size_t s = 0; s < seg_loss[b].size(); ++s) {
      const size_t i = example_of_segment(rows[b], static_cast<int32_t>(s + 1), examples);
      const double rel = std::abs(seg_loss[b][s] - alone_loss[i]) / std::abs(alone_loss[i]);
      worst_loss = std::max(worst_loss, rel);
      EXPECT_LE(rel, kRelTol) << "row " << b << " segment " << s + 1 << ": packed "
                              << seg_loss[b][s] << " vs alone " << alone_loss[i];
    }
  }

  // Gradients of the packed batch's summed loss = sum of per-example ones.
  for (auto& p : params) p.mutable_grad() = at::Tensor();
  at::Tensor packed_loss = train::micro_batch_loss_sum(*m, packed);
  double alone_total = 0;
  for (double l : alone_loss) alone_total += l;
  EXPECT_LE(std::abs(packed_loss.item<double>() - alone_total), kRelTol * alone_total);
  packed_loss.backward();
  auto grad_packed = grads_of(params);
  double worst_grad = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    const double scale = std::max(1.0, grad_sum[k].abs().max().item<double>());
    const double diff = (grad_packed[k] - grad_sum[k]).abs().max().item<double>() / scale;
    worst_grad = std::max(worst_grad, diff);
    EXPECT_LE(diff, kRelTol) << "LoRA tensor " << k;
  }
  EXPECT_GT(grad_sum[0].abs().max().item<double>(), 0.0);
  std::printf("%-18s packed vs alone: max rel loss diff %.3g, max grad diff %.3g (%zu tensors)\n",
              GetParam().c_str(), worst_loss, worst_grad, params.size());
}

INSTANTIATE_TEST_SUITE_P(Variants, Packing, ::testing::ValuesIn(test::variants("packing")),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) {
                             if (ch == '-') ch = '_';
                           }
                           return n;
                         });

}  // namespace
