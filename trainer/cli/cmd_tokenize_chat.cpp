// trainer/cli/cmd_tokenize_chat.cpp — `loratune tokenize --chat` (see
// cmd_tokenize_chat.h).
#include "trainer/cli/cmd_tokenize_chat.h"

#include <filesystem>
#include <fstream>
#include <iostream>

#include "trainer/chat/chat_template.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::cli {
namespace {

std::string template_source(const ChatTokenizeArgs& a, const tokenizer::Tokenizer& tok,
                            const std::string& model_dir) {
  if (!a.template_name.empty()) {
    std::error_code ec;
    const auto st = std::filesystem::status(a.template_name, ec);
    if (std::filesystem::is_directory(st)) {
      throw Error("--chat-template: '" + a.template_name +
                      "' is a directory; give a Jinja file or a built-in template name",
                  ErrorKind::kIo);
    }
    if (std::filesystem::exists(st)) return io::read_file(a.template_name);
    return chat::builtin_template(a.template_name);
  }
  if (auto s = tok.chat_template()) return *s;
  std::string names;
  for (const auto& n : chat::builtin_template_names()) names += (names.empty() ? "" : ", ") + n;
  throw Error(model_dir + ": the tokenizer " + tok.missing_chat_template() +
              "; pass --chat-template with a file or one of: " + names);
}

}  // namespace

std::shared_ptr<ChatTokenizeArgs> add_chat_tokenize_options(CLI::App* cmd) {
  auto a = std::make_shared<ChatTokenizeArgs>();
  a->chat_option = cmd->add_option(
      "--chat", a->chat_file,
      "JSONL file of conversations {\"messages\": [...]}: print text, ids, assistant_mask");
  cmd->add_flag("--add-generation-prompt", a->add_generation_prompt,
                "With --chat: end with the assistant header (add_generation_prompt=True)");
  cmd->add_option(
      "--chat-template", a->template_name,
      "With --chat: a built-in template name or a Jinja file instead of the model's template");
  cmd->add_flag(
      "--hf-control-tokens", a->hf_control_tokens,
      "With --chat: recognise control tokens inside message content too, exactly as transformers");
  return a;
}

void run_chat_tokenize(const ChatTokenizeArgs& a, const std::string& model_dir) {
  auto tok = tokenizer::load_tokenizer(model_dir);
  chat::ChatTemplate tpl(template_source(a, *tok, model_dir));
  chat::RenderOptions base = chat::render_options_for(*tok);
  base.add_generation_prompt = a.add_generation_prompt;
  chat::EncodeChatOptions enc;
  enc.control_tokens =
      a.hf_control_tokens ? chat::ControlTokens::kEverywhere : chat::ControlTokens::kTemplateOnly;
  std::error_code ec;
  if (std::filesystem::is_directory(a.chat_file, ec)) {
    throw Error(a.chat_file + ": is a directory, not a JSONL file", ErrorKind::kIo);
  }
  std::ifstream in(a.chat_file);
  if (!in) throw Error(a.chat_file + ": cannot open file", ErrorKind::kIo);
  const auto replace = nlohmann::json::error_handler_t::replace;
  std::string line;
  int64_t records = 0, failed = 0;
  std::string first_failure;  // "F:LINE: <why>"
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = a.chat_file + ":" + std::to_string(n);
    chat::Json j;
    try {
      j = io::parse_ordered_json(line, "", ErrorKind::kData);
    } catch (const Error& e) {
      throw Error(where + ": ", e);
    }
    if (!j.is_object() || !j.contains("messages") || !j["messages"].is_array()) {
      throw Error(where + ": expected an object with a \"messages\" array", ErrorKind::kData);
    }
    ++records;
    chat::RenderOptions opts = base;
    if (j.contains("tools")) opts.tools = j["tools"];
    chat::Json out;
    try {
      chat::ChatEncoding e = chat::encode_chat(tpl, *tok, j["messages"], opts, enc);
      out = {{"text", e.text}, {"ids", e.ids}, {"assistant_mask", e.assistant_mask}};
    } catch (const Error& e) {
      // A template over its budgets (jinja_budgets.h) is hostile, and one that
      // uses what the engine does not support fails every record the same
      // way: neither is this record's fault, so stop with its own kind.
      if (e.kind() == ErrorKind::kResource || e.kind() == ErrorKind::kUnsupported) {
        throw Error(where + ": ", e);
      }
      out = {{"error", e.what()}};
      if (failed++ == 0) first_failure = where + ": " + e.what();
    }
    std::cout << out.dump(-1, ' ', false, replace) << "\n";
  }
  std::cout.flush();
  if (failed > 0) {
    // Every record was printed (failures as {"error"}); the exit status and
    // one line on stderr say that not all of them could be encoded.
    throw Error(std::to_string(failed) + " of " + std::to_string(records) +
                    " records failed; first: " + printable(first_failure),
                ErrorKind::kData);
  }
}

}  // namespace loratune::cli
