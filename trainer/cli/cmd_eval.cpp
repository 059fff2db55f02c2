// trainer/cli/cmd_eval.cpp — `loratune eval`: loss, perplexity and target
// token count of a model (+ adapter) on a data file.
//   loratune eval CONFIG [key=value ...] [--data FILE] [--adapter DIR] [--json]
//     model.path, device and data.* from the config; the data default to
//     data.validation (else data.train), the adapter to output.dir/adapter.
//   loratune eval --model DIR [--adapter DIR] --data FILE [--max-seq-len N]
//                 [--batch-size N] [--dtype D] [--device D] [--json]
#include <torch/cuda.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainer/cli/commands.h"
#include "trainer/config/config.h"
#include "trainer/io/error.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"
#include "trainer/tokenizer/tokenizer.h"
#include "trainer/train/train.h"

namespace loratune::cli {
namespace {

struct EvalOptions {
  std::string config;
  std::vector<std::string> overrides;
  std::string model, adapter, data;
  int64_t max_seq_len = 2048;
  int64_t batch_size = 1;
  std::string dtype = "float32";
  std::string device = "auto";
  bool json = false;
};

void run_eval(const EvalOptions& o) {
  std::string model_dir = o.model, adapter = o.adapter, device = o.device;
  at::ScalarType dtype = model::parse_dtype(o.dtype);
  config::DataConfig data_cfg;
  data_cfg.max_seq_len = o.max_seq_len;
  int64_t batch = o.batch_size;
  if (!o.config.empty()) {
    if (!o.model.empty()) throw Error("eval: give a config or --model, not both");
    config::TrainConfig cfg = config::load_config(o.config, o.overrides);
    model_dir = cfg.model.path;
    device = cfg.device;
    dtype = model::parse_dtype(config::to_string(cfg.model.dtype));
    data_cfg = cfg.data;
    if (o.data.empty()) {
      data_cfg.train = cfg.data.validation.empty() ? cfg.data.train : cfg.data.validation;
    }
    if (adapter.empty()) adapter = cfg.output.dir + "/adapter";
    batch = cfg.train.micro_batch_size;
  } else if (model_dir.empty() || o.data.empty()) {
    throw Error("eval: give a config, or --model and --data");
  }
  if (!o.data.empty()) data_cfg.train = {o.data};
  if (device == "auto") device = torch::cuda::is_available() ? "cuda:0" : "cpu";

  model::CausalLM m = model::load_model(model_dir, {dtype, device});
  if (!adapter.empty()) {
    if (!std::filesystem::exists(adapter)) throw Error("eval: adapter '" + adapter + "' not found");
    lora::load_adapter(adapter, *m);
  }
  auto tok = tokenizer::load_tokenizer(model_dir);
  train::EvalResult r = train::evaluate_files(*m, *tok, model_dir, data_cfg, batch);
  if (o.json) {
    nlohmann::ordered_json j;
    j["loss"] = r.loss;
    j["perplexity"] = r.perplexity;
    j["tokens"] = r.target_tokens;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("loss %.6f perplexity %.4f tokens %lld\n", r.loss, r.perplexity,
                static_cast<long long>(r.target_tokens));
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* sub = app.add_subcommand(
      "eval", "Loss, perplexity and target-token count of a model (+ LoRA adapter) on a file.");
  sub->add_option("config", o->config, "YAML training config (optional)");
  sub->add_option("overrides", o->overrides, "key=value overrides of the config");
  sub->add_option("--model", o->model, "Hugging Face model directory (without a config)");
  sub->add_option("--adapter", o->adapter, "PEFT adapter directory");
  sub->add_option("--data", o->data, "JSONL file (any data format)");
  sub->add_option("--max-seq-len", o->max_seq_len, "truncate examples (without a config)");
  sub->add_option("--batch-size", o->batch_size, "sequences per forward pass (without a config)");
  sub->add_option("--dtype", o->dtype, "base weight dtype (without a config)");
  sub->add_option("--device", o->device, "auto | cpu | cuda | cuda:N (without a config)");
  sub->add_flag("--json", o->json, "print one JSON object");
  sub->callback([o] { run_eval(*o); });
}

}  // namespace loratune::cli
