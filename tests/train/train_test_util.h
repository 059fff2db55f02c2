// Shared helpers of tests/train: tiny models, the ref_train fixture, and
// micro-batches built straight from a pre-tokenized JSONL file.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/test_env.h"
#include "trainer/config/config.h"
#include "trainer/data/data.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/model.h"
#include "trainer/train/train.h"

namespace loratune::test {

inline std::string tiny_model(const std::string& variant) {
  return testdata_dir() + "/models/" + variant;
}
inline std::string ref_train_dir() {
  return testdata_dir() + "/ref_train";
}

// {"input_ids", "labels"} lines of `path` as data::Sequences (file order).
inline std::vector<data::Sequence> read_tokenized(const std::string& path) {
  std::vector<data::Sequence> out;
  std::string text = io::read_file(path);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    data::Sequence s;
    s.input_ids = j.at("input_ids").get<std::vector<int32_t>>();
    s.labels = j.at("labels").get<std::vector<int32_t>>();
    for (size_t t = 0; t < s.input_ids.size(); ++t) {
      s.position_ids.push_back(static_cast<int32_t>(t));
      s.segment_ids.push_back(1);
    }
    out.push_back(std::move(s));
  }
  return out;
}

// Consecutive rows of `seqs` in micro-batches of `micro` rows, padded with 0.
inline std::vector<train::MicroBatch> micro_batches(const std::vector<data::Sequence>& seqs,
                                                    size_t micro) {
  std::vector<train::MicroBatch> out;
  for (size_t i = 0; i < seqs.size(); i += micro) {
    std::vector<const data::Sequence*> rows;
    for (size_t j = i; j < std::min(seqs.size(), i + micro); ++j) rows.push_back(&seqs[j]);
    out.push_back(train::to_micro_batch(data::collate(rows, 0), c10::Device(c10::kCPU), false));
  }
  return out;
}

inline double rel_err(double got, double want) {
  return std::abs(got - want) / std::max(std::abs(want), 1e-12);
}

// The reference runs' adapter: LoRA r 8, alpha 16, dropout 0, all linear layers.
inline lora::LoraSpec reference_spec() {
  lora::LoraSpec spec;
  spec.r = 8;
  spec.alpha = 16;
  spec.dropout = 0.0;
  spec.target_modules = {"all-linear"};
  return spec;
}

// reference_spec() injected into `m`, with the reference run's initial
// factors (DIR/init_adapter of ref_train.py's runs).
inline void inject_reference_lora(model::CausalLMImpl& m, const std::string& dir) {
  lora::inject_lora(m, reference_spec());
  lora::load_adapter_weights(dir + "/init_adapter", m);
}

// The worst relative errors of a replayed reference run.
struct ReplayErrors {
  size_t steps = 0;
  double loss = 0, grad_norm = 0, adapter = 0;
};

// Replays on `m` the reference run in `dir` (tests/python/ref_train.py's
// train_lora: ref.json, init_adapter/, train.jsonl, final_adapter/): injects
// LoRA r 8, alpha 16, dropout 0 on all linear layers, loads init_adapter,
// runs the reference's steps with its optimizer and schedule, and expects
// (gtest) each step loss within `loss_tol` and each final adapter tensor
// within `adapter_tol` (relative to its largest value) of the reference's,
// and the same target counts and learning rates.
inline ReplayErrors replay_steps(model::CausalLMImpl& m, const std::string& dir, double loss_tol,
                                 double adapter_tol);
inline ReplayErrors replay_reference_run(model::CausalLMImpl& m, const std::string& dir,
                                         double loss_tol, double adapter_tol) {
  inject_reference_lora(m, dir);
  return replay_steps(m, dir, loss_tol, adapter_tol);
}

// The steps of replay_reference_run on `m`, whose adapters are already
// attached and initialised; the final comparison covers every adapter
// parameter (A, B and any DoRA magnitude) under its PEFT name.
inline ReplayErrors replay_steps(model::CausalLMImpl& m, const std::string& dir, double loss_tol,
                                 double adapter_tol) {
  const auto ref = io::read_json(dir + "/ref.json");
  const auto& steps = ref.at("steps");

  config::TrainLoopConfig cfg;
  cfg.optimizer.lr = ref.at("lr").get<double>();
  cfg.optimizer.weight_decay = ref.at("weight_decay").get<double>();
  cfg.scheduler.name = config::SchedulerName::kCosine;
  cfg.scheduler.warmup_steps = ref.at("warmup").get<int64_t>();
  cfg.max_grad_norm = 1.0;
  const size_t accum = ref.at("accum").get<size_t>();
  train::Trainer trainer(m, cfg, static_cast<int64_t>(steps.size()));
  const auto batches =
      micro_batches(read_tokenized(dir + "/train.jsonl"), ref.at("micro").get<size_t>());
  ReplayErrors worst;
  worst.steps = steps.size();
  EXPECT_EQ(batches.size(), steps.size() * accum);
  if (batches.size() != steps.size() * accum) return worst;
  for (size_t s = 0; s < steps.size(); ++s) {
    std::vector<train::MicroBatch> group(batches.begin() + s * accum,
                                         batches.begin() + (s + 1) * accum);
    train::StepResult r = trainer.step(group, train::StepTotals::of(group));
    const double loss = r.loss.item<double>();
    const double want = steps[s].at("loss").get<double>();
    EXPECT_EQ(r.target_tokens, steps[s].at("targets").get<int64_t>()) << "step " << s;
    EXPECT_EQ(r.lr, steps[s].at("lr").get<double>()) << "step " << s;
    EXPECT_EQ(r.found_inf.item<float>(), 0.0f) << "step " << s;
    EXPECT_LE(rel_err(loss, want), loss_tol) << "step " << s << ": " << loss << " vs " << want;
    worst.loss = std::max(worst.loss, rel_err(loss, want));
    worst.grad_norm = std::max(worst.grad_norm, rel_err(r.grad_norm.item<double>(),
                                                        steps[s].at("grad_norm").get<double>()));
  }
  auto fin = io::SafetensorsFile::open(dir + "/final_adapter/adapter_model.safetensors");
  const auto ours = lora::adapter_tensors(m);
  EXPECT_EQ(ours.size(), fin->tensors().size());
  for (const auto& [name, t] : ours) {
    EXPECT_TRUE(fin->contains(name)) << name;
    if (!fin->contains(name)) continue;
    const at::Tensor want = fin->tensor(name);
    const double err =
        (t - want).abs().max().item<double>() / std::max(want.abs().max().item<double>(), 1e-12);
    EXPECT_LE(err, adapter_tol) << name;
    worst.adapter = std::max(worst.adapter, err);
  }
  return worst;
}

}  // namespace loratune::test
