// Reading tokenizer.json: a SAX pass that builds the JSON tree for everything
// except model.vocab and model.merges, which go straight into vectors (they
// are most of the file; a tree of them costs seconds for 250k-token vocabs).
#include <fstream>
#include <sstream>

#include "trainer/tokenizer/loader.h"

namespace loratune::tokenizer {

namespace {

class Sax {
 public:
  Sax(TokenizerJson& out, const std::string& path) : out_(out), path_(path), dom_(out.tree) {}

  bool null() { return capturing() ? bad("a null") : dom_.null(); }
  bool boolean(bool v) { return capturing() ? bad("a boolean") : dom_.boolean(v); }
  bool number_integer(Json::number_integer_t v) {
    return capturing() ? vocab_id(v) : dom_.number_integer(v);
  }
  bool number_unsigned(Json::number_unsigned_t v) {
    return capturing() ? vocab_id(static_cast<Json::number_integer_t>(v)) : dom_.number_unsigned(v);
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
    if (capturing()) return bad("an object");
    if (depth_ == 2 && keys_[1] == "model" && key_ == "vocab") return begin(Mode::kVocab);
    push_key();
    return dom_.start_object(n);
  }
  bool key(std::string& k) {
    if (mode_ == Mode::kVocab && depth_ == capture_depth_ + 1) {
      key_ = std::move(k);
      return true;
    }
    key_ = k;
    return dom_.key(k);
  }
  bool end_object() {
    if (mode_ == Mode::kVocab && depth_ == capture_depth_ + 1) return end();
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
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
  bool vocab_id(Json::number_integer_t v) {
    if (mode_ != Mode::kVocab) return bad("a number");
    out_.vocab.emplace_back(std::move(key_), static_cast<int32_t>(v));
    return true;
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
  size_t error_pos_ = 0;
  std::string error_;
};

}  // namespace

TokenizerJson read_tokenizer_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file", ErrorKind::kIo);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  TokenizerJson out;
  Sax sax(out, path);
  if (!Json::sax_parse(text, &sax)) {
    size_t line = 1, col = 1;
    for (size_t i = 0; i + 1 < sax.error_pos() && i < text.size(); ++i) {
      if (text[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    std::string what = sax.error();
    if (auto p = what.find("parse error"); p != std::string::npos) what = what.substr(p);
    throw Error(path + ":" + std::to_string(line) + ":" + std::to_string(col) + ": invalid JSON (" +
                    what + ")",
                ErrorKind::kCorrupt);
  }
  return out;
}

}  // namespace loratune::tokenizer
