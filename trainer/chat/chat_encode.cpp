// trainer/chat/chat_encode.cpp — rendered conversation -> token ids and
// assistant mask, with control-token sanitising (see chat_template.h).
#include <algorithm>
#include <string>
#include <vector>

#include "trainer/chat/chat_template.h"
#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::chat {
namespace {

// U+F0000 / U+F0001 in UTF-8: transformers' _CONTROL_TOKEN_START / _END.
const std::string kStart = "\xF3\xB0\x80\x80";
const std::string kEnd = "\xF3\xB0\x80\x81";

std::string remove_all(std::string s, const std::string& what) {
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p))
    s.erase(p, what.size());
  return s;
}

// transformers' mark_control_tokens: wraps every control token in string
// values (not keys) with the markers, after dropping markers already there.
Json mark(const Json& j, const std::vector<std::string>& tokens) {
  if (j.is_string()) {
    std::string s = remove_all(remove_all(j.get<std::string>(), kStart), kEnd);
    std::string out;
    for (size_t i = 0; i < s.size();) {
      const std::string* hit = nullptr;
      for (const auto& t : tokens) {
        if (!t.empty() && s.compare(i, t.size(), t) == 0) {
          hit = &t;
          break;
        }
      }
      if (hit) {
        out += kStart + *hit + kEnd;
        i += hit->size();
      } else {
        out += s[i++];
      }
    }
    return out;
  }
  if (j.is_array()) {
    Json out = Json::array();
    for (const auto& e : j) out.push_back(mark(e, tokens));
    return out;
  }
  if (j.is_object()) {
    Json out = Json::object();
    for (auto it = j.begin(); it != j.end(); ++it) out[it.key()] = mark(it.value(), tokens);
    return out;
  }
  return j;
}

// One piece of the marker-free text: [begin, end), encoded as plain text
// when `as_text` (a control token that came from the inputs).
struct Piece {
  size_t begin, end;
  bool as_text;
};

struct Unmarked {
  std::string text;
  std::vector<size_t> pos;    // marked offset -> clean offset (size marked+1)
  std::vector<Piece> pieces;  // covers text; empty when no marker was found
};

Unmarked strip_markers(const std::string& marked, const std::vector<std::string>& all_added) {
  Unmarked u;
  u.pos.resize(marked.size() + 1);
  size_t piece_start = 0;
  bool any = false;
  auto cut = [&](size_t at) {
    u.pieces.push_back({piece_start, at, false});
    piece_start = at;
  };
  size_t i = 0;
  while (i < marked.size()) {
    u.pos[i] = u.text.size();
    if (marked.compare(i, kStart.size(), kStart) == 0) {
      any = true;
      const std::string* hit = nullptr;
      for (const auto& t : all_added) {
        if (marked.compare(i + kStart.size(), t.size(), t) == 0 &&
            marked.compare(i + kStart.size() + t.size(), kEnd.size(), kEnd) == 0) {
          hit = &t;
          break;
        }
      }
      cut(u.text.size());
      if (hit) {
        size_t len = kStart.size() + hit->size() + kEnd.size();
        for (size_t k = 0; k < len; ++k) {
          u.pos[i + k] =
              u.text.size() + std::min(hit->size(), k >= kStart.size() ? k - kStart.size() : 0);
        }
        u.pieces.push_back({u.text.size(), u.text.size() + hit->size(), true});
        u.text += *hit;
        piece_start = u.text.size();
        i += len;
      } else {
        for (size_t k = 0; k < kStart.size(); ++k) u.pos[i + k] = u.text.size();
        i += kStart.size();
      }
    } else if (marked.compare(i, kEnd.size(), kEnd) == 0) {
      any = true;
      for (size_t k = 0; k < kEnd.size(); ++k) u.pos[i + k] = u.text.size();
      cut(u.text.size());
      i += kEnd.size();
    } else {
      u.text += marked[i++];
    }
  }
  u.pos[marked.size()] = u.text.size();
  if (any) {
    cut(u.text.size());
  } else {
    u.pieces.clear();
  }
  return u;
}

// transformers' encode_marked_chat: first piece encoded normally; each later
// piece after a "\n" that is then removed, marked pieces as plain text.
std::vector<tokenizer::Token> encode_pieces(const tokenizer::Tokenizer& tok, const Unmarked& u) {
  tokenizer::EncodeOptions normal, plain;
  normal.add_special_tokens = plain.add_special_tokens = false;
  plain.split_special_tokens = true;
  const std::vector<int32_t> newline = tok.encode("\n", normal);
  std::vector<tokenizer::Token> out;
  for (size_t k = 0; k < u.pieces.size(); ++k) {
    const Piece& p = u.pieces[k];
    if (p.begin == p.end) continue;
    std::string text = u.text.substr(p.begin, p.end - p.begin);
    const auto& opt = p.as_text ? plain : normal;
    std::vector<tokenizer::Token> toks;
    size_t shift = p.begin;
    if (k == 0) {
      toks = tok.encode_with_offsets(text, opt);
    } else {
      toks = tok.encode_with_offsets("\n" + text, opt);
      bool prefixed = toks.size() >= newline.size() &&
                      std::equal(newline.begin(), newline.end(), toks.begin(),
                                 [](int32_t id, const tokenizer::Token& t) { return id == t.id; });
      if (prefixed) {
        toks.erase(toks.begin(), toks.begin() + static_cast<std::ptrdiff_t>(newline.size()));
        for (auto& t : toks) {
          t.begin = t.begin > 0 ? t.begin - 1 : 0;
          t.end = t.end > 0 ? t.end - 1 : 0;
        }
      } else {
        toks = tok.encode_with_offsets(text, opt);
      }
    }
    if (p.as_text) {
      auto id = tok.token_to_id(text);
      for (const auto& t : toks) {
        if (id && t.id == *id)
          throw Error(
              "chat: can't sanitize '" + text + "': the tokenizer produces it from plain text",
              ErrorKind::kUnsupported);
      }
    }
    for (auto& t : toks) {
      t.begin += static_cast<uint32_t>(shift);
      t.end += static_cast<uint32_t>(shift);
      out.push_back(t);
    }
  }
  return out;
}

Rendered render(const ChatTemplate& tpl, const Json& messages, const RenderOptions& opts,
                bool spans) {
  if (spans) return tpl.render(messages, opts);
  Rendered r;
  r.text = tpl.render_text(messages, opts);
  return r;
}

}  // namespace

RenderOptions render_options_for(const tokenizer::Tokenizer& tok) {
  RenderOptions o;
  const auto& s = tok.special_tokens();
  o.bos_token = s.bos;
  o.eos_token = s.eos;
  if (!s.unk.empty()) o.special_tokens["unk_token"] = s.unk;
  if (!s.pad.empty()) o.special_tokens["pad_token"] = s.pad;
  return o;
}

ChatEncoding encode_chat(const ChatTemplate& tpl, const tokenizer::Tokenizer& tok,
                         const Json& messages, const RenderOptions& opts,
                         const EncodeChatOptions& enc) {
  tokenizer::EncodeOptions normal;
  normal.add_special_tokens = false;
  ChatEncoding out;
  std::vector<tokenizer::Token> tokens;
  if (enc.control_tokens == ControlTokens::kEverywhere) {
    Rendered r = render(tpl, messages, opts, enc.assistant_mask);
    out.text = std::move(r.text);
    out.assistant_spans = std::move(r.assistant_spans);
    tokens = tok.encode_with_offsets(out.text, normal);
  } else {
    // Control tokens: the special added tokens (see ControlTokens).
    std::vector<std::string> control, all_added;
    for (const auto& a : tok.added_tokens()) {
      all_added.push_back(a.content);
      if (a.special && !a.content.empty()) control.push_back(a.content);
    }
    auto longest_first = [](const std::string& a, const std::string& b) {
      return a.size() > b.size();
    };
    std::stable_sort(control.begin(), control.end(), longest_first);
    std::stable_sort(all_added.begin(), all_added.end(), longest_first);
    RenderOptions marked = opts;  // special_tokens stay unmarked: the caller's, not the data's
    marked.tools = mark(opts.tools, control);
    marked.extra = mark(opts.extra, control);
    Rendered r = render(tpl, mark(messages, control), marked, enc.assistant_mask);
    Unmarked u = strip_markers(r.text, all_added);
    out.text = u.text;
    for (const auto& s : r.assistant_spans)
      out.assistant_spans.push_back({u.pos[s.begin], u.pos[s.end]});
    tokens = u.pieces.empty() ? tok.encode_with_offsets(out.text, normal) : encode_pieces(tok, u);
  }
  out.ids.reserve(tokens.size());
  out.assistant_mask.assign(tokens.size(), 0);
  // Every token overlapping a span, as transformers' return_assistant_tokens_mask.
  size_t span = 0;
  const auto& spans = out.assistant_spans;
  for (size_t t = 0; t < tokens.size(); ++t) {
    out.ids.push_back(tokens[t].id);
    while (span < spans.size() && tokens[t].begin >= spans[span].end) ++span;
    if (span == spans.size()) continue;
    if (tokens[t].end > spans[span].begin) out.assistant_mask[t] = 1;
  }
  return out;
}

}  // namespace loratune::chat
