// trainer/chat/chat_template.h — chat templates: conversation -> text
// (+ assistant spans) -> token ids with an assistant mask.
//
// Rendering matches transformers' apply_chat_template(tokenize=False)
// byte for byte: the same Jinja environment (jinja.h), the same variables
// (messages, tools, documents=None, add_generation_prompt, the special-token
// strings, extra kwargs) and the same message normalisation (keys whose value
// is null are dropped; a reasoning field is aliased to "reasoning_content"
// and "thinking" as transformers' _alias_reasoning_fields does).
//
// Inputs are nlohmann::ordered_json so that key order survives (tojson of
// tools and tool-call arguments prints keys in insertion order, as Python).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/chat/jinja.h"

namespace loratune::tokenizer {
class Tokenizer;
}

namespace loratune::chat {

using Json = nlohmann::ordered_json;

struct RenderOptions {
  bool add_generation_prompt = false;
  // Passed as the variables bos_token / eos_token when non-empty (templates
  // such as Qwen3's have no bos_token: leave it empty and it is undefined).
  std::string bos_token;
  std::string eos_token;
  // Other special-token strings (pad_token, unk_token, ...), as transformers'
  // special_tokens_map passes them; never sanitised (see ControlTokens).
  Json special_tokens = Json::object();
  Json tools = nullptr;         // list of JSON schemas, or null (tools=None)
  Json extra = Json::object();  // the call's kwargs: enable_thinking, ... (override the above)
  // Derive assistant spans by construction even when the template has
  // {% generation %} blocks (used to cross-check the construction).
  bool force_constructed_spans = false;
};

struct Rendered {
  std::string text;
  // Byte spans [begin, end) of the text the model must learn to produce for
  // each assistant turn, in order.
  //  - Template with {% generation %}: exactly the output of those blocks
  //    (transformers' return_assistant_tokens_mask spans, in bytes).
  //  - Otherwise, by construction: the renderer records which output each
  //    loop iteration over a message object writes (identity of the message
  //    dict, no text matching). For assistant message i that segment is its
  //    whole turn; its prefix must equal the generation prompt, i.e. what the
  //    template appends after messages[:i] with add_generation_prompt=true
  //    (rendered separately). The span is the rest of the segment: the
  //    content, any reasoning/tool-call text and the end-of-turn text (e.g.
  //    "Hi<|eot_id|>", "a1<|im_end|>\n", " a </s>"). A template for which this
  //    does not hold (turn written outside a loop over messages, or written
  //    twice, or a header that differs from the generation prompt) is an
  //    error (kUnsupported), never a guess.
  std::vector<jinja::Span> assistant_spans;
  bool spans_from_generation_tags = false;
};

class ChatTemplate {
 public:
  // Compiles `source` once; throws loratune::Error on syntax errors
  // (kCorrupt), unsupported constructs (kUnsupported) or a source over the
  // budgets (kResource). `name` says where the template comes from and
  // starts every error message (e.g. "<dir>/tokenizer_config.json: chat
  // template"); `budgets` bound compiling and every render (the defaults fit
  // all real templates, see jinja_budgets.h).
  explicit ChatTemplate(const std::string& source, const std::string& name = "chat template",
                        const jinja::Budgets& budgets = {});

  // Renders `messages` (a JSON array of {"role", "content", ...}). Throws
  // loratune::Error when the template refuses the conversation, kData
  // ("chat template line 19: raise_exception: Conversation roles must ..."),
  // or exceeds a budget, kResource ("chat template line 1: macro calls
  // nested deeper than the limit of 100").
  std::string render_text(const Json& messages, const RenderOptions& opts) const;
  // Renders and computes the assistant spans (see Rendered).
  Rendered render(const Json& messages, const RenderOptions& opts) const;

  bool has_generation() const { return template_.has_generation(); }
  const std::string& source() const { return source_; }

 private:
  jinja::RenderOutput run(const Json& messages, const RenderOptions& opts, bool agp,
                          bool track) const;
  // What the template appends to a one-message conversation (an empty user
  // message) when asked for a generation prompt; nullopt when that does not
  // render or is not an extension of the render without it.
  std::optional<std::string> generation_prompt_probe(const RenderOptions& opts) const;

  std::string source_;
  jinja::Template template_;
};

// Built-in template sources for models that ship none, copied from the real
// models: "llama2" (Llama-2-chat), "llama3" (Meta-Llama-3-8B-Instruct),
// "chatml" (Qwen2.5 without tools, without the default system prompt),
// "gemma" (gemma-3; gemma-2 has the same turns but refuses system),
// "mistral" (Mistral-7B-Instruct-v0.3), "phi3" (Phi-3-mini-4k-instruct).
// Throws loratune::Error naming the closest valid name for an unknown one.
const std::string& builtin_template(const std::string& name);
std::vector<std::string> builtin_template_names();

// ---- tokens ---------------------------------------------------------------

// Who may produce control tokens (added tokens flagged `special`: turn
// markers, BOS/EOS).
enum class ControlTokens {
  // Safe default for training data: only the template's own scaffolding
  // (its literal text, the bos/eos variables) yields special tokens; the same
  // string inside message content, tool schemas or extra variables is
  // tokenized as plain text, so data cannot forge turn boundaries.
  // Non-special added tokens (Qwen's <think>, <tool_call>) stay recognised
  // everywhere: a reasoning model must learn to emit <think> as its token.
  // Equals transformers' apply_chat_template(..., sanitize_control_tokens=True)
  // with tokenizer.chat_control_tokens = [] (special tokens only). Without
  // that setting transformers also sanitizes the non-special added tokens
  // the template's text contains (Qwen3's <think>, </think>), and its markers
  // then defeat templates that split content at them: a Qwen3 assistant turn
  // "<think>r</think>a" renders with extra newlines there, unlike at inference.
  kTemplateOnly,
  // Exactly transformers' default apply_chat_template(tokenize=True): the
  // whole text is tokenized once with every added token recognised, so a
  // message containing "<|eot_id|>" produces that control token.
  kEverywhere,
};

struct EncodeChatOptions {
  ControlTokens control_tokens = ControlTokens::kTemplateOnly;
  // Compute assistant_spans / assistant_mask (may throw for templates whose
  // turns cannot be located, see Rendered); false leaves both empty.
  bool assistant_mask = true;
};

struct ChatEncoding {
  std::string text;  // rendered text (no markers)
  std::vector<int32_t> ids;
  std::vector<uint8_t> assistant_mask;  // 1 for tokens overlapping an assistant span
  std::vector<jinja::Span> assistant_spans;
};

// Renders and tokenizes a conversation (add_special_tokens=false, as
// apply_chat_template: the template writes BOS itself).
//
// kEverywhere: the whole rendered text is tokenized once with every added
// token recognised — transformers' default.
// kTemplateOnly: control tokens inside the inputs are first wrapped in
// private-use markers (U+F0000/U+F0001, transformers' mark_control_tokens),
// the conversation is rendered, and the markers are stripped again while the
// ranges they enclosed are remembered. When the inputs contained no control
// token (the common case) there is no marker and the text is tokenized once,
// identical to kEverywhere. Otherwise the text is split at the markers and
// encoded piecewise exactly as transformers' encode_marked_chat: marked
// pieces as plain text (split_special_tokens), each piece after the first
// encoded after a "\n" that is removed again (the SentencePiece prefix-space
// trick), so the result equals apply_chat_template(...,
// sanitize_control_tokens=True) with chat_control_tokens = [] (see above).
// The mask marks every token whose byte range overlaps an assistant span,
// like transformers' return_assistant_tokens_mask. Throws loratune::Error
// when the template refuses the conversation.
ChatEncoding encode_chat(const ChatTemplate& tpl, const tokenizer::Tokenizer& tok,
                         const Json& messages, const RenderOptions& opts,
                         const EncodeChatOptions& enc = {});

// Render options filled from a tokenizer's special tokens (bos/eos/pad/unk as
// transformers' special_tokens_map passes them).
RenderOptions render_options_for(const tokenizer::Tokenizer& tok);

}  // namespace loratune::chat
