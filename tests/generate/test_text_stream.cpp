// Streaming generated text: pieces are handed out as ids arrive, never end
// inside a multi-byte UTF-8 character (characters split over byte-level or
// byte-fallback tokens are held until complete), and add up to the full
// decode. Real tokenizers: Qwen3 (byte-level BPE), Llama-2 (SentencePiece
// with byte fallback).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "common/test_env.h"
#include "trainer/generate/generate.h"
#include "trainer/tokenizer/tokenizer.h"

using namespace loratune;

namespace {

const std::string kReplacement = "\xEF\xBF\xBD";

// True when `s` is complete, well-formed UTF-8.
bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80           ? 1
                     : (c >> 5) == 0x6  ? 2
                     : (c >> 4) == 0xE  ? 3
                     : (c >> 3) == 0x1E ? 4
                                        : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    }
    i += n;
  }
  return true;
}

struct Streamed {
  std::vector<std::string> pieces;
  std::string all;
};

Streamed stream(const tokenizer::Tokenizer& tok, const std::vector<int32_t>& ids, bool finish) {
  Streamed out;
  generate::TextStream ts([&tok](const std::vector<int32_t>& v) { return tok.decode(v, true); },
                          [&out](const std::string& p) {
                            out.pieces.push_back(p);
                            out.all += p;
                          });
  for (int32_t id : ids) ts.push(id);
  if (finish) ts.finish();
  return out;
}

void check_tokenizer(const std::string& dir) {
  SCOPED_TRACE(dir);
  auto tok = tokenizer::load_tokenizer(dir);
  // CJK, emoji and accents: several characters take more than one token.
  const std::string text = "Hi 你好世界 🎉🚀 naïve ∑ x 𝔘 done";
  std::vector<int32_t> ids = tok->encode(text, {/*add_special_tokens=*/false});
  ASSERT_EQ(tok->decode(ids, true), text);
  int split = 0;             // prefixes that end inside a character
  std::vector<int32_t> cut;  // the first of them
  for (size_t n = 1; n <= ids.size(); ++n) {
    std::vector<int32_t> prefix(ids.begin(), ids.begin() + n);
    std::string t = tok->decode(prefix, true);
    if (t.size() >= 3 && t.compare(t.size() - 3, 3, kReplacement) == 0) {
      if (split++ == 0) cut = prefix;
    }
  }
  ASSERT_GT(split, 0) << "no character is split over tokens: the test would prove nothing";

  Streamed s = stream(*tok, ids, /*finish=*/true);
  EXPECT_EQ(s.all, text);
  EXPECT_GE(s.pieces.size(), 8u) << "not streamed piece by piece";
  for (const auto& p : s.pieces) {
    EXPECT_TRUE(valid_utf8(p)) << "piece ends inside a character: " << p;
    EXPECT_EQ(p.find(kReplacement), std::string::npos) << p;
  }

  // Cut inside the last character: held back until finish(), which then
  // shows what the full decode shows.
  const std::string partial = tok->decode(cut, true);
  Streamed held = stream(*tok, cut, /*finish=*/false);
  EXPECT_EQ(held.all.find(kReplacement), std::string::npos) << held.all;
  EXPECT_EQ(stream(*tok, cut, /*finish=*/true).all, partial);
}

TEST(TextStream, ByteLevelBpeNeverSplitsACharacterAndAddsUpToTheDecode) {
  check_tokenizer(test::testdata_dir() + "/chat/qwen3-chat");
}

TEST(TextStream, ByteFallbackSentencePieceNeverSplitsACharacterAndAddsUpToTheDecode) {
  check_tokenizer(test::testdata_dir() + "/chat/llama2-tokenizer");
}

}  // namespace
