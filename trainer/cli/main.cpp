// loratune — LoRA fine-tuning for open-weight models on LibTorch.
#include <cstdio>
#include <exception>

#include "trainer/cli/commands.h"
#include "trainer/io/error.h"

int main(int argc, char** argv) {
  CLI::App app{
      "loratune: LoRA fine-tuning of Hugging Face decoder models (Llama, Mistral, Qwen2, "
      "Qwen3) on LibTorch.\nRun `loratune <command> --help` for the options of a command."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "loratune 0.1.0");
  loratune::cli::add_inspect_command(app);
  loratune::cli::add_logits_command(app);
  loratune::cli::add_tokenize_command(app);
  loratune::cli::add_train_command(app);
  loratune::cli::add_eval_command(app);
  loratune::cli::add_merge_command(app);
  loratune::cli::add_generate_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const loratune::Error& e) {
    std::fprintf(stderr, "loratune: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loratune: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
