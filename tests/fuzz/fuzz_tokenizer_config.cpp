// libFuzzer target: tokenizer_config.json (beside a fixed valid byte-level
// tokenizer.json) through tokenizer::load_tokenizer, then an encode and, when
// the config brings a chat template, a rendered and tokenized conversation.
#include <cstdint>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/chat/chat_template.h"
#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    const std::string d = loratune::fuzz::temp_dir("tokcfg");
    loratune::fuzz::write_file(d + "/tokenizer.json", loratune::fuzz::byte_level_tokenizer_json());
    return d;
  }();
  loratune::fuzz::write_file(dir + "/tokenizer_config.json", data, size);
  try {
    auto tok = loratune::tokenizer::load_tokenizer(dir);
    const auto ids = tok->encode("Hi <s> there</s> ab");
    (void)tok->decode(ids, true);
    if (auto source = tok->chat_template()) {
      const loratune::chat::ChatTemplate tpl(*source);
      const auto messages = loratune::chat::Json::parse(
          R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello"}])");
      (void)loratune::chat::encode_chat(tpl, *tok, messages,
                                        loratune::chat::render_options_for(*tok));
    }
  } catch (const loratune::Error&) {
  }
  return 0;
}
