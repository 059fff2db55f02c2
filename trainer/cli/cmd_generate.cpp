// `loratune generate`: try a model (and an adapter) on a prompt, a chat or ids.
#include <nlohmann/json.hpp>

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

// Streams decoded text: prints what decoding all ids so far adds, holding
// back an incomplete UTF-8 sequence (shown as U+FFFD) until it completes.
class TextStream {
 public:
  explicit TextStream(const tokenizer::Tokenizer* tok) : tok_(tok) {}
  void push(int64_t id) {
    if (!tok_) return;
    ids_.push_back(static_cast<int32_t>(id));
    std::string text = tok_->decode(ids_, /*skip_special_tokens=*/true);
    if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) return;
    if (text.size() > printed_) {
      std::fwrite(text.data() + printed_, 1, text.size() - printed_, stdout);
      std::fflush(stdout);
      printed_ = text.size();
    }
  }

 private:
  const tokenizer::Tokenizer* tok_;
  std::vector<int32_t> ids_;
  size_t printed_ = 0;
};

void run_one(model::CausalLMImpl& m, const tokenizer::Tokenizer* tok,
             const std::vector<int64_t>& prompt, const GenerateArgs& a) {
  TextStream stream(a.json ? nullptr : tok);
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
    std::cout << std::endl;
  }
}

// `name` is a built-in template name, or "" for the tokenizer's own template.
std::vector<int64_t> chat_prompt(const tokenizer::Tokenizer& tok, const std::string& file,
                                 const std::string& name) {
  std::optional<std::string> tpl_src;
  if (!name.empty()) {
    tpl_src = chat::builtin_template(name);
  } else {
    tpl_src = tok.chat_template();
  }
  if (!tpl_src) {
    throw Error(file +
                ": the model's tokenizer has no chat template; name a built-in one with "
                "--chat-template (llama2, llama3, chatml, mistral, gemma, phi3)");
  }
  chat::ChatTemplate tpl(*tpl_src);
  chat::Json messages = chat::Json::parse(io::read_file(file), nullptr, false);
  if (messages.is_discarded()) throw Error(file + ": not valid JSON");
  if (messages.is_object() && messages.contains("messages")) messages = messages["messages"];
  if (!messages.is_array()) {
    throw Error(file + ": expected a list of {\"role\", \"content\"} messages");
  }
  chat::RenderOptions ro = chat::render_options_for(tok);
  ro.add_generation_prompt = true;
  chat::EncodeChatOptions eo;
  eo.assistant_mask = false;
  auto enc = chat::encode_chat(tpl, tok, messages, ro, eo);
  return std::vector<int64_t>(enc.ids.begin(), enc.ids.end());
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand(
      "generate",
      "Generate text with a model (and optionally an unmerged LoRA adapter) from a prompt, a "
      "chat file or token ids; with none of them, read prompts line by line from stdin. "
      "Uses a KV cache; stops at the model's EOS ids (generation_config.json).");
  cmd->add_option("--model", a->model_dir, "Model directory (Hugging Face layout)")->required();
  cmd->add_option("--adapter", a->adapter_dir, "PEFT adapter directory to apply (unmerged)");
  auto* p = cmd->add_option("--prompt", a->prompt, "Prompt text (tokenized as tokenizer(text))");
  auto* c = cmd->add_option("--chat", a->chat_file,
                            "JSON file with a list of {role, content} messages, rendered with "
                            "the model's chat template and a generation prompt");
  cmd->add_option("--chat-template", a->chat_template,
                  "With --chat: a built-in template (llama2, llama3, chatml, mistral, gemma, phi3) "
                  "instead of the tokenizer's own");
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
  cmd->add_flag("--json", a->json, "Print {\"ids\": [...], \"text\": ...} per prompt");
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
      need_tok("interactive mode");
      std::string line;
      while (std::fprintf(stderr, "> "), std::getline(std::cin, line)) {
        if (line.empty()) continue;
        auto ids = tok->encode(line);
        run_one(*m, tok.get(), std::vector<int64_t>(ids.begin(), ids.end()), *a);
      }
    }
  });
}

}  // namespace loratune::cli
