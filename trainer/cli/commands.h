// trainer/cli/commands.h — one function per subcommand; each adds its
// CLI11 subcommand to the app with a callback that does the work. Callbacks
// throw loratune::Error; main() prints it as one line and exits with the
// code of its kind (trainer/io/error.h).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace loratune::cli {

void add_inspect_command(CLI::App& app);   // cmd_inspect.cpp
void add_logits_command(CLI::App& app);    // cmd_logits.cpp
void add_tokenize_command(CLI::App& app);  // cmd_tokenize.cpp
void add_train_command(CLI::App& app);     // cmd_train.cpp
void add_eval_command(CLI::App& app);      // cmd_eval.cpp
void add_merge_command(CLI::App& app);     // cmd_merge.cpp
void add_generate_command(CLI::App& app);  // cmd_generate.cpp
void add_import_command(CLI::App& app);    // cmd_import.cpp

// cmd_export_gguf.cpp
void add_export_gguf_command(CLI::App& app);

// "1 2 3" or "1,2,3" -> token ids, each checked against the vocabulary.
// Throws Error naming the bad item (cmd_logits.cpp).
std::vector<int64_t> parse_token_ids(const std::string& text, int64_t vocab_size);

}  // namespace loratune::cli
