// trainer/cli/commands.h — one function per subcommand; each adds its
// CLI11 subcommand to the app with a callback that does the work. Callbacks
// throw loratune::Error; main() prints it as one line and exits 1.
#pragma once

#include <CLI/CLI.hpp>

namespace loratune::cli {

void add_inspect_command(CLI::App& app);   // cmd_inspect.cpp
void add_logits_command(CLI::App& app);    // cmd_logits.cpp
void add_tokenize_command(CLI::App& app);  // cmd_tokenize.cpp

}  // namespace loratune::cli
