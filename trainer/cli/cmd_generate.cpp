// `loratune generate`: try a model (and an adapter) on a prompt, a chat or ids.
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>

#include "trainer/cli/commands.h"
#include "trainer/generate/generate.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"
#include "trainer/tokenizer/chat_template.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::cli {
namespace {

namespace fs = std::filesystem;

struct GenerateArgs {
  std::string model_dir, adapter_dir, prompt, chat_file, chat_template, ids, dtype = "float32",
                                                                             device = "cpu";
  generate::SamplingOptions sampling;
  bool json = false;
};

// EOS ids from generation_config.json (int or list), else config.json.
std::vector<int64_t> model_eos_ids(const std::string& dir) {
  for (const char* name : {"generation_config.json", "config.json"}) {
    fs::path p = fs::path(dir) / name;
    if (!fs::exists(p)) continue;
    auto j = io::read_json(p.string());
    if (!j.contains("eos_token_id") || j["eos_token_id"].is_null()) continue;
    const auto& e = j["eos_token_id"];
    if (e.is_number_integer()) return {e.get<int64_t>()};
    if (e.is_array()) return e.get<std::vector<int64_t>>();
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

// The template named `name` (a built-in), or the tokenizer's own for "".
// `who` names the input that needs it, for the error message.
chat::ChatTemplate load_template(const tokenizer::Tokenizer& tok, const std::string& name,
                                 const std::string& who) {
  std::optional<std::string> src =
      name.empty() ? tok.chat_template() : std::optional<std::string>(chat::builtin_template(name));
  if (!src) {
    throw Error(who + ": the model's tokenizer (" + tok.description() +
                ") has no chat template; name a built-in one with --chat-template (llama2, "
                "llama3, chatml, mistral, gemma, phi3)");
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
  chat::ChatTemplate tpl = load_template(tok, name, file);
  chat::Json messages = chat::Json::parse(io::read_file(file), nullptr, false);
  if (messages.is_discarded()) throw Error(file + ": not valid JSON");
  if (messages.is_object() && messages.contains("messages")) messages = messages["messages"];
  if (!messages.is_array()) {
    throw Error(file + ": expected a list of {\"role\", \"content\"} messages");
  }
  return render_prompt(tpl, tok, messages);
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
  while ((tty && std::fprintf(stderr, "> ") >= 0), std::getline(std::cin, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
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
      std::fprintf(stderr, "error: %s\n", e.what());
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
      "Uses a KV cache; stops at the model's EOS ids (generation_config.json); text is "
      "printed as it is produced.");
  cmd->add_option("--model", a->model_dir, "Model directory (Hugging Face layout)")->required();
  cmd->add_option("--adapter", a->adapter_dir, "PEFT adapter directory to apply (unmerged)");
  auto* p = cmd->add_option("--prompt", a->prompt, "Prompt text (tokenized as tokenizer(text))");
  auto* c = cmd->add_option("--chat", a->chat_file,
                            "JSON file with a list of {role, content} messages, rendered with "
                            "the model's chat template and a generation prompt");
  cmd->add_option("--chat-template", a->chat_template,
                  "With --chat or the interactive chat: a built-in template (llama2, llama3, "
                  "chatml, mistral, gemma, phi3) instead of the tokenizer's own");
  auto* i = cmd->add_option("--ids", a->ids, "Prompt token ids, e.g. \"1 2 3\"");
  p->excludes(c)->excludes(i);
  c->excludes(i);
  cmd->add_option("--max-new-tokens", a->sampling.max_new_tokens, "Tokens to generate (128)");
  cmd->add_option("--temperature", a->sampling.temperature, "0 = greedy (default 0)");
  cmd->add_option("--top-k", a->sampling.top_k, "Keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", a->sampling.top_p, "Nucleus sampling mass (1 = off)");
  cmd->add_option("--repetition-penalty", a->sampling.repetition_penalty,
                  "transformers' repetition penalty (1 = off)");
  cmd->add_option("--seed", a->sampling.seed, "Sampling seed (default 0)");
  cmd->add_flag("--ignore-eos", a->sampling.ignore_eos, "Do not stop at EOS");
  cmd->add_flag("--json", a->json,
                "Print {\"ids\": [...], \"text\": ...} per prompt (interactive chat: "
                "{\"prompt_ids\", \"ids\", \"text\"} per turn)");
  cmd->add_option("--dtype", a->dtype, "float32 | bfloat16 | float16 (default float32)");
  cmd->add_option("--device", a->device, "cpu | cuda | cuda:N (default cpu)");
  cmd->callback([a] {
    model::LoadOptions lo;
    lo.dtype = model::parse_dtype(a->dtype);
    lo.device = a->device;
    model::CausalLM m = model::load_model(a->model_dir, lo);
    if (!a->adapter_dir.empty()) lora::load_adapter(a->adapter_dir, *m);
    m->eval();
    std::unique_ptr<tokenizer::Tokenizer> tok;
    const bool has_tok = fs::exists(fs::path(a->model_dir) / "tokenizer.json") ||
                         fs::exists(fs::path(a->model_dir) / "tokenizer.model");
    if (has_tok) tok = tokenizer::load_tokenizer(a->model_dir);
    a->sampling.eos_ids = model_eos_ids(a->model_dir);
    if (tok && a->sampling.eos_ids.empty()) {
      for (int32_t e : tok->eos_ids()) a->sampling.eos_ids.push_back(e);
    }
    auto need_tok = [&](const char* what) {
      if (!tok)
        throw Error(std::string(what) + " needs a tokenizer; " + a->model_dir +
                    " has no tokenizer.json or tokenizer.model (use --ids)");
    };
    if (!a->ids.empty()) {
      run_one(*m, tok.get(), parse_token_ids(a->ids, m->config().vocab_size), *a);
    } else if (!a->chat_file.empty()) {
      need_tok("--chat");
      run_one(*m, tok.get(), chat_prompt(*tok, a->chat_file, a->chat_template), *a);
    } else if (!a->prompt.empty()) {
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
