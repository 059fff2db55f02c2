// `loratune export-gguf`: a model (+ LoRA adapter, merged) -> one GGUF file
// for llama.cpp / Ollama / LM Studio, or the adapter alone as llama.cpp's
// LoRA adapter GGUF.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "trainer/cli/commands.h"
#include "trainer/cli/paths.h"
#include "trainer/gguf/export.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/lock.h"

namespace loratune::cli {

void add_export_gguf_command(CLI::App& app) {
  auto opt = std::make_shared<gguf::ExportOptions>();
  auto type = std::make_shared<std::string>();
  auto modelfile = std::make_shared<bool>(false);
  auto modelfile_base = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "export-gguf",
      "Write a model as one GGUF file that llama.cpp, Ollama and LM Studio load (architectures "
      "llama/mistral, qwen2, qwen3, gemma2, gemma3 (of a multimodal Gemma 3: its language "
      "model), phi3; tokenizer and chat template included). With --adapter the "
      "LoRA adapter is merged first (W' = W + s*B@A in float32, as `merge`); with "
      "--adapter-only the adapter alone is written as llama.cpp's LoRA adapter GGUF, to apply "
      "on top of the base model's GGUF. Streams tensor by tensor; the file appears atomically.");
  cmd->add_option("--model", opt->model_dir,
                  "Base model directory (Hugging Face layout) or .gguf file (exported from its "
                  "float32 import)")
      ->required();
  cmd->add_option("--adapter", opt->adapter_dir,
                  "PEFT adapter directory (adapter_config.json + adapter_model.safetensors)");
  cmd->add_option("--out", opt->out_path,
                  "Output .gguf file (must not exist unless --overwrite; never the model or "
                  "adapter, nor inside them). While the export runs, OUT.lock beside it keeps "
                  "other exports into OUT away")
      ->required();
  cmd->add_option("--type", *type,
                  "Storage of the weight matrices: f32, f16, bf16 or q8_0 (default: f16 for a "
                  "model, f32 for --adapter-only, as llama.cpp's converters; norms, biases and "
                  "1-D tensors stay f32; q8_0 rows that are not a multiple of 32 fall back to "
                  "f16, as llama.cpp's converter does)");
  cmd->add_flag("--adapter-only", opt->adapter_only,
                "Write only the adapter, as llama.cpp's LoRA adapter GGUF (general.type "
                "adapter), for `llama-cli -m BASE.gguf --lora OUT` or Ollama's ADAPTER");
  cmd->add_option("--name", opt->name, "general.name (default: the model's directory name)");
  cmd->add_flag("--overwrite", opt->overwrite, "Replace an existing --out file (and Modelfile)");
  cmd->add_flag("--modelfile", *modelfile,
                "Also write an Ollama Modelfile beside --out: FROM ./<out file>, a PARAMETER stop "
                "per end-of-sequence / end-of-turn token of the tokenizer, no TEMPLATE (Ollama "
                "takes the GGUF's chat template). With --adapter-only it needs --modelfile-base");
  cmd->add_option("--modelfile-base", *modelfile_base,
                  "With --adapter-only --modelfile: the Modelfile's FROM, the base model as an "
                  "Ollama model name or the path of its GGUF; the adapter is its ADAPTER");
  cmd->callback([opt, type, modelfile, modelfile_base] {
    refuse_output_over_inputs("--out", opt->out_path,
                              {{"--model", opt->model_dir}, {"--adapter", opt->adapter_dir}});
    io::refuse_unreplaceable(opt->out_path, /*want_dir=*/false);
    opt->type = gguf::parse_out_type(!type->empty() ? *type : opt->adapter_only ? "f32" : "f16");
    if (opt->adapter_only && opt->adapter_dir.empty()) {
      throw Error("--adapter-only needs --adapter DIR (the PEFT adapter to write as GGUF)");
    }
    if (!modelfile_base->empty() && !opt->adapter_only) {
      throw Error(
          "--modelfile-base is for --adapter-only (a merged model's Modelfile is FROM the file "
          "itself); drop it or add --adapter-only");
    }
    if (*modelfile && opt->adapter_only && modelfile_base->empty()) {
      throw Error(
          "--modelfile with --adapter-only needs --modelfile-base BASE (the base model's GGUF "
          "path or Ollama model name) for the Modelfile's FROM");
    }
    const bool write_modelfile = *modelfile || !modelfile_base->empty();
    const std::string modelfile_path = gguf::modelfile_path(opt->out_path);
    if (write_modelfile) {
      refuse_output_over_inputs("--modelfile", modelfile_path,
                                {{"--model", opt->model_dir}, {"--adapter", opt->adapter_dir}});
      std::error_code ec;
      if (std::filesystem::exists(std::filesystem::symlink_status(modelfile_path, ec)) &&
          !opt->overwrite) {
        throw Error("--modelfile: '" + modelfile_path +
                    "' already exists (pass --overwrite to replace it)");
      }
    }
    gguf::resolve_gguf_model(*opt);
    // Read before the export, so a tokenizer it cannot use leaves no file behind.
    const std::vector<std::string> stops =
        write_modelfile ? gguf::stop_strings(opt->model_dir) : std::vector<std::string>();
    const std::filesystem::path parent = std::filesystem::path(opt->out_path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    io::DirLock lock(opt->out_path + ".lock", "--out '" + opt->out_path + "'");
    const gguf::ExportSummary s = gguf::export_gguf(*opt);
    for (const auto& note : s.notes) std::fprintf(stderr, "loratune: note: %s\n", note.c_str());
    std::fprintf(stderr, "wrote %s (%s %s, %zu tensors, %llu bytes", opt->out_path.c_str(),
                 s.arch.c_str(),
                 opt->adapter_only ? "LoRA adapter" : gguf::out_type_name(opt->type), s.tensors,
                 static_cast<unsigned long long>(s.bytes));
    if (opt->adapter_only) {
      std::fprintf(stderr, ", %zu adapted projections", s.adapted);
      if (s.folded > 0) std::fprintf(stderr, ", %zu with their scale folded into B", s.folded);
    } else if (!opt->adapter_dir.empty()) {
      std::fprintf(stderr, ", %zu weights merged", s.adapted);
    }
    std::fprintf(stderr, ")\n");
    if (write_modelfile) {
      const std::string written = gguf::write_modelfile(opt->out_path, *modelfile_base, stops);
      std::fprintf(stderr, "wrote %s (Ollama: ollama create NAME -f %s)\n", written.c_str(),
                   written.c_str());
    }
  });
}

}  // namespace loratune::cli
