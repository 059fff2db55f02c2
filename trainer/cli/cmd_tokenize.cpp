// `loratune tokenize`: encode text with a model directory's tokenizer, the way
// `tokenizer(text)` in transformers does.
//
//   loratune tokenize --model DIR (--text T | --file F.jsonl) [--json]
//                     [--no-special] [--split-special-tokens]
//
// Each line of F is a JSON string or an object {"text": ...}. --json prints
// one object per input: {"ids": [...], "tokens": [...], "offsets": [[b, e], ...]}
// (byte offsets into the input). Without --json it prints the ids, then the
// tokens, one input per pair of lines.
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "trainer/cli/cmd_tokenize_chat.h"
#include "trainer/cli/commands.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::cli {

namespace {

struct TokenizeArgs {
  std::string model, text, file;
  bool json = false, no_special = false, split_special = false;
};

// The inputs of --text or --file; errors name the file and line.
std::vector<std::string> read_inputs(const TokenizeArgs& a) {
  if (a.file.empty()) return {a.text};
  std::istringstream in(io::read_file(a.file));  // a directory or unreadable file: kIo
  std::vector<std::string> out;
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = io::parse_json(line, "", ErrorKind::kData);
    } catch (const Error& e) {
      throw Error(a.file + ":" + std::to_string(n) + ": ", e);
    }
    if (j.is_string()) {
      out.push_back(j.get<std::string>());
    } else if (j.is_object() && j.contains("text") && j["text"].is_string()) {
      out.push_back(j["text"].get<std::string>());
    } else {
      throw Error(a.file + ":" + std::to_string(n) +
                      ": expected a JSON string or an object with a string \"text\"",
                  ErrorKind::kData);
    }
  }
  return out;
}

void run_tokenize(const TokenizeArgs& a) {
  auto tok = tokenizer::load_tokenizer(a.model);
  tokenizer::EncodeOptions opt;
  opt.add_special_tokens = !a.no_special;
  opt.split_special_tokens = a.split_special;
  for (const std::string& text : read_inputs(a)) {
    auto toks = tok->encode_with_offsets(text, opt);
    nlohmann::json ids = nlohmann::json::array(), names = nlohmann::json::array(),
                   offsets = nlohmann::json::array();
    for (const auto& t : toks) {
      std::string s;
      tok->id_to_token(t.id, &s);
      ids.push_back(t.id);
      names.push_back(s);
      offsets.push_back({t.begin, t.end});
    }
    const auto replace = nlohmann::json::error_handler_t::replace;
    if (a.json) {
      nlohmann::json out = {{"ids", ids}, {"tokens", names}, {"offsets", offsets}};
      std::cout << out.dump(-1, ' ', false, replace) << "\n";
    } else {
      std::cout << ids.dump() << "\n" << names.dump(-1, ' ', false, replace) << "\n";
    }
  }
  std::cout.flush();
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Encode text with a model directory's tokenizer");
  cmd->add_option("--model", args->model,
                  "Model directory (tokenizer.json or tokenizer.model) or .gguf file")
      ->required();
  auto* text = cmd->add_option("--text", args->text, "Text to encode");
  auto* file = cmd->add_option("--file", args->file,
                               "JSONL file: one JSON string or {\"text\": ...} per line");
  text->excludes(file);
  cmd->add_flag("--json", args->json, "Print one JSON object per input: ids, tokens, offsets");
  cmd->add_flag("--no-special", args->no_special,
                "Do not add special tokens (BOS/EOS) around the text");
  cmd->add_flag("--split-special-tokens", args->split_special,
                "Treat special-token text in the input as plain text (transformers' "
                "split_special_tokens=True)");
  // Chat input: --chat F.jsonl, --add-generation-prompt (cmd_tokenize_chat.cpp).
  auto chat = add_chat_tokenize_options(cmd);
  chat->chat_option->excludes(text)->excludes(file);
  cmd->callback([args, text, file, chat] {
    args->model = gguf::resolve_model_path(args->model);  // a .gguf: its import
    if (chat->requested()) return run_chat_tokenize(*chat, args->model);
    if (text->count() == 0 && file->count() == 0)
      throw Error("tokenize: give --text, --file or --chat");
    run_tokenize(*args);
  });
}

}  // namespace loratune::cli
