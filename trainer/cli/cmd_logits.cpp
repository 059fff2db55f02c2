// trainer/cli/cmd_logits.cpp — `loratune logits`: the logits of one sequence.
#include <ATen/core/Tensor.h>
#include <ATen/ops/tensor.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cctype>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "trainer/cli/commands.h"
#include "trainer/cli/paths.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"

namespace loratune::cli {
namespace {

struct LogitsOptions {
  std::string model_dir;
  std::string adapter_dir;
  std::string ids;
  std::string out;
  std::string dtype = "float32";
  std::string device = "cpu";
  bool overwrite = false;
};

}  // namespace

std::vector<int64_t> parse_token_ids(const std::string& text, int64_t vocab_size) {
  std::vector<int64_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    if (std::isspace(static_cast<unsigned char>(text[i])) || text[i] == ',') {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < text.size() && !std::isspace(static_cast<unsigned char>(text[j])) && text[j] != ',')
      ++j;
    const std::string tok = text.substr(i, j - i);
    size_t used = 0;
    int64_t id = -1;
    try {
      id = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != tok.size()) throw Error("--ids: \"" + tok + "\" is not an integer token id");
    if (id < 0 || id >= vocab_size) {
      throw Error("--ids: token id " + tok + " is outside the vocabulary [0, " +
                  std::to_string(vocab_size) + ")");
    }
    ids.push_back(id);
    i = j;
  }
  if (ids.empty()) throw Error("--ids: no token ids given");
  return ids;
}

namespace {

void run_logits(LogitsOptions o) {
  refuse_output_over_inputs("--out", o.out,
                            {{"--model", o.model_dir}, {"--adapter", o.adapter_dir}});
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::symlink_status(o.out, ec)) && !o.overwrite) {
    throw Error("--out: '" + o.out + "' already exists (pass --overwrite to replace it)");
  }
  io::refuse_unreplaceable(o.out, /*want_dir=*/false);
  o.model_dir = gguf::resolve_model_path(o.model_dir);  // a .gguf: its import
  model::LoadOptions lo;
  lo.dtype = model::parse_dtype(o.dtype);
  lo.device = o.device;
  model::CausalLM lm = model::load_model(o.model_dir, lo);
  if (!o.adapter_dir.empty()) lora::load_adapter(o.adapter_dir, *lm);  // unmerged
  lm->eval();
  const std::vector<int64_t> ids = parse_token_ids(o.ids, lm->config().vocab_size);

  torch::NoGradGuard no_grad;
  at::Tensor input = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);  // [1,T]
  at::Tensor logits = lm->forward(input);                                                 // [1,T,V]
  at::Tensor out = logits[0].to(at::kFloat).to(at::kCPU).contiguous();                    // [T,V]
  io::save_file({{"logits", out}}, o.out,
                {{"model", o.model_dir},
                 {"dtype", model::dtype_string(lo.dtype)},
                 {"device", o.device},
                 {"ids", o.ids}});
}

}  // namespace

void add_logits_command(CLI::App& app) {
  auto opts = std::make_shared<LogitsOptions>();
  CLI::App* cmd = app.add_subcommand(
      "logits",
      "Run a model on one sequence of token ids and write its logits.\n"
      "The output is a safetensors file with one float32 tensor \"logits\" of shape\n"
      "[T, vocab_size] (whatever dtype the model ran in), for comparing loratune with\n"
      "transformers or checking a checkpoint.\n"
      "Example: loratune logits --model ./Llama-3.2-1B --ids \"128000 791 6864\" --out "
      "l.safetensors");
  cmd->add_option("--model", opts->model_dir,
                  "Hugging Face model directory (config.json + *.safetensors) or .gguf file")
      ->required();
  cmd->add_option("--adapter", opts->adapter_dir,
                  "PEFT adapter directory applied on top of the model (not merged)");
  cmd->add_option("--ids", opts->ids, "token ids, separated by spaces or commas")->required();
  cmd->add_option("--out", opts->out,
                  "output .safetensors file (written atomically; must not exist unless "
                  "--overwrite)")
      ->required();
  cmd->add_flag("--overwrite", opts->overwrite, "replace an existing --out file");
  cmd->add_option("--dtype", opts->dtype,
                  "dtype to load the weights in: float32, bfloat16, float16")
      ->capture_default_str();
  cmd->add_option("--device", opts->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->callback([opts] { run_logits(*opts); });
}

}  // namespace loratune::cli
