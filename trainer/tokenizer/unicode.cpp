// UTF-8 helpers, the GPT-2 byte alphabet, Normalized and JSON helpers.
#include <utf8proc.h>
#include <limits>

#include <array>

#include "trainer/tokenizer/pipeline.h"

namespace loratune::tokenizer {

char32_t utf8_at(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  unsigned char c = b(0);
  if (c < 0x80) return c;
  if ((c >> 5) == 6) return ((c & 0x1F) << 6) | (b(1) & 0x3F);
  if ((c >> 4) == 14) return ((c & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  return ((c & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {

// Length of the valid UTF-8 sequence at s[i], or 0 with *bad set to the
// length of the maximal invalid subpart (Unicode 3.9, as Rust's lossy decode).
size_t valid_seq(std::string_view s, size_t i, size_t* bad) {
  auto at = [&](size_t k) -> int {
    return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : -1;
  };
  int c = at(0);
  if (c < 0x80) return 1;
  size_t need;
  int lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    *bad = 1;
    return 0;
  }
  for (size_t k = 1; k <= need; ++k) {
    int b = at(k);
    int l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) {
      *bad = k;
      return 0;
    }
  }
  return need + 1;
}

}  // namespace

void check_utf8(std::string_view s, const std::string& what) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t bad = 0, n = valid_seq(s, i, &bad);
    if (n == 0)
      throw Error(what + ": invalid UTF-8 at byte " + std::to_string(i), ErrorKind::kData);
    i += n;
  }
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t bad = 0, n = valid_seq(s, i, &bad);
    if (n) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += bad;
    }
  }
  return out;
}

bool is_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool is_alphanumeric(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

namespace {

struct ByteAlphabet {
  std::array<char32_t, 256> to{};
  std::unordered_map<char32_t, int> from;
  ByteAlphabet() {
    // GPT-2: printable Latin-1 bytes map to themselves, the rest to 256+n.
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to[b] = keep ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      from[to[b]] = b;
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

}  // namespace

char32_t byte_to_unicode(unsigned char b) {
  return alphabet().to[b];
}
int unicode_to_byte(char32_t c) {
  auto it = alphabet().from.find(c);
  return it == alphabet().from.end() ? -1 : it->second;
}

// ---- Normalized ---------------------------------------------------------------

Normalized::Normalized(std::string text, uint32_t base)
    : text_(std::move(text)), base_(base), empty_at_(base) {}

void Normalized::materialize() {
  if (!identity_) return;
  begin_.resize(text_.size());
  end_.resize(text_.size());
  for (size_t i = 0; i < text_.size(); ++i) {
    begin_[i] = base_ + static_cast<uint32_t>(i);
    end_[i] = begin_[i] + 1;
  }
  identity_ = false;
}

std::pair<uint32_t, uint32_t> Normalized::original(size_t b, size_t e) const {
  if (b >= e || b >= text_.size()) return {empty_at_, empty_at_};
  if (identity_) return {base_ + static_cast<uint32_t>(b), base_ + static_cast<uint32_t>(e)};
  uint32_t lo = begin_[b], hi = end_[b];
  for (size_t i = b + 1; i < e; ++i) {
    lo = std::min(lo, begin_[i]);
    hi = std::max(hi, end_[i]);
  }
  return {lo, hi};
}

Normalized Normalized::slice(size_t b, size_t e) const {
  Normalized out(text_.substr(b, e - b), 0);
  auto r = original(b, e);
  out.empty_at_ = r.first;
  if (identity_) {
    out.base_ = base_ + static_cast<uint32_t>(b);
  } else {
    out.identity_ = false;
    out.begin_.assign(begin_.begin() + b, begin_.begin() + e);
    out.end_.assign(end_.begin() + b, end_.begin() + e);
  }
  return out;
}

void Normalized::apply(const std::vector<Edit>& edits) {
  if (edits.empty()) return;
  materialize();
  std::string t;
  std::vector<uint32_t> nb, ne;
  t.reserve(text_.size());
  size_t pos = 0;
  auto keep = [&](size_t upto) {
    t.append(text_, pos, upto - pos);
    nb.insert(nb.end(), begin_.begin() + pos, begin_.begin() + upto);
    ne.insert(ne.end(), end_.begin() + pos, end_.begin() + upto);
    pos = upto;
  };
  for (const Edit& ed : edits) {
    keep(ed.b);
    std::pair<uint32_t, uint32_t> r;
    if (ed.e > ed.b) {
      r = original(ed.b, ed.e);
    } else if (ed.b < text_.size()) {
      r = {begin_[ed.b], end_[ed.b]};
    } else if (!text_.empty()) {
      r = {begin_[text_.size() - 1], end_[text_.size() - 1]};
    } else {
      r = {empty_at_, empty_at_};
    }
    t += ed.with;
    nb.insert(nb.end(), ed.with.size(), r.first);
    ne.insert(ne.end(), ed.with.size(), r.second);
    pos = ed.e;
  }
  keep(text_.size());
  text_ = std::move(t);
  begin_ = std::move(nb);
  end_ = std::move(ne);
}

// ---- JSON helpers ------------------------------------------------------------

bool json_bool(const Json& j, const char* key, bool dflt, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean())
    throw Error(where + ": '" + key + "' must be a boolean", ErrorKind::kCorrupt);
  return it->get<bool>();
}

std::string json_string(const Json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string())
    throw Error(where + ": '" + key + "' must be a string", ErrorKind::kCorrupt);
  return it->get<std::string>();
}

std::string json_opt_string(const Json& j, const char* key, const std::string& dflt,
                            const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_string())
    throw Error(where + ": '" + key + "' must be a string", ErrorKind::kCorrupt);
  return it->get<std::string>();
}

int32_t json_id(const Json& v, const std::string& what) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(kMax))
    return static_cast<int32_t>(v.get<uint64_t>());
  if (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() >= 0 &&
      v.get<int64_t>() <= kMax)
    return static_cast<int32_t>(v.get<int64_t>());
  std::string got = v.dump();
  if (got.size() > 40) got = got.substr(0, 40) + "...";
  throw Error(
      what + " must be a token id (an integer in 0.." + std::to_string(kMax) + "), got " + got,
      ErrorKind::kCorrupt);
}

void check_keys(const Json& j, std::initializer_list<const char*> known, const std::string& where) {
  if (!j.is_object()) throw Error(where + ": expected a JSON object", ErrorKind::kCorrupt);
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "type") continue;
    bool ok = false;
    for (const char* k : known) ok = ok || it.key() == k;
    if (!ok)
      throw Error(where + ": unsupported option '" + it.key() + "'", ErrorKind::kUnsupported);
  }
}

std::string component_type(const Json& j, const char* what, const std::string& where) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    throw Error(where + ": " + what + " must be an object with a string 'type'",
                ErrorKind::kCorrupt);
  }
  return j["type"].get<std::string>();
}

}  // namespace loratune::tokenizer
