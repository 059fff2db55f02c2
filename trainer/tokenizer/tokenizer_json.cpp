// Reading tokenizer.json: a SAX pass that builds the JSON tree for everything
// except model.vocab and model.merges, which go straight into vectors (they
// are most of the file; a tree of them costs seconds for 250k-token vocabs).
#include <fstream>
#include <limits>
#include <sstream>
#include <unordered_set>

#include "trainer/tokenizer/loader.h"

namespace loratune::tokenizer {

namespace {

constexpr size_t kMaxTokenizerJsonDepth = 128;
// Other JSON files (tokenizer_config.json, generation_config.json): the
// limit of io::parse_json.
constexpr int kMaxJsonDepth = 256;

// A key for a message (main() escapes what is not printable).
std::string clip(const std::string& s) {
  return s.size() > 200 ? s.substr(0, 200) + "..." : s;
}

// "<path>:<line>:<col>: invalid JSON (<what>)" for the byte at 1-based `pos`.
[[noreturn]] void throw_invalid(const std::string& path, const std::string& text, size_t pos,
                                std::string what) {
  size_t line = 1, col = 1;
  for (size_t i = 0; i + 1 < pos && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  if (auto p = what.find("parse error"); p != std::string::npos) what = what.substr(p);
  throw Error(path + ":" + std::to_string(line) + ":" + std::to_string(col) + ": invalid JSON (" +
                  what + ")",
              ErrorKind::kCorrupt);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file", ErrorKind::kIo);
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": cannot read", ErrorKind::kIo);
  return ss.str();
}

class Sax {
 public:
  Sax(TokenizerJson& out, const std::string& path) : out_(out), path_(path), dom_(out.tree) {}

  bool null() { return capturing() ? bad("a null") : dom_.null(); }
  bool boolean(bool v) { return capturing() ? bad("a boolean") : dom_.boolean(v); }
  bool number_integer(Json::number_integer_t v) {
    return capturing() ? vocab_id(v) : dom_.number_integer(v);
  }
  bool number_unsigned(Json::number_unsigned_t v) {
    return capturing() ? vocab_id_unsigned(v) : dom_.number_unsigned(v);
  }
  bool number_float(Json::number_float_t v, const std::string& s) {
    return capturing() ? bad("a number") : dom_.number_float(v, s);
  }
  bool string(std::string& s) {
    if (!capturing()) return dom_.string(s);
    if (mode_ == Mode::kMerges && depth_ == capture_depth_ + 1) {
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        throw Error(path_ + ": model: merges[" + std::to_string(out_.merges.size()) + "] '" + s +
                        "' is not two tokens separated by a space",
                    ErrorKind::kCorrupt);
      out_.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      return true;
    }
    if (mode_ == Mode::kMerges && depth_ == capture_depth_ + 2) {
      pair_.push_back(std::move(s));
      return true;
    }
    return bad("a string");
  }
  bool binary(Json::binary_t& b) { return capturing() ? bad("binary") : dom_.binary(b); }
  bool start_object(std::size_t n) {
    check_depth();
    if (capturing()) return bad("an object");
    if (depth_ == 2 && keys_[1] == "model" && key_ == "vocab") return begin(Mode::kVocab);
    push_key();
    seen_keys_.emplace_back();
    return dom_.start_object(n);
  }
  bool key(std::string& k) {
    if (mode_ == Mode::kVocab && depth_ == capture_depth_ + 1) {
      key_ = std::move(k);
      return true;
    }
    // serde refuses a repeated field ("duplicate field `model`"); nlohmann
    // would keep the last one silently.
    if (!seen_keys_.empty() && !seen_keys_.back().insert(k).second)
      throw Error(path_ + ": duplicate key \"" + clip(k) + "\" in a JSON object",
                  ErrorKind::kCorrupt);
    key_ = k;
    return dom_.key(k);
  }
  bool end_object() {
    if (mode_ == Mode::kVocab && depth_ == capture_depth_ + 1) return end();
    --depth_;
    if (!seen_keys_.empty()) seen_keys_.pop_back();
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
    check_depth();
    if (mode_ == Mode::kMerges && depth_ == capture_depth_ + 1) {
      ++depth_;
      pair_.clear();
      return true;
    }
    if (capturing()) return bad("a list");
    if (depth_ == 2 && keys_[1] == "model" && key_ == "merges") return begin(Mode::kMerges);
    push_key();
    return dom_.start_array(n);
  }
  bool end_array() {
    if (mode_ == Mode::kMerges && depth_ == capture_depth_ + 2) {
      --depth_;
      if (pair_.size() != 2)
        throw Error(path_ + ": model: merges[" + std::to_string(out_.merges.size()) +
                        "] must be \"a b\" or [a, b]",
                    ErrorKind::kCorrupt);
      out_.merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
      return true;
    }
    if (mode_ == Mode::kMerges && depth_ == capture_depth_ + 1) return end();
    --depth_;
    return dom_.end_array();
  }
  bool parse_error(std::size_t pos, const std::string& tok, const nlohmann::detail::exception& e) {
    error_pos_ = pos;
    error_ = e.what();
    return false;
  }
  size_t error_pos() const { return error_pos_; }
  const std::string& error() const { return error_; }

 private:
  enum class Mode { kNone, kVocab, kMerges };
  bool capturing() const { return mode_ != Mode::kNone; }
  void push_key() {
    if (keys_.size() <= depth_) keys_.resize(depth_ + 1);
    keys_[depth_] = key_;
    ++depth_;
  }
  bool begin(Mode m) {
    mode_ = m;
    capture_depth_ = depth_;
    ++depth_;
    (m == Mode::kVocab ? out_.has_vocab : out_.has_merges) = true;
    return dom_.null();  // the tree holds null in place of the captured value
  }
  bool end() {
    --depth_;
    mode_ = Mode::kNone;
    return true;
  }
  // tokenizers reads JSON with serde_json's recursion limit: 128 levels of
  // nesting are refused ("recursion limit exceeded"); so are they here,
  // which also bounds the nesting of Sequence components built from the tree.
  void check_depth() const {
    if (depth_ + 1 >= kMaxTokenizerJsonDepth)
      throw Error(path_ + ": JSON nested deeper than " +
                      std::to_string(kMaxTokenizerJsonDepth - 1) +
                      " levels (the limit of tokenizers' JSON reader)",
                  ErrorKind::kCorrupt);
  }
  // Vocab ids are u32 in tokenizers (it refuses others: "expected u32") and
  // int32 here: refuse what does not fit instead of truncating.
  bool vocab_id(Json::number_integer_t v) {
    if (mode_ != Mode::kVocab) return bad("a number");
    if (v < 0 || v > std::numeric_limits<int32_t>::max())
      throw Error(path_ + ": model: vocab['" + clip(key_) + "']: id " + std::to_string(v) +
                      " is out of range (0.." +
                      std::to_string(std::numeric_limits<int32_t>::max()) + ")",
                  ErrorKind::kCorrupt);
    out_.vocab.emplace_back(std::move(key_), static_cast<int32_t>(v));
    return true;
  }
  bool vocab_id_unsigned(Json::number_unsigned_t v) {
    if (mode_ == Mode::kVocab &&
        v > static_cast<Json::number_unsigned_t>(std::numeric_limits<int32_t>::max()))
      throw Error(path_ + ": model: vocab['" + clip(key_) + "']: id " + std::to_string(v) +
                      " is out of range (0.." +
                      std::to_string(std::numeric_limits<int32_t>::max()) + ")",
                  ErrorKind::kCorrupt);
    return vocab_id(static_cast<Json::number_integer_t>(v));
  }
  bool bad(const char* what) {
    throw Error(path_ + ": model: unexpected " + std::string(what) + " in '" +
                    (mode_ == Mode::kVocab ? "vocab" : "merges") + "'",
                ErrorKind::kCorrupt);
  }

  TokenizerJson& out_;
  const std::string& path_;
  nlohmann::detail::json_sax_dom_parser<Json> dom_;
  Mode mode_ = Mode::kNone;
  size_t depth_ = 0, capture_depth_ = 0;
  std::vector<std::string> keys_;  // key under which each open container sits
  std::string key_;
  std::vector<std::string> pair_;
  std::vector<std::unordered_set<std::string>> seen_keys_;  // keys of each open object
  size_t error_pos_ = 0;
  std::string error_;
};

}  // namespace

Json read_json_file(const std::string& path) {
  const std::string text = read_text(path);
  // As io::parse_json (trainer/tokenizer does not link trainer/io): a NUL
  // byte (nlohmann's lexer would take it for the end of the input), a
  // duplicate key (nlohmann keeps the last one silently) and deep nesting
  // are refused.
  if (size_t nul = text.find('\0'); nul != std::string::npos)
    throw_invalid(path, text, nul + 1, "a NUL byte");
  std::vector<std::unordered_set<std::string>> keys;
  auto check = [&](int depth, Json::parse_event_t event, Json& parsed) {
    using E = Json::parse_event_t;
    if ((event == E::object_start || event == E::array_start) && depth >= kMaxJsonDepth)
      throw Error(path + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels",
                  ErrorKind::kCorrupt);
    if (event == E::object_start) {
      keys.emplace_back();
    } else if (event == E::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == E::key && !keys.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second)
        throw Error(path + ": duplicate key \"" + clip(k) + "\" in a JSON object",
                    ErrorKind::kCorrupt);
    }
    return true;
  };
  try {
    return Json::parse(text, check);
  } catch (const Json::parse_error& e) {
    throw_invalid(path, text, e.byte, e.what());
  } catch (const Json::exception& e) {  // e.g. out_of_range: a number like 1e400
    throw Error(path + ": invalid JSON (" + std::string(e.what()) + ")", ErrorKind::kCorrupt);
  }
}

TokenizerJson read_tokenizer_json(const std::string& path) {
  const std::string text = read_text(path);
  TokenizerJson out;
  Sax sax(out, path);
  // A NUL byte is never valid JSON (in a string it must be escaped), but
  // nlohmann's lexer takes it for the end of the input and would ignore
  // whatever follows it.
  if (size_t nul = text.find('\0'); nul != std::string::npos)
    throw_invalid(path, text, nul + 1, "a NUL byte");
  if (!Json::sax_parse(text, &sax)) throw_invalid(path, text, sax.error_pos(), sax.error());
  return out;
}

}  // namespace loratune::tokenizer
