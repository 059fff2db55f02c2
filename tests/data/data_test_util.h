// Helpers shared by the tests/data binaries: fixture tokenizers, temp JSONL
// files, a DataConfig with test defaults.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/test_env.h"
#include "trainer/config/config.h"
#include "trainer/data/data.h"
#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::test {

// A tokenizer directory written by tests/python/ref_data.py (fixture
// data_reference): llama3, llama3_1, qwen3, llama3_gen, qwen3_gen.
inline std::string data_tokenizer_dir(const std::string& name) {
  return testdata_dir() + "/data/tokenizers/" + name;
}

inline std::unique_ptr<tokenizer::Tokenizer> data_tokenizer(const std::string& name) {
  return tokenizer::load_tokenizer(data_tokenizer_dir(name));
}

// Writes `lines` (one per line) to <dir>/<name> and returns the path.
inline std::string write_jsonl(const std::string& dir, const std::string& name,
                               const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  write_file(dir + "/" + name, text);
  return dir + "/" + name;
}

inline config::DataConfig data_config(std::vector<std::string> train) {
  config::DataConfig c;
  c.train = std::move(train);
  return c;
}

}  // namespace loratune::test
