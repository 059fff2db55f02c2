// trainer/data/encode.cpp — one JSON record -> Example (input_ids, labels),
// per format; see data.h for the masking rules.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "trainer/chat/chat_template.h"
#include "trainer/data/data.h"
#include "trainer/data/detail.h"
#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::data {
namespace {

// Roles a conversation may use; anything else is most likely a typo that
// would silently turn an assistant turn into masked prompt text.
const std::vector<std::string> kRoles = {"system", "developer", "user",    "assistant",
                                         "tool",   "ipython",   "function"};

// A problem with one record (its location is added by the reader).
[[noreturn]] void bad_record(const std::string& what) {
  throw Error(what, ErrorKind::kData);
}

std::string type_name(const Json& j) {
  if (j.is_null()) return "null";
  if (j.is_boolean()) return "a boolean";
  if (j.is_number()) return "a number";
  if (j.is_string()) return "a string";
  if (j.is_array()) return "a list";
  return "an object";
}

const std::string& get_string(const Json& rec, const char* key) {
  auto it = rec.find(key);
  if (it == rec.end()) bad_record(std::string("missing key '") + key + "'");
  if (!it->is_string()) {
    bad_record(std::string("'") + key + "' must be a string, got " + type_name(*it));
  }
  return it->get_ref<const std::string&>();
}

// "" for an absent or null optional string field.
std::string get_optional_string(const Json& rec, const char* key) {
  auto it = rec.find(key);
  if (it == rec.end() || it->is_null()) return "";
  if (!it->is_string()) {
    bad_record(std::string("'") + key + "' must be a string or null, got " + type_name(*it));
  }
  return it->get<std::string>();
}

// A list of token ids in [0, vocab) (or -100 where allow_ignore).
std::vector<int32_t> get_ids(const Json& rec, const char* key, int64_t vocab, bool allow_ignore) {
  const Json& v = rec.at(key);
  if (!v.is_array()) {
    bad_record(std::string("'") + key + "' must be a list of integers, got " + type_name(v));
  }
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const Json& e = v[i];
    if (!e.is_number_integer()) {
      bad_record(std::string("'") + key + "'[" + std::to_string(i) + "] must be an integer, got " +
                 type_name(e));
    }
    // A number past int64 reads as unsigned; its int64 view would wrap.
    if (e.is_number_unsigned() && e.get<uint64_t>() > static_cast<uint64_t>(vocab)) {
      bad_record(std::string("'") + key + "'[" + std::to_string(i) +
                 "] = " + std::to_string(e.get<uint64_t>()) + " is outside the vocabulary [0, " +
                 std::to_string(vocab) + ")");
    }
    int64_t x = e.get<int64_t>();
    bool in_vocab = x >= 0 && x < vocab;
    if (!in_vocab && !(allow_ignore && x == kIgnoreIndex)) {
      bad_record(std::string("'") + key + "'[" + std::to_string(i) + "] = " + std::to_string(x) +
                 " is outside the vocabulary [0, " + std::to_string(vocab) + ")" +
                 (allow_ignore ? " and is not -100" : ""));
    }
    ids.push_back(static_cast<int32_t>(x));
  }
  return ids;
}

void check_messages(const Json& rec) {
  auto it = rec.find("messages");
  if (it == rec.end()) bad_record("missing key 'messages'");
  const Json& msgs = *it;
  if (!msgs.is_array()) bad_record("'messages' must be a list, got " + type_name(msgs));
  if (msgs.empty()) bad_record("'messages' is empty");
  for (size_t i = 0; i < msgs.size(); ++i) {
    const Json& m = msgs[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad_record(where + " must be an object, got " + type_name(m));
    auto role = m.find("role");
    if (role == m.end()) bad_record(where + " has no 'role'");
    if (!role->is_string()) bad_record(where + ".role must be a string, got " + type_name(*role));
    const std::string& r = role->get_ref<const std::string&>();
    bool known = false;
    for (const auto& k : kRoles) known = known || k == r;
    if (!known) {
      std::string hint = closest_match(r, kRoles);
      bad_record(where + ": unknown role '" + printable(r) + "'" +
                 (hint.empty() ? "" : " (did you mean '" + hint + "'?)"));
    }
    auto content = m.find("content");
    bool tool_call = m.contains("tool_calls");
    if (content == m.end() || content->is_null()) {
      if (!tool_call) bad_record(where + " has no 'content'");
    } else if (!content->is_string()) {
      bad_record(where + ".content must be a string, got " + type_name(*content));
    }
  }
}

}  // namespace

std::string alpaca_prompt(const std::string& instruction, const std::string& input) {
  // The Stanford Alpaca templates (tatsu-lab/stanford_alpaca train.py), as
  // axolotl's `alpaca` prompt style writes them.
  if (input.empty()) {
    return "Below is an instruction that describes a task. Write a response that appropriately "
           "completes the request.\n\n### Instruction:\n" +
           instruction + "\n\n### Response:\n";
  }
  return "Below is an instruction that describes a task, paired with an input that provides "
         "further context. Write a response that appropriately completes the request.\n\n"
         "### Instruction:\n" +
         instruction + "\n\n### Input:\n" + input + "\n\n### Response:\n";
}

namespace detail {

std::string chat_template_source(const tokenizer::Tokenizer* tok, const config::DataConfig& cfg) {
  if (cfg.chat_template == "auto") return tok ? tok->chat_template().value_or("") : "";
  if (const std::string problem = config::chat_template_problem(cfg.chat_template);
      !problem.empty()) {
    throw Error("data.chat_template: " + problem);
  }
  return chat::builtin_template(cfg.chat_template);
}

}  // namespace detail

struct ExampleEncoder::Impl {
  const tokenizer::Tokenizer* tok_ptr;  // null: tokenized records only
  config::DataConfig cfg;
  int64_t vocab = 0;
  std::unique_ptr<chat::ChatTemplate> tpl;  // null when none is available
  chat::RenderOptions render;
  int32_t eos = -1;
  std::string no_template;  // why tpl is null
  ErrorKind no_template_kind = ErrorKind::kConfig;
  std::string no_tokenizer;  // why tok_ptr is null

  Impl(const tokenizer::Tokenizer& t, const config::DataConfig& c) : tok_ptr(&t), cfg(c) {
    vocab = t.vocab_size();
    eos = t.special_tokens().eos_id;
    const bool may_chat = cfg.format == DataFormat::kAuto || cfg.format == DataFormat::kChat;
    const std::string src = detail::chat_template_source(&t, cfg);
    if (src.empty() || !may_chat) {
      no_template = t.description() + " " + t.missing_chat_template() +
                    "; set data.chat_template (eval: --chat-template) to a built-in name";
    } else {
      // Error messages start with where the template came from.
      const std::string name = cfg.chat_template == "auto"
                                   ? t.description() + " chat template"
                                   : "built-in chat template '" + cfg.chat_template + "'";
      try {
        tpl = std::make_unique<chat::ChatTemplate>(src, name);
        render = chat::render_options_for(t);
      } catch (const Error& e) {
        // With format auto, data without chat records must not fail here.
        no_template = e.what();
        no_template_kind = e.kind();
      }
    }
    if (!tpl && cfg.format == DataFormat::kChat)
      throw Error("data.format is chat but " + no_template, no_template_kind);
  }

  Impl(const config::DataConfig& c, int64_t vocab_size, std::string why)
      : tok_ptr(nullptr), cfg(c), vocab(vocab_size), no_tokenizer(std::move(why)) {
    if (cfg.format != DataFormat::kAuto && cfg.format != DataFormat::kTokenized) {
      throw Error("data.format is " + config::to_string(cfg.format) + " but " + no_tokenizer);
    }
  }

  // The tokenizer; throws (kConfig: the setup, not the record, is wrong) for
  // a record that needs one when there is none.
  const tokenizer::Tokenizer& tok() const {
    if (!tok_ptr) throw Error("this record needs a tokenizer but " + no_tokenizer);
    return *tok_ptr;
  }

  // Appends EOS as a target unless the encoding already ends with it (then
  // that token becomes a target: EOS is never masked).
  void finish_with_eos(Example* ex) const {
    if (eos < 0) {
      throw Error(tok().description() +
                  " has no EOS token; the format needs one after the response");
    }
    if (!ex->input_ids.empty() && ex->input_ids.back() == eos) {
      ex->labels.back() = eos;
      return;
    }
    ex->input_ids.push_back(eos);
    ex->labels.push_back(eos);
  }

  tokenizer::EncodeOptions text_options() const {
    tokenizer::EncodeOptions o;
    o.add_special_tokens = true;
    o.split_special_tokens = !cfg.allow_special_tokens;
    return o;
  }

  Example text(const std::string& s) const {
    Example ex;
    ex.input_ids = tok().encode(s, text_options());
    ex.labels = ex.input_ids;
    finish_with_eos(&ex);
    return ex;
  }

  // prompt + completion tokenized once; targets overlap the completion bytes.
  Example prompt_completion(const std::string& prompt, const std::string& completion) const {
    const std::string full = prompt + completion;
    const auto tokens = tok().encode_with_offsets(full, text_options());
    Example ex;
    ex.input_ids.reserve(tokens.size() + 1);
    ex.labels.reserve(tokens.size() + 1);
    for (const auto& t : tokens) {
      bool target = cfg.train_on_prompt || t.end > prompt.size();
      ex.input_ids.push_back(t.id);
      ex.labels.push_back(target ? t.id : kIgnoreIndex);
    }
    finish_with_eos(&ex);
    return ex;
  }

  Example chat(const Json& rec) const {
    check_messages(rec);
    if (!tok_ptr) tok();
    if (!tpl) throw Error("chat record but " + no_template, no_template_kind);
    chat::RenderOptions opts = render;
    if (auto t = rec.find("tools"); t != rec.end() && !t->is_null()) {
      if (!t->is_array()) bad_record("'tools' must be a list, got " + type_name(*t));
      opts.tools = *t;
    }
    chat::EncodeChatOptions enc;
    enc.control_tokens = cfg.allow_special_tokens ? chat::ControlTokens::kEverywhere
                                                  : chat::ControlTokens::kTemplateOnly;
    chat::ChatEncoding ce;
    try {
      ce = chat::encode_chat(*tpl, tok(), rec.at("messages"), opts, enc);
    } catch (const Error& e) {
      // A template that refuses this conversation (raise_exception) is a data
      // problem; budgets and other kinds keep theirs.
      if (e.kind() == ErrorKind::kConfig) throw Error(e.what(), ErrorKind::kData);
      throw;
    }
    Example ex;
    ex.input_ids = std::move(ce.ids);
    ex.labels.resize(ex.input_ids.size());
    for (size_t i = 0; i < ex.input_ids.size(); ++i) {
      bool target = cfg.train_on_prompt || ce.assistant_mask[i];
      ex.labels[i] = target ? ex.input_ids[i] : kIgnoreIndex;
    }
    if (ex.input_ids.empty()) bad_record("the chat template rendered no tokens");
    return ex;
  }

  Example tokenized(const Json& rec) const {
    if (!rec.contains("input_ids")) bad_record("missing key 'input_ids'");
    Example ex;
    ex.input_ids = get_ids(rec, "input_ids", vocab, false);
    if (ex.input_ids.empty()) bad_record("'input_ids' is empty");
    // A mask that hides positions would be ignored (loratune pads and packs
    // batches itself), so those tokens would train: only all ones is read.
    if (auto m = rec.find("attention_mask"); m != rec.end() && !m->is_null()) {
      if (!m->is_array() || m->size() != ex.input_ids.size()) {
        bad_record("'attention_mask' must be a list as long as 'input_ids' (" +
                   std::to_string(ex.input_ids.size()) + ")");
      }
      for (size_t i = 0; i < m->size(); ++i) {
        const Json& v = (*m)[i];
        if (!v.is_number_integer() || v.get<int64_t>() != 1) {
          bad_record("'attention_mask'[" + std::to_string(i) + "] is " + printable(v.dump(), 40) +
                     ": masked (padded) positions are not supported in pre-tokenized data; "
                     "drop them from 'input_ids' (batches are padded and packed by loratune)");
        }
      }
    }
    auto l = rec.find("labels");
    if (l == rec.end() || l->is_null()) {
      ex.labels = ex.input_ids;
      return ex;
    }
    ex.labels = get_ids(rec, "labels", vocab, true);
    if (ex.labels.size() != ex.input_ids.size()) {
      bad_record("'labels' has " + std::to_string(ex.labels.size()) +
                 " entries but 'input_ids' has " + std::to_string(ex.input_ids.size()) +
                 " (labels align with input_ids; the model shifts)");
    }
    return ex;
  }
};

ExampleEncoder::ExampleEncoder(const tokenizer::Tokenizer& tok, const config::DataConfig& cfg)
    : impl_(new Impl(tok, cfg)) {}

ExampleEncoder::ExampleEncoder(const config::DataConfig& cfg, int64_t vocab_size,
                               const std::string& no_tokenizer)
    : impl_(new Impl(cfg, vocab_size, no_tokenizer)) {}

ExampleEncoder::~ExampleEncoder() {
  delete impl_;
}

DataFormat ExampleEncoder::detect(const Json& rec) {
  if (!rec.is_object()) bad_record("a record must be a JSON object, got " + type_name(rec));
  if (rec.contains("messages")) return DataFormat::kChat;
  if (rec.contains("input_ids")) return DataFormat::kTokenized;
  if (rec.contains("instruction") && rec.contains("output")) return DataFormat::kInstruction;
  if (rec.contains("prompt") && rec.contains("completion")) return DataFormat::kPromptCompletion;
  if (rec.contains("text")) return DataFormat::kText;
  std::string keys;
  for (auto it = rec.begin(); it != rec.end(); ++it) keys += (keys.empty() ? "" : ", ") + it.key();
  bad_record("no known format for a record with keys [" + printable(keys) +
             "]; expected text | instruction+output | prompt+completion | messages | input_ids");
}

Example ExampleEncoder::encode(const Json& rec, DataFormat format) const {
  if (!rec.is_object()) bad_record("a record must be a JSON object, got " + type_name(rec));
  switch (format) {
    case DataFormat::kText:
      return impl_->text(get_string(rec, "text"));
    case DataFormat::kInstruction: {
      const std::string& instruction = get_string(rec, "instruction");
      const std::string input = get_optional_string(rec, "input");
      const std::string& output = get_string(rec, "output");
      return impl_->prompt_completion(alpaca_prompt(instruction, input), output);
    }
    case DataFormat::kPromptCompletion: {
      const std::string& prompt = get_string(rec, "prompt");
      const std::string& completion = get_string(rec, "completion");
      return impl_->prompt_completion(prompt, completion);
    }
    case DataFormat::kChat:
      return impl_->chat(rec);
    case DataFormat::kTokenized:
      return impl_->tokenized(rec);
    case DataFormat::kAuto:
      break;
  }
  throw Error("internal: encode() needs a concrete format, not auto", ErrorKind::kInternal);
}

}  // namespace loratune::data
