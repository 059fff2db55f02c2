// trainer/chat/chat_template.cpp — conversation -> rendered text and
// assistant spans (see chat_template.h for the span construction).
#include "trainer/chat/chat_template.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "trainer/io/error.h"

namespace loratune::chat {
namespace {

// transformers' _normalize_chat_messages + _alias_reasoning_fields.
Json normalize_messages(const Json& messages) {
  if (!messages.is_array()) throw Error("chat: messages must be a JSON array", ErrorKind::kData);
  Json out = Json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& m = messages[i];
    if (!m.is_object())
      throw Error("chat: message " + std::to_string(i) + " is not a JSON object", ErrorKind::kData);
    Json n = Json::object();
    for (auto it = m.begin(); it != m.end(); ++it) {
      if (!it.value().is_null()) n[it.key()] = it.value();
    }
    const Json* reasoning = nullptr;
    for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
      if (n.contains(key)) {
        reasoning = &n[key];
        break;
      }
    }
    if (reasoning) {
      Json r = *reasoning;
      Json a = Json::object();
      a["thinking"] = r;
      for (auto it = n.begin(); it != n.end(); ++it) a[it.key()] = it.value();
      a["reasoning_content"] = r;
      n = std::move(a);
    }
    out.push_back(std::move(n));
  }
  return out;
}

// `s` for a one-line message: control bytes as \xNN (the tokenizer library
// does not link io's printable()).
std::string one_line(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string role_of(const Json& m) {
  auto it = m.find("role");
  return it != m.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

ChatTemplate::ChatTemplate(const std::string& source, const std::string& name,
                           const jinja::Budgets& budgets)
    : source_(source), template_(source, name, budgets) {}

jinja::RenderOutput ChatTemplate::run(const Json& messages, const RenderOptions& opts, bool agp,
                                      bool track) const {
  jinja::Dict ctx;
  jinja::Value msgs;
  try {
    msgs = jinja::Value::from_json(messages);
    ctx.set("messages", msgs);
    ctx.set("tools", jinja::Value::from_json(opts.tools));
    ctx.set("documents", jinja::Value::none());
    ctx.set("add_generation_prompt", jinja::Value(agp));
    if (!opts.bos_token.empty()) ctx.set("bos_token", jinja::Value(opts.bos_token));
    if (!opts.eos_token.empty()) ctx.set("eos_token", jinja::Value(opts.eos_token));
    for (const Json* vars : {&opts.special_tokens, &opts.extra}) {
      if (vars->is_null()) continue;
      if (!vars->is_object())
        throw Error("chat: template variables must be a JSON object", ErrorKind::kConfig);
      for (auto it = vars->begin(); it != vars->end(); ++it) {
        ctx.set(it.key(), jinja::Value::from_json(it.value()));
      }
    }
  } catch (const jinja::Failure& f) {
    throw Error("chat: " + f.message, f.kind);
  }
  std::vector<jinja::Value> tracked;
  if (track) tracked = msgs.items();
  return template_.render(ctx, tracked);
}

std::string ChatTemplate::render_text(const Json& messages, const RenderOptions& opts) const {
  return run(normalize_messages(messages), opts, opts.add_generation_prompt, false).text;
}

std::optional<std::string> ChatTemplate::generation_prompt_probe(const RenderOptions& opts) const {
  const Json one = Json::array({Json{{"role", "user"}, {"content", ""}}});
  try {
    const std::string with = run(one, opts, true, false).text;
    const std::string without = run(one, opts, false, false).text;
    if (with.size() > without.size() && with.compare(0, without.size(), without) == 0) {
      return with.substr(without.size());
    }
  } catch (const Error&) {
  }
  return std::nullopt;  // none: the caller reports its own failure
}

Rendered ChatTemplate::render(const Json& messages, const RenderOptions& opts) const {
  Json msgs = normalize_messages(messages);
  jinja::RenderOutput full = run(msgs, opts, opts.add_generation_prompt, true);
  Rendered r;
  r.text = std::move(full.text);
  if (has_generation() && !opts.force_constructed_spans) {
    r.spans_from_generation_tags = true;
    r.assistant_spans = std::move(full.generation_spans);
    return r;
  }
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (role_of(msgs[i]) != "assistant") continue;
    const std::string where = "chat: assistant message " + std::to_string(i) + ": ";
    const auto& segs = full.tracked_segments[i];
    if (segs.size() != 1) {
      throw Error(where + "the template wrote it in " + std::to_string(segs.size()) +
                      " loop iterations (expected exactly one); add {% generation %} to the "
                      "template to mark it",
                  ErrorKind::kUnsupported);
    }
    // The generation prompt for this turn: what the template appends after
    // messages[:i] when asked for one, i.e. the output past its last message.
    Json prefix(msgs.begin(), msgs.begin() + static_cast<std::ptrdiff_t>(i));
    if (prefix.is_null()) prefix = Json::array();
    const jinja::Span seg = segs[0];
    jinja::RenderOutput p;
    try {
      p = run(prefix, opts, true, true);
    } catch (const Error& e) {
      // An assistant message first: templates that read messages[0] cannot
      // render an empty conversation. Its generation prompt is then what the
      // template appends to a one-message conversation when asked for one.
      const std::optional<std::string> probe =
          i == 0 ? generation_prompt_probe(opts) : std::nullopt;
      if (probe) {
        const std::string& probe_prompt = *probe;
        if (seg.end - seg.begin < probe_prompt.size() ||
            r.text.compare(seg.begin, probe_prompt.size(), probe_prompt) != 0) {
          throw Error(where + "its turn does not start with the generation prompt '" +
                          one_line(probe_prompt) +
                          "'; add {% generation %} to the template to mark it",
                      ErrorKind::kUnsupported);
        }
        r.assistant_spans.push_back({seg.begin + probe_prompt.size(), seg.end});
        continue;
      }
      throw Error(where + "rendering messages[:" + std::to_string(i) +
                      "] with add_generation_prompt failed: ",
                  e);
    }
    // After the last message's output in that prefix render; when no message
    // wrote anything there (only a system block outside the loop, or no
    // message), after the text the full render has before this turn.
    size_t tail = 0;
    bool any = false;
    for (const auto& s : p.tracked_segments) {
      for (const auto& span : s) tail = std::max(tail, span.end), any = true;
    }
    if (!any) {
      if (p.text.compare(0, seg.begin, r.text, 0, seg.begin) != 0) {
        throw Error(where + "the text before it differs from messages[:" + std::to_string(i) +
                        "] rendered alone; add {% generation %} to the template to mark it",
                    ErrorKind::kUnsupported);
      }
      tail = seg.begin;
    }
    const std::string prompt = p.text.substr(std::min(tail, p.text.size()));
    if (seg.end - seg.begin < prompt.size() ||
        r.text.compare(seg.begin, prompt.size(), prompt) != 0) {
      throw Error(where + "its turn does not start with the generation prompt '" +
                      one_line(prompt) + "'; add {% generation %} to the template to mark it",
                  ErrorKind::kUnsupported);
    }
    r.assistant_spans.push_back({seg.begin + prompt.size(), seg.end});
  }
  return r;
}

}  // namespace loratune::chat
