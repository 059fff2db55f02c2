// Normalizers of tokenizer.json: Sequence, Prepend, Replace, NFC/NFD/NFKC/NFKD,
// Lowercase, Strip.
#include <utf8proc.h>

#include <cstdlib>

#include "trainer/tokenizer/pipeline.h"

namespace loratune::tokenizer {

namespace {

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void normalize(Normalized& n) const override {
    for (const auto& p : parts_) p->normalize(n);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string s) : s_(std::move(s)) {}
  void normalize(Normalized& n) const override {
    if (!n.text().empty()) n.prepend(s_);
  }

 private:
  std::string s_;
};

// Replace of a literal string or a regex (tokenizer.json {"String"|"Regex"}).
class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(const Json& pattern, std::string content, const std::string& where)
      : content_(std::move(content)) {
    if (pattern.contains("String") && pattern["String"].is_string()) {
      literal_ = pattern["String"].get<std::string>();
    } else if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      regex_ = std::make_unique<Regex>(pattern["Regex"].get<std::string>(), where);
    } else {
      throw Error(where + ": 'pattern' must be {\"String\": ...} or {\"Regex\": ...}",
                  ErrorKind::kCorrupt);
    }
  }
  void normalize(Normalized& n) const override {
    std::vector<Normalized::Edit> edits;
    const std::string& t = n.text();
    if (regex_) {
      std::vector<std::pair<size_t, size_t>> m;
      regex_->find_all(t, m);
      for (auto [b, e] : m) edits.push_back({b, e, content_});
    } else if (!literal_.empty()) {
      for (size_t p = t.find(literal_); p != std::string::npos;
           p = t.find(literal_, p + literal_.size())) {
        edits.push_back({p, p + literal_.size(), content_});
      }
    }
    n.apply(edits);
  }

 private:
  std::string literal_, content_;
  std::unique_ptr<Regex> regex_;
};

// Unicode normalization. ASCII characters are starters that never combine
// with what precedes them, so the text is normalized in segments of "one
// ASCII character + the non-ASCII run after it"; segments that change are
// rewritten whole (their bytes align to the segment's original range).
class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(int options) : options_(options) {}
  void normalize(Normalized& n) const override {
    const std::string& t = n.text();
    std::vector<Normalized::Edit> edits;
    size_t i = 0;
    while (i < t.size()) {
      if (static_cast<unsigned char>(t[i]) < 0x80) {
        ++i;
        continue;
      }
      size_t b = i > 0 ? i - 1 : 0;  // include the preceding ASCII starter
      if (!edits.empty() && edits.back().e > b) b = i;
      size_t e = i;
      while (e < t.size() && static_cast<unsigned char>(t[e]) >= 0x80) ++e;
      utf8proc_uint8_t* out = nullptr;
      auto len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(t.data() + b), e - b, &out,
                              static_cast<utf8proc_option_t>(options_));
      if (len < 0)
        throw Error(std::string("unicode normalization failed: ") + utf8proc_errmsg(len),
                    ErrorKind::kData);
      std::string_view r(reinterpret_cast<char*>(out), static_cast<size_t>(len));
      if (r != std::string_view(t).substr(b, e - b)) edits.push_back({b, e, std::string(r)});
      std::free(out);
      i = e;
    }
    n.apply(edits);
  }

 private:
  int options_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void normalize(Normalized& n) const override {
    const std::string& t = n.text();
    std::vector<Normalized::Edit> edits;
    for (size_t i = 0; i < t.size();) {
      size_t l = utf8_len(static_cast<unsigned char>(t[i]));
      char32_t c = utf8_at(t, i);
      if (c == 0x130) {
        // Rust's char::to_lowercase uses the full mapping: U+0130 (İ) is
        // "i" + U+0307, its only lowercase of more than one code point.
        edits.push_back({i, i + l, "i\xCC\x87"});
        i += l;
        continue;
      }
      auto lower = static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
      if (lower != c) {
        std::string s;
        append_utf8(s, lower);
        edits.push_back({i, i + l, s});
      }
      i += l;
    }
    n.apply(edits);
  }
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(Normalized& n) const override {
    const std::string& t = n.text();
    size_t b = 0, e = t.size();
    if (left_) {
      while (b < e && is_whitespace(utf8_at(t, b))) b += utf8_len(static_cast<unsigned char>(t[b]));
    }
    if (right_) {
      while (e > b) {
        size_t s = e - 1;
        while (s > b && (static_cast<unsigned char>(t[s]) & 0xC0) == 0x80) --s;
        if (!is_whitespace(utf8_at(t, s))) break;
        e = s;
      }
    }
    std::vector<Normalized::Edit> edits;
    if (b > 0) edits.push_back({0, b, ""});
    if (e < t.size()) edits.push_back({e, t.size(), ""});
    n.apply(edits);
  }

 private:
  bool left_, right_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const Json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = component_type(j, "a normalizer", where);
  const std::string at = where + " (" + type + ")";
  if (type == "Sequence") {
    return std::make_unique<SequenceNormalizer>(
        make_sequence_parts<Normalizer>(j, "normalizers", where, at, make_normalizer));
  }
  if (type == "Prepend") {
    check_keys(j, {"prepend"}, at);
    return std::make_unique<PrependNormalizer>(json_string(j, "prepend", at));
  }
  if (type == "Replace") {
    check_keys(j, {"pattern", "content"}, at);
    if (!j.contains("pattern") || !j["pattern"].is_object())
      throw Error(at + ": 'pattern' must be an object", ErrorKind::kCorrupt);
    return std::make_unique<ReplaceNormalizer>(j["pattern"], json_string(j, "content", at), at);
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    check_keys(j, {}, at);
    int opt =
        UTF8PROC_STABLE | (type[type.size() - 1] == 'C' ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE);
    if (type.size() == 4) opt |= UTF8PROC_COMPAT;
    return std::make_unique<UnicodeNormalizer>(opt);
  }
  if (type == "Lowercase") {
    check_keys(j, {}, at);
    return std::make_unique<LowercaseNormalizer>();
  }
  if (type == "Strip") {
    check_keys(j, {"strip_left", "strip_right"}, at);
    return std::make_unique<StripNormalizer>(json_bool(j, "strip_left", true, at),
                                             json_bool(j, "strip_right", true, at));
  }
  throw Error(
      where + ": normalizer type '" + type +
          "' is not supported (supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, "
          "Lowercase, Strip)",
      ErrorKind::kUnsupported);
}

}  // namespace loratune::tokenizer
