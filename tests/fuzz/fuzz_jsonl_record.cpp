// libFuzzer target: a JSONL data file through data::read_files with a small
// byte-level tokenizer (ChatML template), then truncation, packing and
// collation. The first 3 bytes choose the settings, the rest is the file:
//   byte 0: data.format (auto, text, instruction, prompt_completion, chat,
//           tokenized), byte 1: bit 0 train_on_prompt, bit 1
//           allow_special_tokens, bit 2 skip_malformed, bit 3 packing,
//           bits 4-7 data.chat_template (auto or a built-in name),
//   byte 2: data.max_seq_len = 2 + byte % 64.
#include <cstdint>
#include <memory>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/config/config.h"
#include "trainer/data/data.h"
#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"

namespace {

const loratune::tokenizer::Tokenizer& byte_level_tokenizer() {
  static const std::unique_ptr<loratune::tokenizer::Tokenizer> tok = [] {
    const std::string d = loratune::fuzz::temp_dir("jsonl") + "/model";
    std::filesystem::create_directories(d);
    loratune::fuzz::write_file(d + "/tokenizer.json", loratune::fuzz::byte_level_tokenizer_json());
    loratune::fuzz::write_file(d + "/tokenizer_config.json",
                               loratune::fuzz::byte_level_tokenizer_config());
    return loratune::tokenizer::load_tokenizer(d);
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace loratune;
  if (size < 3) return 0;
  const auto& tok = byte_level_tokenizer();
  static const std::string path = fuzz::temp_dir("jsonl") + "/train.jsonl";
  fuzz::write_file(path, data + 3, size - 3);

  config::DataConfig cfg;
  cfg.train = {path};
  cfg.format = static_cast<config::DataFormat>(data[0] % 6);
  cfg.train_on_prompt = data[1] & 1;
  cfg.allow_special_tokens = data[1] & 2;
  cfg.skip_malformed = data[1] & 4;
  cfg.packing = data[1] & 8;
  const auto& names = config::chat_template_names();
  const size_t pick = (data[1] >> 4) % (names.size() + 1);
  cfg.chat_template = pick == 0 ? "auto" : names[pick - 1];
  cfg.max_seq_len = 2 + data[2] % 64;
  try {
    const data::ExampleEncoder enc(tok, cfg);
    data::DataStats stats;
    auto examples = data::read_files(cfg.train, enc, cfg, &stats, [](const std::string&) {});
    for (const auto& ex : examples) {
      if (ex.input_ids.empty() || ex.input_ids.size() != ex.labels.size()) __builtin_trap();
    }
    data::truncate_and_filter(&examples, cfg.max_seq_len, &stats);
    const auto seqs = data::make_sequences(examples, cfg.max_seq_len, cfg.packing);
    std::vector<const data::Sequence*> rows;
    for (const auto& s : seqs) {
      if (static_cast<int64_t>(s.input_ids.size()) > cfg.max_seq_len) __builtin_trap();
      rows.push_back(&s);
    }
    if (!rows.empty()) (void)data::collate(rows, data::pad_id_for(tok));
  } catch (const Error&) {
  }
  return 0;
}
