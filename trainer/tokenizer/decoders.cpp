// Decoders (ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace,
// Sequence) and post-processors (TemplateProcessing, ByteLevel, Bert,
// Roberta, Sequence) of tokenizer.json.
#include <cctype>

#include "trainer/tokenizer/pipeline.h"

namespace loratune::tokenizer {

namespace {

std::vector<char32_t> chars_of(const std::string& s) {
  std::vector<char32_t> out;
  for (size_t i = 0; i < s.size(); i += utf8_len(static_cast<unsigned char>(s[i])))
    out.push_back(utf8_at(s, i));
  return out;
}

class ByteLevelDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      std::string mapped;
      bool ok = true;
      for (char32_t c : chars_of(t)) {
        int b = unicode_to_byte(c);
        if (b < 0) {
          ok = false;
          break;
        }
        mapped += static_cast<char>(b);
      }
      bytes += ok ? mapped : t;  // a token outside the alphabet keeps its bytes
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(char32_t rep, bool prepend) : rep_(rep), prepend_(prepend) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      for (char32_t c : chars_of(tokens[i])) {
        if (c != rep_) {
          append_utf8(out, c);
        } else if (!(i == 0 && prepend_)) {
          out += ' ';
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  char32_t rep_;
  bool prepend_;
};

class ByteFallbackDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (utf8_lossy(pending) == pending) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
          std::isxdigit(static_cast<unsigned char>(t[3])) &&
          std::isxdigit(static_cast<unsigned char>(t[4]))) {
        pending += static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, all);
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      auto cs = chars_of(t);
      size_t b = 0, e = cs.size();
      for (size_t i = 0; i < start_ && i < cs.size() && cs[i] == content_; ++i) b = i + 1;
      for (size_t i = 0; i < stop_ && i < cs.size() && cs[cs.size() - 1 - i] == content_; ++i)
        e = cs.size() - 1 - i;
      std::string out;
      for (size_t i = b; i < e; ++i) append_utf8(out, cs[i]);
      t = std::move(out);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(const Json& pattern, std::string content, const std::string& where)
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
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::pair<size_t, size_t>> m;
    for (std::string& t : tokens) {
      m.clear();
      if (regex_) {
        regex_->find_all(t, m);
      } else if (!literal_.empty()) {
        for (size_t p = t.find(literal_); p != std::string::npos;
             p = t.find(literal_, p + literal_.size()))
          m.emplace_back(p, p + literal_.size());
      }
      if (m.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (auto [b, e] : m) {
        out.append(t, prev, b - prev);
        out += content_;
        prev = e;
      }
      out.append(t, prev, std::string::npos);
      t = std::move(out);
    }
  }

 private:
  std::string literal_, content_;
  std::unique_ptr<Regex> regex_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

char32_t single_char(const std::string& s, const std::string& what, const std::string& where) {
  auto cs = chars_of(s);
  if (cs.size() != 1)
    throw Error(where + ": '" + what + "' must be a single character", ErrorKind::kCorrupt);
  return cs[0];
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const Json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = component_type(j, "a decoder", where);
  const std::string at = where + " (" + type + ")";
  if (type == "Sequence") {
    return std::make_unique<SequenceDecoder>(
        make_sequence_parts<Decoder>(j, "decoders", where, at, make_decoder));
  }
  if (type == "ByteLevel") {
    check_keys(j, {"add_prefix_space", "trim_offsets", "use_regex"}, at);
    return std::make_unique<ByteLevelDecoder>();
  }
  if (type == "Metaspace") {
    check_keys(j, {"replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep"}, at);
    std::string rep =
        j.contains("replacement") ? json_string(j, "replacement", at) : "\xE2\x96\x81";
    bool prepend = json_bool(j, "add_prefix_space", true, at);
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null())
      prepend = json_string(j, "prepend_scheme", at) != "never";
    return std::make_unique<MetaspaceDecoder>(single_char(rep, "replacement", at), prepend);
  }
  if (type == "ByteFallback") {
    check_keys(j, {}, at);
    return std::make_unique<ByteFallbackDecoder>();
  }
  if (type == "Fuse") {
    check_keys(j, {}, at);
    return std::make_unique<FuseDecoder>();
  }
  if (type == "Strip") {
    check_keys(j, {"content", "start", "stop"}, at);
    auto num = [&](const char* k) {
      if (!j.contains(k) || !j[k].is_number_integer() || j[k].get<long long>() < 0)
        throw Error(at + ": '" + k + "' must be a non-negative integer", ErrorKind::kCorrupt);
      return j[k].get<size_t>();
    };
    return std::make_unique<StripDecoder>(single_char(json_string(j, "content", at), "content", at),
                                          num("start"), num("stop"));
  }
  if (type == "Replace") {
    check_keys(j, {"pattern", "content"}, at);
    if (!j.contains("pattern") || !j["pattern"].is_object())
      throw Error(at + ": 'pattern' must be an object", ErrorKind::kCorrupt);
    return std::make_unique<ReplaceDecoder>(j["pattern"], json_string(j, "content", at), at);
  }
  throw Error(
      where + ": decoder type '" + type +
          "' is not supported (supported: Sequence, ByteLevel, Metaspace, ByteFallback, Fuse, "
          "Strip, Replace)",
      ErrorKind::kUnsupported);
}

PostProcessor make_post_processor(const Json& j, const std::string& where) {
  PostProcessor pp;
  if (j.is_null()) return pp;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    throw Error(where + ": a post-processor must be an object with a string 'type'",
                ErrorKind::kCorrupt);
  }
  const std::string type = j["type"].get<std::string>();
  const std::string at = where + " (" + type + ")";
  if (type == "ByteLevel") return pp;  // changes offsets only
  if (type == "Sequence") {
    if (!j.contains("processors") || !j["processors"].is_array())
      throw Error(at + ": 'processors' must be a list", ErrorKind::kCorrupt);
    for (size_t i = 0; i < j["processors"].size(); ++i) {
      PostProcessor p =
          make_post_processor(j["processors"][i], where + ".processors[" + std::to_string(i) + "]");
      // Each processor wraps what the previous ones produced.
      pp.prefix.insert(pp.prefix.begin(), p.prefix.begin(), p.prefix.end());
      pp.suffix.insert(pp.suffix.end(), p.suffix.begin(), p.suffix.end());
    }
    return pp;
  }
  if (type == "TemplateProcessing") {
    if (!j.contains("single") || !j["single"].is_array())
      throw Error(at + ": 'single' must be a list", ErrorKind::kCorrupt);
    Json specials = Json::object();
    if (j.contains("special_tokens") && !j["special_tokens"].is_null()) {
      specials = j["special_tokens"];
      if (!specials.is_object())
        throw Error(at + ": 'special_tokens' must be an object", ErrorKind::kCorrupt);
    }
    bool seen_a = false;
    for (size_t i = 0; i < j["single"].size(); ++i) {
      const Json& item = j["single"][i];
      const std::string item_at = at + ": single[" + std::to_string(i) + "]";
      // {"Sequence": {"id": "A", "type_id": 0}} or {"SpecialToken": {"id": ..., "type_id": 0}}
      auto item_id = [&](const char* kind) {
        const Json& x = item[kind];
        if (!x.is_object() || !x.contains("id") || !x["id"].is_string())
          throw Error(item_at + ": '" + kind + "' must be an object with a string 'id'",
                      ErrorKind::kCorrupt);
        return x["id"].get<std::string>();
      };
      if (!item.is_object() || item.size() != 1)
        throw Error(item_at + ": must be {\"Sequence\": ...} or {\"SpecialToken\": ...}",
                    ErrorKind::kCorrupt);
      if (item.contains("Sequence")) {
        if (item_id("Sequence") != "A")
          throw Error(at + ": the single template may only use sequence A", ErrorKind::kCorrupt);
        seen_a = true;
      } else if (item.contains("SpecialToken")) {
        std::string id = item_id("SpecialToken");
        if (!specials.contains(id))
          throw Error(at + ": special token '" + id + "' is not listed in special_tokens",
                      ErrorKind::kCorrupt);
        const Json& sp = specials[id];
        if (!sp.is_object() || !sp.contains("ids") || !sp["ids"].is_array())
          throw Error(at + ": special_tokens['" + id + "'] must be an object with a list 'ids'",
                      ErrorKind::kCorrupt);
        auto& dst = seen_a ? pp.suffix : pp.prefix;
        for (size_t k = 0; k < sp["ids"].size(); ++k)
          dst.push_back(json_id(
              sp["ids"][k], at + ": special_tokens['" + id + "'].ids[" + std::to_string(k) + "]"));
      } else {
        throw Error(item_at + ": unknown template item " + item.dump(), ErrorKind::kCorrupt);
      }
    }
    if (!seen_a) throw Error(at + ": the single template has no $A", ErrorKind::kCorrupt);
    return pp;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    auto id_of = [&](const char* k) {
      if (!j.contains(k) || !j[k].is_array() || j[k].size() != 2 || !j[k][0].is_string())
        throw Error(at + ": '" + k + "' must be [token, id]", ErrorKind::kCorrupt);
      return json_id(j[k][1], at + ": '" + std::string(k) + "'[1]");
    };
    pp.prefix = {id_of("cls")};
    pp.suffix = {id_of("sep")};
    return pp;
  }
  throw Error(where + ": post-processor type '" + type +
                  "' is not supported (supported: TemplateProcessing, ByteLevel, BertProcessing, "
                  "RobertaProcessing, "
                  "Sequence)",
              ErrorKind::kUnsupported);
}

}  // namespace loratune::tokenizer
