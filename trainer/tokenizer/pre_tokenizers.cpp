// Pre-tokenizers of tokenizer.json: Split, ByteLevel, Metaspace, Digits, Sequence.
#include "trainer/tokenizer/pipeline.h"

namespace loratune::tokenizer {

namespace {

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct Piece {
  size_t b, e;
  bool match;
};

// Splits `n` at `matches` (sorted, non-overlapping) the way tokenizers'
// NormalizedString::split does for each delimiter behavior.
void split_by(const Normalized& n, const std::vector<std::pair<size_t, size_t>>& matches,
              Behavior behavior, bool invert, std::vector<Normalized>& out) {
  std::vector<Piece> all;
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev < b) all.push_back({prev, b, invert});
    all.push_back({b, e, !invert});
    prev = e;
  }
  if (prev < n.text().size()) all.push_back({prev, n.text().size(), invert});

  std::vector<Piece> res;
  bool previous_match = false;
  switch (behavior) {
    case Behavior::kIsolated:
      res = all;
      break;
    case Behavior::kRemoved:
      for (const Piece& p : all)
        if (!p.match) res.push_back(p);
      break;
    case Behavior::kContiguous:
      for (const Piece& p : all) {
        if (p.match == previous_match && !res.empty()) {
          res.back().e = p.e;
        } else {
          res.push_back(p);
        }
        previous_match = p.match;
      }
      break;
    case Behavior::kMergedWithPrevious:
      for (const Piece& p : all) {
        if (p.match && !previous_match && !res.empty()) {
          res.back().e = p.e;
        } else {
          res.push_back(p);
        }
        previous_match = p.match;
      }
      break;
    case Behavior::kMergedWithNext:
      for (auto it = all.rbegin(); it != all.rend(); ++it) {
        if (it->match && !previous_match && !res.empty()) {
          res.back().b = it->b;
        } else {
          res.push_back(*it);
        }
        previous_match = it->match;
      }
      std::reverse(res.begin(), res.end());
      break;
  }
  for (const Piece& p : res)
    if (p.e > p.b) out.push_back(n.slice(p.b, p.e));
}

// Applies `f(piece, out)` to every piece.
template <class F>
void for_each_piece(std::vector<Normalized>& pieces, F f) {
  std::vector<Normalized> out;
  out.reserve(pieces.size() * 2);
  for (const Normalized& p : pieces) f(p, out);
  pieces = std::move(out);
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(const Json& pattern, Behavior behavior, bool invert, const std::string& where)
      : behavior_(behavior), invert_(invert) {
    if (pattern.contains("String") && pattern["String"].is_string()) {
      literal_ = pattern["String"].get<std::string>();
      // tokenizers matches a String pattern as an escaped regex: the empty
      // one matches between every two characters (and at both ends).
      if (literal_.empty()) regex_ = std::make_unique<Regex>("", where);
    } else if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      regex_ = std::make_unique<Regex>(pattern["Regex"].get<std::string>(), where);
    } else {
      throw Error(where + ": 'pattern' must be {\"String\": ...} or {\"Regex\": ...}",
                  ErrorKind::kCorrupt);
    }
  }
  void pre_tokenize(std::vector<Normalized>& pieces) const override {
    std::vector<std::pair<size_t, size_t>> m;
    for_each_piece(pieces, [&](const Normalized& n, std::vector<Normalized>& out) {
      m.clear();
      const std::string& t = n.text();
      if (regex_) {
        regex_->find_all(t, m, /*keep_empty=*/true);
      } else if (!literal_.empty()) {
        for (size_t p = t.find(literal_); p != std::string::npos;
             p = t.find(literal_, p + literal_.size()))
          m.emplace_back(p, p + literal_.size());
      }
      split_by(n, m, behavior_, invert_, out);
    });
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  Behavior behavior_;
  bool invert_;
};

// GPT-2's pre-tokenization regex, used by ByteLevel with use_regex.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ByteLevel leaves the text as UTF-8 bytes: the BPE model reads its vocab
// through the byte alphabet instead (BpeOptions::byte_level), which is the
// same as mapping every byte to its alphabet character here.
class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex, const std::string& where)
      : add_prefix_space_(add_prefix_space) {
    if (use_regex) regex_ = std::make_unique<Regex>(kGpt2Pattern, where);
  }
  void pre_tokenize(std::vector<Normalized>& pieces) const override {
    std::vector<std::pair<size_t, size_t>> m;
    for_each_piece(pieces, [&](const Normalized& n0, std::vector<Normalized>& out) {
      Normalized n = n0;
      if (add_prefix_space_ && (n.text().empty() || n.text()[0] != ' ')) n.prepend(" ");
      if (!regex_) {
        if (!n.text().empty()) out.push_back(std::move(n));
        return;
      }
      m.clear();
      regex_->find_all(n.text(), m);
      split_by(n, m, Behavior::kIsolated, false, out);
    });
  }
  bool byte_level() const override { return true; }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  MetaspacePreTokenizer(std::string replacement, Prepend prepend, bool split)
      : rep_(std::move(replacement)), prepend_(prepend), split_(split) {}
  void pre_tokenize(std::vector<Normalized>& pieces) const override {
    std::vector<std::pair<size_t, size_t>> m;
    std::vector<Normalized::Edit> edits;
    for_each_piece(pieces, [&](const Normalized& n0, std::vector<Normalized>& out) {
      Normalized n = n0;
      edits.clear();
      const std::string& t = n.text();
      for (size_t p = t.find(' '); p != std::string::npos; p = t.find(' ', p + 1))
        edits.push_back({p, p + 1, rep_});
      n.apply(edits);
      bool starts = n.text().compare(0, rep_.size(), rep_) == 0;
      if (!starts && (prepend_ == Prepend::kAlways ||
                      (prepend_ == Prepend::kFirst && n.original(0, n.text().size()).first == 0))) {
        n.prepend(rep_);
      }
      if (!split_) {
        if (!n.text().empty()) out.push_back(std::move(n));
        return;
      }
      m.clear();
      const std::string& s = n.text();
      for (size_t p = s.find(rep_); p != std::string::npos; p = s.find(rep_, p + rep_.size()))
        m.emplace_back(p, p + rep_.size());
      split_by(n, m, Behavior::kMergedWithNext, false, out);
    });
  }

 private:
  std::string rep_;
  Prepend prepend_;
  bool split_;
};

class DigitsPreTokenizer : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  void pre_tokenize(std::vector<Normalized>& pieces) const override {
    std::vector<std::pair<size_t, size_t>> m;
    for_each_piece(pieces, [&](const Normalized& n, std::vector<Normalized>& out) {
      m.clear();
      const std::string& t = n.text();
      for (size_t i = 0; i < t.size(); ++i)
        if (t[i] >= '0' && t[i] <= '9') m.emplace_back(i, i + 1);
      split_by(n, m, individual_ ? Behavior::kIsolated : Behavior::kContiguous, false, out);
    });
  }

 private:
  bool individual_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<Normalized>& pieces) const override {
    for (const auto& p : parts_) p->pre_tokenize(pieces);
  }
  bool byte_level() const override { return !parts_.empty() && parts_.back()->byte_level(); }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

Behavior parse_behavior(const Json& j, const std::string& where) {
  std::string b = json_string(j, "behavior", where);
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  throw Error(where + ": unknown split behavior '" + b + "'", ErrorKind::kCorrupt);
}

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = component_type(j, "a pre-tokenizer", where);
  const std::string at = where + " (" + type + ")";
  if (type == "Sequence") {
    auto parts =
        make_sequence_parts<PreTokenizer>(j, "pretokenizers", where, at, make_pre_tokenizer);
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      if (parts[i]->byte_level()) {
        throw Error(at + ": a pre-tokenizer after ByteLevel is not supported",
                    ErrorKind::kUnsupported);
      }
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "Split") {
    check_keys(j, {"pattern", "behavior", "invert"}, at);
    if (!j.contains("pattern") || !j["pattern"].is_object())
      throw Error(at + ": 'pattern' must be an object", ErrorKind::kCorrupt);
    return std::make_unique<SplitPreTokenizer>(j["pattern"], parse_behavior(j, at),
                                               json_bool(j, "invert", false, at), at);
  }
  if (type == "ByteLevel") {
    check_keys(j, {"add_prefix_space", "trim_offsets", "use_regex"}, at);
    return std::make_unique<ByteLevelPreTokenizer>(json_bool(j, "add_prefix_space", true, at),
                                                   json_bool(j, "use_regex", true, at), at);
  }
  if (type == "Metaspace") {
    check_keys(j, {"replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep"}, at);
    std::string rep =
        j.contains("replacement") ? json_string(j, "replacement", at) : "\xE2\x96\x81";
    auto scheme = MetaspacePreTokenizer::Prepend::kAlways;
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
      std::string s = json_string(j, "prepend_scheme", at);
      if (s == "first") {
        scheme = MetaspacePreTokenizer::Prepend::kFirst;
      } else if (s == "never") {
        scheme = MetaspacePreTokenizer::Prepend::kNever;
      } else if (s != "always") {
        throw Error(at + ": unknown prepend_scheme '" + s + "'", ErrorKind::kCorrupt);
      }
    } else if (!json_bool(j, "add_prefix_space", true, at)) {
      scheme = MetaspacePreTokenizer::Prepend::kNever;
    }
    return std::make_unique<MetaspacePreTokenizer>(rep, scheme, json_bool(j, "split", true, at));
  }
  if (type == "Digits") {
    check_keys(j, {"individual_digits"}, at);
    return std::make_unique<DigitsPreTokenizer>(json_bool(j, "individual_digits", false, at));
  }
  throw Error(where + ": pre-tokenizer type '" + type +
                  "' is not supported (supported: Sequence, Split, ByteLevel, Metaspace, Digits)",
              ErrorKind::kUnsupported);
}

}  // namespace loratune::tokenizer
