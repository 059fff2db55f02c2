// `loratune generate`: try a model (and an adapter) on a prompt, a chat or ids.
#include <torch/cuda.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>

#include "trainer/chat/chat_template.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/option_values.h"
#include "trainer/config/config.h"
#include "trainer/generate/generate.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/config.h"
#include "trainer/model/loader.h"
#include "trainer/tokenizer/pipeline.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::cli {
namespace {

namespace fs = std::filesystem;

struct GenerateArgs {
  std::string model_dir, adapter_dir, prompt, chat_file, chat_template, ids, dtype = "float32",
                                                                             device = "cpu";
  // The numeric options as typed; check_options() parses them into sampling.
  std::string max_new_tokens = "128", temperature = "0", top_k = "0", top_p = "1",
              repetition_penalty = "1", seed = "0";
  generate::SamplingOptions sampling;
  bool json = false;
};

// Tokens generate can be asked for before the model is known (its context
// bounds it further, check_context()).
constexpr int64_t kMaxNewTokens = int64_t{1} << 24;

// Parses and range-checks the numeric options (before any file is read).
void check_options(GenerateArgs& a) {
  generate::SamplingOptions& s = a.sampling;
  s.max_new_tokens = int_option("--max-new-tokens", a.max_new_tokens, 1, kMaxNewTokens);
  s.temperature = double_option("--temperature", a.temperature, 0.0, /*lo_open=*/false);
  s.top_k = int_option("--top-k", a.top_k, 0, std::numeric_limits<int32_t>::max());
  s.top_p = double_option("--top-p", a.top_p, 0.0, /*lo_open=*/true, 1.0, /*hi_open=*/false);
  s.repetition_penalty =
      double_option("--repetition-penalty", a.repetition_penalty, 0.0, /*lo_open=*/true);
  s.seed =
      static_cast<uint64_t>(int_option("--seed", a.seed, 0, std::numeric_limits<int64_t>::max()));
  if (!a.chat_template.empty()) {
    if (const std::string problem = config::chat_template_problem(a.chat_template);
        !problem.empty()) {
      throw Error("--chat-template: " + problem);
    }
  }
  if (const std::string problem = config::device_problem(a.device); !problem.empty()) {
    throw Error("--device: " + problem);
  }
}

// --max-new-tokens against the model's context: at least one prompt token
// must fit beside the new ones.
void check_context(const GenerateArgs& a, int64_t context) {
  if (a.sampling.max_new_tokens > context - 1) {
    throw Error("--max-new-tokens: " + std::to_string(a.sampling.max_new_tokens) +
                " leaves no room for a prompt in the model's context of " +
                std::to_string(context) + " tokens (max_position_embeddings); expected " +
                int_range_text(1, context - 1));
  }
}

// The ids generation stops at, found as transformers' generate finds them:
// generation_config.json's eos_token_id (int or list) when that file exists,
// even if it names none (then config.json is not consulted); config.json's
// only without the file. None: generation runs to --max-new-tokens.
std::vector<int64_t> model_eos_ids(const std::string& dir) {
  for (const char* name : {"generation_config.json", "config.json"}) {
    fs::path p = fs::path(dir) / name;
    if (!fs::exists(p)) continue;
    auto j = io::read_json(p.string());
    if (!j.is_object() || !j.contains("eos_token_id") || j["eos_token_id"].is_null()) return {};
    const auto& e = j["eos_token_id"];
    auto bad = [&]() {
      return Error(p.string() + ": eos_token_id must be a token id or a list of them, got " +
                       printable(e.dump(), 60),
                   ErrorKind::kCorrupt);
    };
    auto id = [&](const nlohmann::json& v) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0) throw bad();
      return v.get<int64_t>();
    };
    if (!e.is_array()) return {id(e)};
    std::vector<int64_t> ids;
    for (const auto& v : e) ids.push_back(id(v));
    return ids;
  }
  return {};
}

// A TextStream printing to stdout, flushed per piece; inactive without a
// tokenizer (then ids are printed at the end).
class StdoutStream {
 public:
  explicit StdoutStream(const tokenizer::Tokenizer* tok)
      : stream_(
            [tok](const std::vector<int32_t>& ids) {
              return tok->decode(ids, /*skip_special_tokens=*/true);
            },
            [](const std::string& piece) {
              std::fwrite(piece.data(), 1, piece.size(), stdout);
              std::fflush(stdout);
            }),
        active_(tok != nullptr) {}
  void push(int64_t id) {
    if (active_) stream_.push(id);
  }
  void finish() {
    if (active_) stream_.finish();
  }

 private:
  generate::TextStream stream_;
  bool active_;
};

void run_one(model::CausalLMImpl& m, const tokenizer::Tokenizer* tok,
             const std::vector<int64_t>& prompt, const GenerateArgs& a) {
  StdoutStream stream(a.json ? nullptr : tok);
  auto out = generate::generate(m, prompt, a.sampling, [&](int64_t id) {
    stream.push(id);
    return true;
  });
  if (a.json) {
    std::vector<int32_t> ids32(out.begin(), out.end());
    nlohmann::json j = {{"ids", out}};
    j["text"] = tok ? tok->decode(ids32, true) : "";
    std::cout << j.dump() << std::endl;
  } else if (!tok) {
    for (size_t i = 0; i < out.size(); ++i) std::cout << (i ? " " : "") << out[i];
    std::cout << std::endl;
  } else {
    stream.finish();
    std::cout << std::endl;
  }
}

// The template named `name` (a built-in), or the tokenizer's own for "" or
// "auto" (the resolution of data.chat_template, which eval shares).
// `who` names the input that needs it, for the error message.
chat::ChatTemplate load_template(const tokenizer::Tokenizer& tok, const std::string& name,
                                 const std::string& who) {
  const bool own = name.empty() || name == "auto";
  std::optional<std::string> src =
      own ? tok.chat_template() : std::optional<std::string>(chat::builtin_template(name));
  if (!src) {
    std::string names;
    for (const auto& n : chat::builtin_template_names()) names += (names.empty() ? "" : ", ") + n;
    throw Error(who + ": the model's tokenizer (" + tok.description() + ") " +
                tok.missing_chat_template() + "; name a built-in one with --chat-template (" +
                names + ")");
  }
  return chat::ChatTemplate(*src);
}

// Prompt ids for `messages` rendered with a generation prompt (template
// scaffolding alone yields control tokens, as for training data).
std::vector<int64_t> render_prompt(const chat::ChatTemplate& tpl, const tokenizer::Tokenizer& tok,
                                   const chat::Json& messages) {
  chat::RenderOptions ro = chat::render_options_for(tok);
  ro.add_generation_prompt = true;
  chat::EncodeChatOptions eo;
  eo.assistant_mask = false;
  auto enc = chat::encode_chat(tpl, tok, messages, ro, eo);
  return std::vector<int64_t>(enc.ids.begin(), enc.ids.end());
}

std::vector<int64_t> chat_prompt(const tokenizer::Tokenizer& tok, const std::string& file,
                                 const std::string& name) {
  // The file first: a missing or malformed one is named before the template.
  chat::Json messages = io::parse_ordered_json(io::read_file(file), file, ErrorKind::kData);
  if (messages.is_object() && messages.contains("messages")) messages = messages["messages"];
  if (!messages.is_array()) {
    throw Error(file + ": expected a list of {\"role\", \"content\"} messages", ErrorKind::kData);
  }
  if (messages.empty()) {
    throw Error(file +
                    ": the conversation has no messages (give at least one {\"role\", "
                    "\"content\"})",
                ErrorKind::kData);
  }
  chat::ChatTemplate tpl = load_template(tok, name, file);
  try {
    return render_prompt(tpl, tok, messages);
  } catch (const Error& e) {
    throw Error(file + ": " + e.what(), e.kind());
  }
}

// The interactive chat (no --prompt/--chat/--ids): one user message per
// stdin line. Each turn renders the whole conversation (user and assistant
// turns so far) with the chat template and a generation prompt, generates
// from it (no KV cache is kept between turns: the prompt is re-read) and
// streams the reply; the reply's text (decoded without special tokens and
// without the EOS that ended it) becomes the assistant turn, as
// transformers' chat CLI keeps it. "/reset" clears the conversation,
// "/exit" or end of input ends. "> " is shown only when stdin is a terminal.
// A turn that no longer fits the context is refused with a message and the
// conversation is kept as it was; a reply is cut where the context ends.
// With --json each turn prints {"prompt_ids", "ids", "text"} instead of text.
void chat_repl(model::CausalLMImpl& m, const tokenizer::Tokenizer& tok, const GenerateArgs& a) {
  const chat::ChatTemplate tpl = load_template(tok, a.chat_template, "interactive chat");
  const int64_t context = m.config().max_position_embeddings;
  const bool tty = ::isatty(STDIN_FILENO) != 0;
  chat::Json messages = chat::Json::array();
  std::string line;
  int64_t line_no = 0;
  while ((tty && std::fprintf(stderr, "> ") >= 0), std::getline(std::cin, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    try {
      tokenizer::check_utf8(line, "input line " + std::to_string(line_no));
    } catch (const Error& e) {  // the message is not sent; the chat goes on
      std::fprintf(stderr, "loratune: error: %s; message not sent\n", e.what());
      continue;
    }
    if (line == "/exit") break;
    if (line == "/reset") {
      messages = chat::Json::array();
      std::fprintf(stderr, "(conversation cleared)\n");
      continue;
    }
    messages.push_back({{"role", "user"}, {"content", line}});
    std::vector<int64_t> prompt;
    try {
      prompt = render_prompt(tpl, tok, messages);
    } catch (const Error& e) {  // e.g. a template that refuses the conversation
      messages.erase(messages.size() - 1);
      std::fprintf(stderr, "loratune: error: %s\n", e.what());
      continue;
    }
    const int64_t room = context - static_cast<int64_t>(prompt.size());
    if (room < 1) {
      messages.erase(messages.size() - 1);
      std::fprintf(stderr,
                   "the conversation with this message is %zu tokens, the model's context is "
                   "%lld: message not sent; /reset starts a new conversation\n",
                   prompt.size(), static_cast<long long>(context));
      continue;
    }
    generate::SamplingOptions opt = a.sampling;
    if (opt.max_new_tokens > room) {
      opt.max_new_tokens = room;
      std::fprintf(stderr, "(%lld tokens of context left: the reply stops there)\n",
                   static_cast<long long>(room));
    }
    StdoutStream stream(a.json ? nullptr : &tok);
    std::vector<int64_t> out = generate::generate(m, prompt, opt, [&](int64_t id) {
      stream.push(id);
      return true;
    });
    std::vector<int32_t> reply(out.begin(), out.end());
    const auto& eos = opt.eos_ids;
    if (!reply.empty() && std::find(eos.begin(), eos.end(), reply.back()) != eos.end()) {
      reply.pop_back();
    }
    const std::string text = tok.decode(reply, /*skip_special_tokens=*/true);
    messages.push_back({{"role", "assistant"}, {"content", text}});
    if (a.json) {
      nlohmann::json j = {{"prompt_ids", prompt}, {"ids", out}, {"text", text}};
      std::cout << j.dump() << std::endl;
    } else {
      stream.finish();
      std::cout << std::endl;
    }
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand(
      "generate",
      "Generate text with a model (and optionally an unmerged LoRA adapter) from a prompt, a "
      "chat file or token ids. With none of them: an interactive chat that reads one user "
      "message per line from stdin, renders the whole conversation with the chat template and "
      "streams each reply; /reset clears the conversation, /exit or end of input ends it. "
      "Uses a KV cache; stops at the model's EOS ids (generation_config.json, or config.json "
      "without that file, as transformers); text is "
      "printed as it is produced.");
  cmd->add_option("--model", a->model_dir, "Model directory (Hugging Face layout) or a .gguf file")
      ->required();
  cmd->add_option("--adapter", a->adapter_dir, "PEFT adapter directory to apply (unmerged)");
  auto* p = cmd->add_option("--prompt", a->prompt, "Prompt text (tokenized as tokenizer(text))");
  auto* c = cmd->add_option("--chat", a->chat_file,
                            "JSON file with a list of {role, content} messages, rendered with "
                            "the model's chat template and a generation prompt");
  cmd->add_option("--chat-template", a->chat_template,
                  "With --chat or the interactive chat: auto (the tokenizer's own, the default) "
                  "or a built-in template (llama2, llama3, chatml, mistral, gemma, phi3), as "
                  "data.chat_template in a training config");
  auto* i = cmd->add_option("--ids", a->ids, "Prompt token ids, e.g. \"1 2 3\"");
  p->excludes(c)->excludes(i);
  c->excludes(i);
  cmd->add_option("--max-new-tokens", a->max_new_tokens,
                  "Tokens to generate, >= 1 and below the model's context (default 128)");
  cmd->add_option("--temperature", a->temperature, "0 = greedy, else > 0 (default 0)");
  cmd->add_option("--top-k", a->top_k, "Keep the k most likely tokens, >= 0 (0 = off)");
  cmd->add_option("--top-p", a->top_p, "Nucleus sampling mass in (0, 1] (1 = off)");
  cmd->add_option("--repetition-penalty", a->repetition_penalty,
                  "transformers' repetition penalty, > 0 (1 = off)");
  cmd->add_option("--seed", a->seed, "Sampling seed, >= 0 (default 0)");
  cmd->add_flag("--ignore-eos", a->sampling.ignore_eos, "Do not stop at EOS");
  cmd->add_flag("--json", a->json,
                "Print {\"ids\": [...], \"text\": ...} per prompt (interactive chat: "
                "{\"prompt_ids\", \"ids\", \"text\"} per turn)");
  cmd->add_option("--dtype", a->dtype, "float32 | bfloat16 | float16 (default float32)");
  cmd->add_option("--device", a->device, "auto | cpu | cuda | cuda:N (default cpu)");
  cmd->callback([a, p, c, i] {
    check_options(*a);
    // An option given with an empty value is a mistake, not a request for
    // the interactive chat (what giving none of them means).
    if (i->count() > 0 && a->ids.find_first_not_of(" \t\n,") == std::string::npos) {
      throw Error("--ids: '" + printable(a->ids) +
                  "' is an empty token id list; give ids such as \"1 2 3\" (no --prompt, "
                  "--chat or --ids at all starts the interactive chat)");
    }
    if (p->count() > 0 && a->prompt.empty()) {
      throw Error(
          "--prompt: the prompt is empty; give some text (no --prompt, --chat or --ids "
          "at all starts the interactive chat)");
    }
    if (c->count() > 0 && a->chat_file.empty()) {
      throw Error("--chat: empty file name; give a JSON file of {role, content} messages");
    }
    a->model_dir = gguf::resolve_model_path(a->model_dir);  // a .gguf: its import
    check_context(*a, model::load_config(a->model_dir).max_position_embeddings);
    model::LoadOptions lo;
    try {
      lo.dtype = model::parse_dtype(a->dtype);
    } catch (const Error& e) {
      throw Error("--dtype: ", e);
    }
    lo.device = a->device == "auto" ? (torch::cuda::is_available() ? "cuda:0" : "cpu") : a->device;
    model::CausalLM m = model::load_model(a->model_dir, lo);
    if (!a->adapter_dir.empty()) lora::load_adapter(a->adapter_dir, *m);
    m->eval();
    std::unique_ptr<tokenizer::Tokenizer> tok;
    const bool has_tok = fs::exists(fs::path(a->model_dir) / "tokenizer.json") ||
                         fs::exists(fs::path(a->model_dir) / "tokenizer.model");
    if (has_tok) tok = tokenizer::load_tokenizer(a->model_dir);
    a->sampling.eos_ids = model_eos_ids(a->model_dir);
    auto need_tok = [&](const char* what) {
      if (!tok)
        throw Error(std::string(what) + " needs a tokenizer; " + a->model_dir +
                    " has no tokenizer.json or tokenizer.model (use --ids)");
    };
    if (i->count() > 0) {
      run_one(*m, tok.get(), parse_token_ids(a->ids, m->config().vocab_size), *a);
    } else if (c->count() > 0) {
      need_tok("--chat");
      run_one(*m, tok.get(), chat_prompt(*tok, a->chat_file, a->chat_template), *a);
    } else if (p->count() > 0) {
      need_tok("--prompt");
      auto ids = tok->encode(a->prompt);
      run_one(*m, tok.get(), std::vector<int64_t>(ids.begin(), ids.end()), *a);
    } else {
      need_tok("interactive chat");
      chat_repl(*m, *tok, *a);
    }
  });
}

}  // namespace loratune::cli
