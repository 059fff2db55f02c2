// Pre-quantized bitsandbytes NF4 checkpoints ("-bnb-4bit" dirs that
// transformers' save_pretrained writes for a 4-bit model; the ref_nf4
// fixture saves them from two tiny models, with and without double quant):
// the stored states are loaded as they are (bitwise bitsandbytes' tensors,
// and bitwise what quantizing the float model at load gives), the model gives
// transformers' logits on the same dir, QLoRA training on it gives the same
// losses as on the model quantized at load, a merge onto it writes the
// dequantized base plus the delta, and corrupted or unsupported variants are
// refused in one line with the exit status of their error kind.
#include <ATen/ops/matmul.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <iostream>

#include "common/test_env.h"
#include "train/train_test_util.h"
#include "trainer/export/merge.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/bnb_checkpoint.h"
#include "trainer/model/loader.h"
#include "trainer/train/train.h"

namespace fs = std::filesystem;
using namespace loratune;

namespace {

std::string ref_dir(const std::string& variant) {
  return test::testdata_dir() + "/ref_nf4/" + variant;
}

struct Case {
  std::string variant;
  bool double_quant;
  std::string bnb_dir() const { return ref_dir(variant) + (double_quant ? "/bnb-dq" : "/bnb-sq"); }
  std::string logits() const {
    return ref_dir(variant) + (double_quant ? "/bnb-dq" : "/bnb-sq") + "-logits.safetensors";
  }
};

std::string name_of(const ::testing::TestParamInfo<Case>& info) {
  std::string n = info.param.variant + (info.param.double_quant ? "_dq" : "_sq");
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         a.contiguous().reshape({-1}).view(at::kByte).equal(
             b.contiguous().reshape({-1}).view(at::kByte));
}

model::LoadOptions at_load(bool double_quant) {
  model::LoadOptions o;
  o.quantize = {model::Quantization::kNf4, double_quant};
  return o;
}

class BnbCheckpoint : public ::testing::TestWithParam<Case> {};

// Every decoder projection holds bitsandbytes' stored tensors bit for bit,
// which are also the states loratune makes quantizing the float model at
// load; everything else is float32.
TEST_P(BnbCheckpoint, StatesAreTheStoredTensorsAndEqualQuantizingAtLoad) {
  const Case c = GetParam();
  model::CausalLM m = model::load_model(c.bnb_dir());  // no quantize option: the checkpoint decides
  model::CausalLM q = model::load_model(test::tiny_model(c.variant), at_load(c.double_quant));
  const auto ckpt = io::Checkpoint::open(c.bnb_dir());
  std::map<std::string, std::shared_ptr<model::LinearImpl>> ql;
  for (auto& [path, linear] : model::linear_modules(*q)) ql[path] = linear;
  size_t n = 0;
  for (const auto& [path, linear] : model::linear_modules(*m)) {
    const model::Nf4Weight* s = linear->nf4();
    ASSERT_EQ(s != nullptr, model::is_quantized_projection(path)) << path;
    if (!s) continue;
    ++n;
    const std::string w = path + ".weight";
    EXPECT_EQ(s->double_quant(), c.double_quant) << path;
    EXPECT_TRUE(same_bits(s->packed, ckpt.tensor(w))) << path;
    EXPECT_TRUE(same_bits(s->absmax, ckpt.tensor(w + ".absmax"))) << path;
    const model::Nf4Weight* t = ql.at(path)->nf4();
    EXPECT_TRUE(same_bits(s->packed, t->packed)) << path;
    EXPECT_TRUE(same_bits(s->absmax, t->absmax)) << path;
    if (c.double_quant) {
      EXPECT_TRUE(same_bits(s->nested_absmax, ckpt.tensor(w + ".nested_absmax"))) << path;
      EXPECT_TRUE(same_bits(s->nested_absmax, t->nested_absmax)) << path;
      EXPECT_TRUE(same_bits(s->offset, t->offset)) << path;
    }
    EXPECT_TRUE(
        same_bits(model::dequantize_nf4(*s, at::kFloat), model::dequantize_nf4(*t, at::kFloat)))
        << path;
  }
  EXPECT_EQ(n, 7u * static_cast<size_t>(m->config().num_hidden_layers));
  EXPECT_EQ(m->model->embed_tokens->weight.scalar_type(), at::kFloat);
  std::cout
      << c.variant << (c.double_quant ? " dq" : " sq") << ": " << n
      << " stored NF4 states bitwise equal to bitsandbytes' tensors and to quantize-at-load\n";
}

TEST_P(BnbCheckpoint, LogitsEqualTransformersOnTheSameDir) {
  const Case c = GetParam();
  auto ref = io::SafetensorsFile::open(c.logits());
  torch::NoGradGuard g;
  // model.quantize none, nf4 with the other double-quant setting: the
  // stored states decide either way.
  for (const model::LoadOptions& o : {model::LoadOptions{}, at_load(!c.double_quant)}) {
    model::CausalLM m = model::load_model(c.bnb_dir(), o);
    const at::Tensor logits = m->forward(ref->tensor("ids"));
    const at::Tensor want = ref->tensor("logits");
    ASSERT_EQ(logits.sizes(), want.sizes());
    const double diff = (logits - want).abs().max().item<double>();
    std::cout << c.variant << (c.double_quant ? " dq" : " sq") << " (model.quantize "
              << (o.quantize.kind == model::Quantization::kNf4 ? "nf4" : "none")
              << "): logits max abs diff vs transformers on the pre-quantized dir " << diff
              << " (logits max " << want.abs().max().item<double>() << ")\n";
    EXPECT_LE(diff, 1e-4);
  }
}

// QLoRA steps on the pre-quantized dir equal, bitwise, the steps on the
// float model quantized at load: same states, same arithmetic.
TEST_P(BnbCheckpoint, QloraStepsEqualQuantizedAtLoad) {
  const Case c = GetParam();
  const std::string dir = ref_dir(c.variant);
  const auto ref = io::read_json(dir + "/ref.json");
  auto losses = [&](model::CausalLMImpl& m) {
    test::inject_reference_lora(m, dir);
    config::TrainLoopConfig cfg;
    cfg.optimizer.lr = ref.at("lr").get<double>();
    cfg.max_grad_norm = 1.0;
    const int64_t steps = 4;
    train::Trainer trainer(m, cfg, steps);
    const auto batches = test::micro_batches(test::read_tokenized(dir + "/train.jsonl"), 2);
    std::vector<double> out;
    for (int64_t s = 0; s < steps; ++s) {
      const std::vector<train::MicroBatch> mb{batches.at(s)};
      out.push_back(trainer.step(mb, train::StepTotals::of(mb)).loss.item<double>());
    }
    return out;
  };
  model::CausalLM stored = model::load_model(c.bnb_dir());
  model::CausalLM quantized =
      model::load_model(test::tiny_model(c.variant), at_load(c.double_quant));
  const std::vector<double> a = losses(*stored), b = losses(*quantized);
  EXPECT_EQ(a, b);
  EXPECT_NE(a.front(), a.back());  // training moved
  std::cout << c.variant << (c.double_quant ? " dq" : " sq") << ": " << a.size()
            << " QLoRA steps, losses " << a.front() << " .. " << a.back()
            << (a == b ? " bitwise equal" : " DIFFER") << " to quantize-at-load\n";
}

// A merge onto the pre-quantized base writes dequantize(state) + s·B·A as
// float32 (never re-quantized, no quantization_config, no state tensors):
// the same tensors as the QLoRA merge of the float model quantized alike.
TEST_P(BnbCheckpoint, MergeWritesDequantizedBasePlusDelta) {
  const Case c = GetParam();
  const std::string tmp = test::make_temp_dir("bnb-merge");
  exporter::MergeOptions mo;
  mo.model_dir = c.bnb_dir();
  mo.adapter_dir = ref_dir(c.variant) + "/final_adapter";
  mo.out_dir = tmp + "/merged";
  // Also says nf4 with another double quant: the stored states win.
  mo.base_quantize = {model::Quantization::kNf4, !c.double_quant};
  exporter::merge_adapter(mo);
  exporter::MergeOptions qo = mo;
  qo.model_dir = test::tiny_model(c.variant);
  qo.out_dir = tmp + "/qlora";
  qo.base_quantize = {model::Quantization::kNf4, c.double_quant};
  exporter::merge_adapter(qo);

  const std::string card = io::read_file(mo.out_dir + "/README.md");
  EXPECT_NE(card.find("pre-quantized by bitsandbytes"), std::string::npos) << card;
  EXPECT_FALSE(io::read_json(mo.out_dir + "/config.json").contains("quantization_config"));
  const auto out = io::Checkpoint::open(mo.out_dir);
  const auto want = io::Checkpoint::open(qo.out_dir);
  EXPECT_EQ(out.names(), want.names());
  for (const auto& n : out.names()) {
    EXPECT_EQ(out.info(n).scalar_type, at::kFloat) << n;
    EXPECT_TRUE(same_bits(out.tensor(n), want.tensor(n))) << n;
  }
  // And W' = dequantize(state) + 2·B·A (alpha 16 / r 8), directly.
  model::CausalLM base = model::load_model(c.bnb_dir());
  const auto adapter = io::SafetensorsFile::open(mo.adapter_dir + "/adapter_model.safetensors");
  double worst = 0;
  for (const auto& [path, linear] : model::linear_modules(*base)) {
    if (!linear->nf4()) continue;
    const std::string a = "base_model.model." + path;
    const at::Tensor w =
        model::dequantize_nf4(*linear->nf4(), at::kFloat) +
        at::matmul(adapter->tensor(a + ".lora_B.weight"), adapter->tensor(a + ".lora_A.weight")) *
            2.0;
    worst = std::max(worst, (out.tensor(path + ".weight") - w).abs().max().item<double>());
  }
  std::cout << c.variant << (c.double_quant ? " dq" : " sq")
            << ": merged vs dequantized + delta max abs diff " << worst << "\n";
  EXPECT_LE(worst, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Dirs, BnbCheckpoint,
                         ::testing::Values(Case{"llama-rope3-tied", true},
                                           Case{"llama-rope3-tied", false}, Case{"qwen2", true},
                                           Case{"qwen2", false}),
                         name_of);

// A copy of the double-quantized llama dir with `edit` applied to its
// tensors (owned copies, in file order) and `edit_config` to config.json.
std::string corrupted_copy(const std::string& tag,
                           const std::function<void(io::NamedTensors&)>& edit,
                           const std::function<void(nlohmann::json&)>& edit_config = {}) {
  const std::string src = ref_dir("llama-rope3-tied") + "/bnb-dq";
  const std::string dir = test::make_temp_dir("bnb-" + tag);
  auto f = io::SafetensorsFile::open(src + "/model.safetensors");
  io::NamedTensors tensors;
  for (const auto& info : f->tensors())
    tensors.emplace_back(info.name, f->tensor(info.name).clone());
  edit(tensors);
  io::save_file(tensors, dir + "/model.safetensors");
  nlohmann::json cfg = io::read_json(src + "/config.json");
  if (edit_config) edit_config(cfg);
  test::write_file(dir + "/config.json", cfg.dump(2));
  return dir;
}

at::Tensor& tensor_of(io::NamedTensors& t, const std::string& name) {
  for (auto& [n, v] : t) {
    if (n == name) return v;
  }
  throw std::runtime_error("no tensor " + name);
}

at::Tensor json_bytes(const std::string& s) {
  return at::from_blob(const_cast<char*>(s.data()), {static_cast<int64_t>(s.size())}, at::kByte)
      .clone();
}

std::string state_json(io::NamedTensors& t, const std::string& name) {
  const at::Tensor b = tensor_of(t, name);
  return std::string(reinterpret_cast<const char*>(b.data_ptr<uint8_t>()), b.numel());
}

const std::string kW = "model.layers.1.self_attn.q_proj.weight";
const std::string kState = kW + ".quant_state.bitsandbytes__nf4";

TEST(BnbCheckpointErrors, CorruptedOrUnsupportedDirsAreRefusedInOneLine) {
  struct Bad {
    std::string name;
    std::string dir;
    std::vector<std::string> expect;
    int status;
  };
  auto replace = [](std::string s, const std::string& from, const std::string& to) {
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from << " in " << s;
    return at == std::string::npos ? s : s.replace(at, from.size(), to);
  };
  const std::vector<Bad> cases = {
      {"absmax_length",
       corrupted_copy("absmax",
                      [](io::NamedTensors& t) {
                        at::Tensor& a = tensor_of(t, kW + ".absmax");
                        a = a.narrow(0, 0, a.size(0) - 1).clone();
                      }),
       {"model.safetensors: tensor '" + kW + ".absmax': is U8 [63], expected U8 [64]"},
       5},
      {"quant_map_altered",
       corrupted_copy("quant-map",
                      [](io::NamedTensors& t) {
                        at::Tensor& m = tensor_of(t, kW + ".quant_map");
                        m[3] = m[3].item<float>() * 1.0001f;
                      }),
       {"tensor '" + kW + ".quant_map': is not the NF4 code"},
       5},
      {"nested_quant_map_altered",
       corrupted_copy(
           "nested-map",
           [](io::NamedTensors& t) { tensor_of(t, kW + ".nested_quant_map")[0] = 0.5f; }),
       {"tensor '" + kW + ".nested_quant_map': is not bitsandbytes' dynamic map"},
       5},
      {"blocksize_128",
       corrupted_copy("blocksize",
                      [&](io::NamedTensors& t) {
                        tensor_of(t, kState) = json_bytes(replace(
                            state_json(t, kState), "\"blocksize\": 64", "\"blocksize\": 128"));
                      }),
       {"tensor '" + kState + "': blocksize 128 is not supported (only 64"},
       6},
      {"bad_json",
       corrupted_copy("json",
                      [&](io::NamedTensors& t) {
                        const std::string s = state_json(t, kState);
                        tensor_of(t, kState) = json_bytes(s.substr(0, s.size() - 5));
                      }),
       {"tensor '" + kState + "': is not a JSON object"},
       5},
      {"shape_disagrees",
       corrupted_copy("shape",
                      [&](io::NamedTensors& t) {
                        tensor_of(t, kState) = json_bytes(replace(
                            state_json(t, kState), "\"shape\": [64, 64]", "\"shape\": [32, 128]"));
                      }),
       {"tensor '" + kState + "': shape [32,128] but config.json implies [64, 64]"},
       5},
      {"double_quant_flag_disagrees",
       corrupted_copy(
           "dqflag", [](io::NamedTensors&) {},
           [](nlohmann::json& j) {
             j["quantization_config"]["bnb_4bit_use_double_quant"] = false;
           }),
       {"has double-quant fields but config.json's quantization_config.bnb_4bit_use_double_quant "
        "is false"},
       5},
      {"fp4",
       ref_dir("llama-rope3-tied") + "/bnb-fp4",
       {"key \"quantization_config.bnb_4bit_quant_type\"",
        "\"fp4\" is not supported (only \"nf4\")"},
       6},
      {"load_in_8bit",
       corrupted_copy(
           "int8", [](io::NamedTensors&) {},
           [](nlohmann::json& j) { j["quantization_config"]["load_in_8bit"] = true; }),
       {"8-bit (LLM.int8) checkpoints are not supported"},
       6},
      {"gptq",
       corrupted_copy(
           "gptq", [](io::NamedTensors&) {},
           [](nlohmann::json& j) {
             j["quantization_config"] = {{"quant_method", "gptq"}};
           }),
       {"\"gptq\" is not supported (loratune reads bitsandbytes 4-bit NF4 checkpoints)"},
       6},
      {"packed_size",
       corrupted_copy("packed",
                      [](io::NamedTensors& t) {
                        at::Tensor& p = tensor_of(t, kW);
                        p = p.narrow(0, 0, p.size(0) - 1).clone();
                      }),
       {"the checkpoint's " + kW + " is U8 [2047, 1]"},
       5},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.name);
    // stdout (inspect's description) dropped: the error line is on stderr.
    const test::RunResult r = test::run("{ " + test::quote(test::loratune_bin()) +
                                        " inspect --load " + test::quote(b.dir) + " >/dev/null; }");
    EXPECT_EQ(r.status, b.status) << r.out;
    EXPECT_EQ(r.out.rfind("loratune: error: ", 0), 0u) << r.out;
    EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "not one line:\n" << r.out;
    for (const auto& e : b.expect) {
      EXPECT_NE(r.out.find(e), std::string::npos) << "'" << e << "' not in: " << r.out;
    }
    std::cout << b.name << ": " << r.out;
  }
}

TEST(BnbCheckpointCli, InspectShowsTheQuantizationAndLoads) {
  for (const std::string kind : {"bnb-dq", "bnb-sq"}) {
    const std::string dir = ref_dir("qwen2") + "/" + kind;
    const test::RunResult r = test::run(test::quote(test::loratune_bin()) +
                                        " inspect --json --load " + test::quote(dir) + " 2>&1");
    ASSERT_EQ(r.status, 0) << r.out;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    EXPECT_TRUE(j["config_checkpoint_problems"].empty()) << r.out;
    EXPECT_EQ(j["quantization"]["type"], "nf4");
    EXPECT_EQ(j["quantization"]["double_quant"], kind == "bnb-dq");
    EXPECT_EQ(j["quantization"]["quantized_weights"], 7 * j["num_hidden_layers"].get<int64_t>());
    EXPECT_EQ(j["parameters"].get<int64_t>(),
              model::parameter_count(model::load_config(test::tiny_model("qwen2"))));
  }
}

// A command that writes the stored tensors as they are (export-gguf) asks
// check_checkpoint not to accept 4-bit weights: refused in one line.
TEST(BnbCheckpointCli, FullPrecisionOnlyReadersRefuse) {
  const std::string dir = ref_dir("qwen2") + "/bnb-dq";
  const model::ModelConfig c = model::load_config(dir);
  const io::Checkpoint ckpt = io::Checkpoint::open(dir);
  EXPECT_NO_THROW(model::check_checkpoint(dir, c, ckpt, true));
  try {
    model::check_checkpoint(dir, c, ckpt);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("bitsandbytes 4-bit NF4 checkpoint"), std::string::npos);
  }
  // 4-bit weights under a config.json without quantization_config.
  const std::string bare = corrupted_copy(
      "noconfig", [](io::NamedTensors&) {},
      [](nlohmann::json& j) { j.erase("quantization_config"); });
  const auto problems =
      model::checkpoint_problems(model::load_config(bare), io::Checkpoint::open(bare));
  ASSERT_FALSE(problems.empty());
  EXPECT_NE(problems.back().find("bitsandbytes 4-bit weights"), std::string::npos)
      << problems.back();
}

}  // namespace
