// `loratune merge`: base model + PEFT adapter -> merged Hugging Face model.
#include <cstdio>

#include "trainer/cli/commands.h"
#include "trainer/export/merge.h"
#include "trainer/io/error.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/loader.h"

namespace loratune::cli {

void add_merge_command(CLI::App& app) {
  auto opt = std::make_shared<exporter::MergeOptions>();
  auto dtype = std::make_shared<std::string>();
  auto shard = std::make_shared<std::string>("5GB");
  CLI::App* cmd = app.add_subcommand(
      "merge",
      "Merge a LoRA adapter into its base model and write a Hugging Face model directory "
      "(sharded safetensors + index, config.json, tokenizer files, README.md model card). "
      "W' = W + s*B@A in float32, cast once; streams tensor by tensor; the output appears "
      "atomically under --out.");
  cmd->add_option("--model", opt->model_dir, "Base model directory (Hugging Face layout)")
      ->required();
  cmd->add_option("--adapter", opt->adapter_dir,
                  "PEFT adapter directory (adapter_config.json + adapter_model.safetensors)")
      ->required();
  cmd->add_option("--out", opt->out_dir, "Output directory (must not exist unless --overwrite)")
      ->required();
  cmd->add_option("--dtype", *dtype,
                  "Output dtype: bfloat16, float16 or float32 (default: the base model's)");
  cmd->add_option("--shard-size", *shard,
                  "Largest shard, e.g. 5GB, 256MB, 500MiB (default 5GB, as transformers)");
  cmd->add_flag("--overwrite", opt->overwrite, "Replace an existing --out directory");
  cmd->callback([opt, dtype, shard] {
    if (!dtype->empty()) opt->dtype = model::parse_dtype(*dtype);
    opt->max_shard_bytes = io::parse_size(*shard);
    exporter::merge_adapter(*opt);
    std::fprintf(stderr, "merged %s + %s -> %s\n", opt->model_dir.c_str(), opt->adapter_dir.c_str(),
                 opt->out_dir.c_str());
  });
}

}  // namespace loratune::cli
