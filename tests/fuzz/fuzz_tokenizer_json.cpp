// libFuzzer target: tokenizer.json through tokenizer::load_tokenizer (no
// tokenizer_config.json), then encode / decode / offsets of a fixed text.
#include <cstdint>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"

namespace {

const char kText[] =
    "Hello, world! ab <s> </s> 123  \t\n  caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80 "
    "end";

void exercise(const loratune::tokenizer::Tokenizer& tok) {
  using loratune::tokenizer::EncodeOptions;
  for (bool add : {true, false}) {
    for (bool split : {true, false}) {
      const auto toks = tok.encode_with_offsets(kText, EncodeOptions{add, split});
      std::vector<int32_t> ids;
      for (const auto& t : toks) {
        if (t.begin > t.end || t.end > sizeof(kText) - 1) __builtin_trap();
        ids.push_back(t.id);
      }
      (void)tok.decode(ids, false);
      (void)tok.decode(ids, true);
    }
  }
  std::string piece;
  for (int32_t id : {-1, 0, 1, tok.vocab_size() - 1, tok.vocab_size()}) {
    if (tok.id_to_token(id, &piece)) (void)tok.token_to_id(piece);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = loratune::fuzz::temp_dir("tokjson");
  loratune::fuzz::write_file(dir + "/tokenizer.json", data, size);
  try {
    auto tok = loratune::tokenizer::load_tokenizer(dir);
    exercise(*tok);
  } catch (const loratune::Error&) {
  }
  return 0;
}
