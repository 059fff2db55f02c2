// trainer/cli/cmd_tokenize_chat.h — the chat part of `loratune tokenize`:
//
//   loratune tokenize --model DIR --chat F.jsonl [--add-generation-prompt]
//                     [--chat-template NAME|FILE] [--hf-control-tokens]
//
// Each line of F is {"messages": [...]} (optionally "tools": [...]). Prints
// one JSON object per line: {"text", "ids", "assistant_mask"}, or
// {"error": "..."} when the template refuses that conversation; when any
// record failed, the command then fails with ErrorKind::kData (exit 3) and
// one line "N of M records failed; first: F:LINE: <why>". A line that is not
// JSON or has no "messages" list stops it at once (kData, naming F:LINE). The template
// is the model's (tokenizer_config.json) unless --chat-template names a
// built-in (llama2, llama3, chatml, gemma, mistral, phi3) or a file.
// Control tokens in message content are tokenized as text unless
// --hf-control-tokens (see chat::ControlTokens).
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

namespace loratune::cli {

struct ChatTokenizeArgs {
  std::string chat_file;
  std::string template_name;
  bool add_generation_prompt = false;
  bool hf_control_tokens = false;
  CLI::Option* chat_option = nullptr;
  bool requested() const { return chat_option && chat_option->count() > 0; }
};

// Adds the chat options to the tokenize subcommand.
std::shared_ptr<ChatTokenizeArgs> add_chat_tokenize_options(CLI::App* cmd);
// Runs the chat mode with the tokenizer of `model_dir`; throws loratune::Error.
void run_chat_tokenize(const ChatTokenizeArgs& args, const std::string& model_dir);

}  // namespace loratune::cli
