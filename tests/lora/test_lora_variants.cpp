// DoRA, PiSSA and OLoRA against PEFT (tests/python/ref_lora_variants.py, the
// lora_variants fixture), per case "<kind>-<family>":
//   * loratune's fresh adapter equals PEFT's (DoRA magnitude; PiSSA / OLoRA
//     factors and residual base weights);
//   * 16 training steps give PEFT's step losses and final parameters;
//   * the trained model gives PEFT's logits; loratune's saved adapter merged
//     onto the original base gives PEFT's merged weights and the unmerged
//     logits;
//   * loratune applies PEFT's trained adapter (final_adapter, or for PiSSA /
//     OLoRA the converted final_converted) with PEFT's logits, and PEFT
//     applies loratune's with loratune's logits (ref_lora_variants.py check).
// Plus: resuming a PiSSA run from a checkpoint is bitwise, and adapters that
// lie about DoRA are refused.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/max.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "common/test_env.h"
#include "train/train_test_util.h"
#include "trainer/export/merge.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"

using namespace loratune;
namespace fs = std::filesystem;

namespace {

std::string variants_dir() {
  return test::testdata_dir() + "/lora_variants";
}

// max |got - want| / max |want|
double rel_max(const at::Tensor& got, const at::Tensor& want) {
  const double scale = std::max(want.abs().max().item<double>(), 1e-12);
  return (got.to(at::kFloat) - want.to(at::kFloat)).abs().max().item<double>() / scale;
}

at::Tensor logits_of(model::CausalLMImpl& m, const at::Tensor& ids) {
  at::NoGradGuard no_grad;
  return m.forward(ids.unsqueeze(0)).squeeze(0).to(at::kFloat);
}

lora::LoraSpec spec_for(const std::string& kind) {
  lora::LoraSpec spec = test::reference_spec();
  spec.use_dora = kind == "dora";
  if (kind == "pissa") spec.init = lora::LoraInit::kPissa;
  if (kind == "olora") spec.init = lora::LoraInit::kOlora;
  return spec;
}

struct Case {
  std::string name, kind, family;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const char* kind : {"dora", "pissa", "olora"}) {
    for (const char* family : {"llama-rope3-tied", "qwen3"}) {
      out.push_back({std::string(kind) + "-" + family, kind, family});
    }
  }
  return out;
}

class LoraVariants : public ::testing::TestWithParam<Case> {};

TEST_P(LoraVariants, InitTrainMergeAndPeftBothWays) {
  const Case c = GetParam();
  const std::string dir = variants_dir() + "/" + c.name;
  const std::string base_dir = test::tiny_model(c.family);
  const lora::LoraSpec spec = spec_for(c.kind);

  // 1. The fresh adapter, as PEFT's init makes it.
  model::CausalLM m = model::load_model(base_dir);
  lora::inject_lora(*m, spec);
  auto fresh = io::SafetensorsFile::open(dir + "/fresh.safetensors");
  double init_err = 0;
  size_t compared = 0;
  for (const auto& [name, t] : lora::adapter_tensors(*m)) {
    // DoRA's A is random (another generator than PEFT's); its magnitude is
    // the row norm of W (B = 0) and must match.
    if (c.kind == "dora" && name.find("magnitude") == std::string::npos) continue;
    ASSERT_TRUE(fresh->contains(name)) << name;
    init_err = std::max(init_err, rel_max(t, fresh->tensor(name)));
    ++compared;
  }
  if (c.kind != "dora") {
    for (const auto& [path, linear] : model::linear_modules(*m)) {
      if (!linear->adapter()) continue;
      init_err = std::max(init_err, rel_max(linear->weight, fresh->tensor(path + ".weight")));
      ++compared;
    }
  }
  EXPECT_GT(compared, 0u);
  EXPECT_LE(init_err, 1e-5) << "fresh adapter vs PEFT's";

  // 2. Training: the reference's steps.
  if (c.kind == "dora") lora::load_adapter_weights(dir + "/init_adapter", *m);
  const test::ReplayErrors e = test::replay_steps(*m, dir, 1e-4, 1e-3);

  // 3. The trained model's logits.
  auto ref = io::SafetensorsFile::open(dir + "/ref.safetensors");
  const at::Tensor ids = ref->tensor("input_ids").clone();
  m->eval();
  const at::Tensor ours = logits_of(*m, ids);
  const double trained_diff = (ours - ref->tensor("logits")).abs().max().item<double>();
  EXPECT_LE(trained_diff, 1e-4);

  // 4. Saved, then merged onto the original base: PEFT's merged weights, and
  // the merged model computes what the unmerged one does.
  const std::string ours_dir = dir + "/ours";
  fs::remove_all(ours_dir);
  lora::save_adapter(ours_dir, *m, spec, /*overwrite=*/false);
  io::save_file({{"input_ids", ids}, {"logits", ours}}, dir + "/ours.safetensors");
  exporter::MergeOptions opt;
  opt.model_dir = base_dir;
  opt.adapter_dir = ours_dir;
  opt.out_dir = dir + "/merged_ours";
  opt.overwrite = true;
  exporter::merge_adapter(opt);
  io::Checkpoint merged = io::Checkpoint::open(opt.out_dir);
  auto peft_merged = io::SafetensorsFile::open(dir + "/merged.safetensors");
  double merge_err = 0;
  for (const io::TensorInfo& info : peft_merged->tensors()) {
    merge_err =
        std::max(merge_err, rel_max(merged.tensor(info.name), peft_merged->tensor(info.name)));
  }
  EXPECT_LE(merge_err, 1e-5);
  model::CausalLM mm = model::load_model(opt.out_dir);
  mm->eval();
  const double merged_vs_unmerged = (logits_of(*mm, ids) - ours).abs().max().item<double>();
  EXPECT_LE(merged_vs_unmerged, 1e-4);

  // 5. loratune applies PEFT's trained adapter on the original base.
  model::CausalLM p = model::load_model(base_dir);
  p->eval();
  lora::load_adapter(dir + (c.kind == "dora" ? "/final_adapter" : "/final_converted"), *p);
  const double peft_adapter_diff =
      (logits_of(*p, ids) - ref->tensor("logits")).abs().max().item<double>();
  EXPECT_LE(peft_adapter_diff, 1e-4);

  // 6. PEFT applies loratune's.
  const std::string check =
      test::run_python("tests/python/ref_lora_variants.py",
                       "check --models " + test::quote(test::testdata_dir() + "/models") +
                           " --dir " + test::quote(variants_dir()) + " --case " + c.name);

  std::cout << c.name << ": init rel err " << init_err << "; " << e.steps
            << " steps, max rel err loss " << e.loss << ", grad_norm " << e.grad_norm
            << ", final params " << e.adapter << "; trained logits max |diff| " << trained_diff
            << "; merged weights rel err " << merge_err << ", merged vs unmerged logits "
            << merged_vs_unmerged << "; PEFT's adapter in loratune: logits " << peft_adapter_diff
            << "\n"
            << check;
}

INSTANTIATE_TEST_SUITE_P(Cases, LoraVariants, ::testing::ValuesIn(cases()), [](const auto& info) {
  std::string n = info.param.name;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
});

// A fresh DoRA adapter leaves the model's outputs unchanged (m = ‖W‖, B = 0).
TEST(Dora, FreshAdapterIsIdentity) {
  const std::string base_dir = test::tiny_model("qwen3");
  model::CausalLM base = model::load_model(base_dir);
  model::CausalLM m = model::load_model(base_dir);
  base->eval();
  m->eval();
  lora::inject_lora(*m, spec_for("dora"));
  const at::Tensor ids = at::arange(3, 20, at::kLong);
  EXPECT_LE((logits_of(*m, ids) - logits_of(*base, ids)).abs().max().item<double>(), 1e-5);
}

// PiSSA: a run resumed from its checkpoint ends bitwise where the unbroken
// run ends (the residual base is rebuilt from the original weights, the
// parameters come from the checkpoint).
TEST(Pissa, ResumeFromCheckpointIsBitwise) {
  const std::string dir = variants_dir() + "/pissa-qwen3";
  const auto ref = io::read_json(dir + "/ref.json");
  const auto batches = test::micro_batches(test::read_tokenized(dir + "/train.jsonl"), 2);
  const lora::LoraSpec spec = spec_for("pissa");
  config::TrainLoopConfig cfg;
  cfg.optimizer.lr = 1e-3;
  cfg.scheduler.warmup_steps = 1;
  cfg.max_grad_norm = 1.0;
  auto group = [&](size_t s) {
    return std::vector<train::MicroBatch>(batches.begin() + 3 * s, batches.begin() + 3 * s + 3);
  };
  auto step = [&](train::Trainer& t, size_t s) {
    const std::vector<train::MicroBatch> mb = group(s);
    t.step(mb, train::StepTotals::of(mb));
  };
  const std::string run = dir + "/resume_run";
  fs::remove_all(run);
  fs::create_directories(run);

  model::CausalLM a = model::load_model(test::tiny_model("qwen3"));
  lora::inject_lora(*a, spec);
  train::Trainer ta(*a, cfg, 4);
  for (size_t s = 0; s < 2; ++s) step(ta, s);
  train::TrainState st;
  st.step = 2;
  st.total_steps = 4;
  const std::string ckpt = train::save_checkpoint(run, *a, spec, ta.optimizer(), st, 0);
  for (size_t s = 2; s < 4; ++s) step(ta, s);

  model::CausalLM b = model::load_model(test::tiny_model("qwen3"));
  lora::inject_lora(*b, spec);
  train::Trainer tb(*b, cfg, 4);
  const train::TrainState loaded = train::load_checkpoint(ckpt, *b, tb.optimizer());
  tb.set_step_count(loaded.step);
  for (size_t s = 2; s < 4; ++s) step(tb, s);

  const auto pa = lora::adapter_tensors(*a);
  const auto pb = lora::adapter_tensors(*b);
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(pa[i].second.equal(pb[i].second)) << pa[i].first;
  // The checkpoint's adapter/ is the rank-2r plain LoRA a user can load.
  const lora::LoraSpec saved = lora::read_adapter_config(ckpt + "/adapter");
  EXPECT_EQ(saved.r, 16);
  EXPECT_EQ(saved.alpha, 32.0);
  EXPECT_EQ(saved.init, lora::LoraInit::kDefault);
}

// An adapter whose config and tensors disagree about DoRA is refused.
TEST(Dora, MagnitudeMismatchRefused) {
  const std::string src = variants_dir() + "/dora-qwen3/final_adapter";
  const std::string bad = variants_dir() + "/dora-qwen3/bad_adapter";
  fs::remove_all(bad);
  fs::create_directories(bad);
  fs::copy_file(src + "/adapter_config.json", bad + "/adapter_config.json");
  auto file = io::SafetensorsFile::open(src + "/adapter_model.safetensors");
  io::NamedTensors kept;
  for (const io::TensorInfo& info : file->tensors()) {
    if (info.name.find("layers.1.mlp.down_proj.lora_magnitude_vector") != std::string::npos)
      continue;
    kept.emplace_back(info.name, file->tensor(info.name));
  }
  io::save_file(kept, bad + "/adapter_model.safetensors");
  model::CausalLM m = model::load_model(test::tiny_model("qwen3"));
  try {
    lora::load_adapter(bad, *m);
    FAIL() << "an adapter missing a DoRA magnitude was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lora_magnitude_vector' is missing"), std::string::npos)
        << e.what();
  }
  // The magnitudes of a non-DoRA config are refused too.
  std::string cfg = test::read_file(src + "/adapter_config.json");
  const size_t at = cfg.find("\"use_dora\": true");
  ASSERT_NE(at, std::string::npos);
  cfg.replace(at, 16, "\"use_dora\": false");
  io::save_file(kept, bad + "/adapter_model.safetensors");
  io::write_file_atomic(bad + "/adapter_config.json", cfg);
  model::CausalLM m2 = model::load_model(test::tiny_model("qwen3"));
  try {
    lora::load_adapter(bad, *m2);
    FAIL() << "DoRA magnitudes under use_dora false were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("use_dora is false"), std::string::npos) << e.what();
  }
}

}  // namespace
