// `loratune import`: a llama.cpp GGUF file -> a Hugging Face model directory.
#include <cstdio>
#include <string>

#include "trainer/cli/commands.h"
#include "trainer/cli/paths.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/error.h"

namespace loratune::cli {

void add_import_command(CLI::App& app) {
  auto opt = std::make_shared<gguf::ImportOptions>();
  auto dtype = std::make_shared<std::string>("float32");
  CLI::App* cmd = app.add_subcommand(
      "import",
      "Convert a GGUF file (llama.cpp; architectures llama/mistral, qwen2, qwen3, gemma2, "
      "gemma3, phi3; tensors F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K) into a "
      "Hugging Face model directory: config.json, generation_config.json, model.safetensors "
      "(dequantized; llama Q/K rows un-permuted, Gemma norms stored as 1 + w turned back), "
      "tokenizer.json, tokenizer_config.json and chat_template.jinja. The output appears "
      "atomically under --out.");
  cmd->add_option("file", opt->gguf_path, "The .gguf file")->required();
  cmd->add_option(
         "--out", opt->out_dir,
         "Output directory (must not exist unless --overwrite; never the GGUF file itself)")
      ->required();
  cmd->add_option("--dtype", *dtype,
                  "Weight dtype: float32 (default: the exact dequantized values), bfloat16 or "
                  "float16")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  cmd->add_flag("--overwrite", opt->overwrite, "Replace an existing --out directory");
  cmd->callback([opt, dtype] {
    refuse_output_over_inputs("--out", opt->out_dir, {{"file", opt->gguf_path}});
    opt->dtype = *dtype == "float32"    ? at::kFloat
                 : *dtype == "bfloat16" ? at::kBFloat16
                                        : at::kHalf;
    gguf::import_gguf(*opt);
    std::fprintf(stderr, "imported %s -> %s\n", opt->gguf_path.c_str(), opt->out_dir.c_str());
  });
}

}  // namespace loratune::cli
