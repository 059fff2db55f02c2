// trainer/cli/cmd_eval.cpp — `loratune eval`: loss, perplexity and target
// token count of a model (+ adapter) on a data file.
//   loratune eval CONFIG [key=value ...] [--data FILE] [--adapter DIR] [--compare-base] [--json]
//     model.path, device and data.* from the config; the data default to
//     data.validation (else data.train), the adapter to output.dir/adapter.
//   loratune eval --model DIR [--adapter DIR [--compare-base]] --data FILE [--max-seq-len N]
//                 [--batch-size N] [--chat-template NAME] [--dtype D] [--device D] [--json]
//     --chat-template is data.chat_template (auto or a built-in name; with a
//     config it replaces the config's). A model directory without tokenizer
//     files evaluates pre-tokenized data ({"input_ids", "labels"?}).
//   --compare-base (either form) evaluates the same batches twice, with the
//     base model alone and then with the adapter, and prints both (a two-row
//     table, or {"base": {...}, "adapter": {...}} with --json); each row
//     equals what a plain eval without / with the adapter prints.
#include <torch/cuda.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "trainer/cli/commands.h"
#include "trainer/cli/option_values.h"
#include "trainer/config/config.h"
#include "trainer/data/data.h"
#include "trainer/gguf/gguf.h"
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
  std::string max_seq_len = "2048";  // parsed by run_eval (option_values.h)
  std::string batch_size = "1";
  std::string chat_template;  // "": the config's data.chat_template, else auto
  std::string dtype = "float32";
  std::string device = "auto";
  bool json = false;
  bool compare_base = false;
};

// The micro-batches of `data_cfg.train`, tokenized with the tokenizer of
// `model_dir` when it has one; without, the data must be pre-tokenized
// (train::evaluate_files needs a tokenizer, so the batches are built here
// the way it builds them).
std::vector<train::MicroBatch> eval_batches(const model::CausalLMImpl& m,
                                            const std::string& model_dir, config::DataConfig cfg,
                                            int64_t batch_size) {
  cfg.val_fraction = 0.0;
  cfg.validation.clear();
  auto tok = data::load_tokenizer_if_present(model_dir);
  data::PreparedData prepared = data::prepare_data(cfg, /*seed=*/0, tok.get(), model_dir);
  auto seqs = data::make_sequences(prepared.train, cfg.max_seq_len, cfg.packing);
  const int32_t pad = data::pad_id_for_model(tok.get(), model_dir);
  std::vector<train::MicroBatch> batches;
  const size_t bs = static_cast<size_t>(batch_size);
  for (size_t i = 0; i < seqs.size(); i += bs) {
    std::vector<const data::Sequence*> rows;
    for (size_t j = i; j < std::min(seqs.size(), i + bs); ++j) rows.push_back(&seqs[j]);
    batches.push_back(train::to_micro_batch(data::collate(rows, pad), m.device(), cfg.packing));
  }
  return batches;
}

nlohmann::ordered_json to_json(const train::EvalResult& r) {
  nlohmann::ordered_json j;
  j["loss"] = r.loss;
  j["perplexity"] = r.perplexity;
  j["tokens"] = r.target_tokens;
  return j;
}

// --compare-base: one row per model, the numbers in plain eval's format.
void print_comparison(const train::EvalResult& base, const train::EvalResult& tuned) {
  std::printf("%-8s %10s %12s %8s\n", "model", "loss", "perplexity", "tokens");
  for (const auto& [name, r] : {std::pair{"base", &base}, std::pair{"adapter", &tuned}}) {
    std::printf("%-8s %10.6f %12.4f %8lld\n", name, r->loss, r->perplexity,
                static_cast<long long>(r->target_tokens));
  }
}

void run_eval(const EvalOptions& o) {
  std::string model_dir = o.model, adapter = o.adapter, device = o.device;
  at::ScalarType dtype;
  try {
    dtype = model::parse_dtype(o.dtype);
  } catch (const Error& e) {
    throw Error("--dtype: ", e);
  }
  if (const std::string problem = config::device_problem(o.device); !problem.empty()) {
    throw Error("--device: " + problem);
  }
  model::QuantizeOptions quantize;
  config::DataConfig data_cfg;
  // The bounds of data.max_seq_len and train.micro_batch_size in a config.
  data_cfg.max_seq_len = int_option("--max-seq-len", o.max_seq_len, 2, int64_t{1} << 24);
  int64_t batch = int_option("--batch-size", o.batch_size, 1, 65536);
  if (!o.chat_template.empty()) {
    if (const std::string problem = config::chat_template_problem(o.chat_template);
        !problem.empty()) {
      throw Error("--chat-template: " + problem);
    }
  }
  if (!o.config.empty()) {
    if (!o.model.empty()) throw Error("eval: give a config or --model, not both");
    config::TrainConfig cfg = config::load_train_config(o.config, o.overrides);
    model_dir = cfg.model.path;
    device = cfg.device;
    dtype = model::parse_dtype(config::to_string(cfg.model.dtype));
    // The model the run trained: a QLoRA run's base is NF4 here too, so the
    // loss is the one its validation steps reported.
    if (cfg.model.quantize == config::Quantize::kNf4) {
      quantize = {model::Quantization::kNf4, cfg.model.double_quant};
    }
    data_cfg = cfg.data;
    if (o.data.empty()) {
      data_cfg.train = cfg.data.validation.empty() ? cfg.data.train : cfg.data.validation;
    }
    if (adapter.empty()) adapter = cfg.output.dir + "/adapter";
    batch = cfg.train.micro_batch_size;
  } else if (model_dir.empty() || o.data.empty()) {
    throw Error("eval: give a config, or --model and --data");
  }
  if (o.compare_base && adapter.empty()) {
    throw Error("eval: --compare-base needs an adapter (--adapter DIR, or a config)");
  }
  if (!adapter.empty() && !std::filesystem::exists(adapter)) {
    throw Error("eval: adapter '" + adapter + "' not found");
  }
  model_dir = gguf::resolve_model_path(model_dir);  // a .gguf: its import
  if (!o.data.empty()) data_cfg.train = {o.data};
  if (!o.chat_template.empty()) data_cfg.chat_template = o.chat_template;
  if (device == "auto") device = torch::cuda::is_available() ? "cuda:0" : "cpu";

  model::CausalLM m = model::load_model(model_dir, {dtype, device, quantize});
  const std::vector<train::MicroBatch> batches = eval_batches(*m, model_dir, data_cfg, batch);
  if (o.compare_base) {
    // Check the adapter against the model before spending a pass on the base.
    lora::open_adapter(adapter, lora::linear_shapes_of(*m));
    const train::EvalResult base = train::evaluate(*m, batches);
    lora::load_adapter(adapter, *m);
    const train::EvalResult tuned = train::evaluate(*m, batches);
    if (o.json) {
      nlohmann::ordered_json j;
      j["base"] = to_json(base);
      j["adapter"] = to_json(tuned);
      std::printf("%s\n", j.dump().c_str());
    } else {
      print_comparison(base, tuned);
    }
    return;
  }
  if (!adapter.empty()) lora::load_adapter(adapter, *m);
  const train::EvalResult r = train::evaluate(*m, batches);
  if (o.json) {
    std::printf("%s\n", to_json(r).dump().c_str());
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
  sub->add_option("config", o->config,
                  "YAML training config (optional): its model (with model.quantize), "
                  "validation data and output.dir/adapter");
  sub->add_option("overrides", o->overrides, "key=value overrides of the config");
  sub->add_option("--model", o->model,
                  "Hugging Face model directory or .gguf file (without a config)");
  sub->add_option("--adapter", o->adapter, "PEFT adapter directory");
  sub->add_option("--data", o->data, "JSONL file (any data format)");
  sub->add_option("--max-seq-len", o->max_seq_len,
                  "truncate examples, in [2, 16777216] (without a config; default 2048)");
  sub->add_option("--batch-size", o->batch_size,
                  "sequences per forward pass, in [1, 65536] (without a config; default 1)");
  sub->add_option("--chat-template", o->chat_template,
                  "data.chat_template for chat records: auto (the tokenizer's own) or a "
                  "built-in (llama2, llama3, chatml, mistral, gemma, phi3)");
  sub->add_option("--dtype", o->dtype, "base weight dtype (without a config)");
  sub->add_option("--device", o->device, "auto | cpu | cuda | cuda:N (without a config)");
  sub->add_flag("--compare-base", o->compare_base,
                "also evaluate the base model without the adapter and print both side by side");
  sub->add_flag("--json", o->json, "print one JSON object");
  sub->callback([o] { run_eval(*o); });
}

}  // namespace loratune::cli
