// Shared helpers of tests/train: tiny models, the ref_train fixture, and
// micro-batches built straight from a pre-tokenized JSONL file.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/test_env.h"
#include "trainer/data/data.h"
#include "trainer/io/file_util.h"
#include "trainer/train/train.h"

namespace loratune::test {

inline std::string tiny_model(const std::string& variant) {
  return testdata_dir() + "/models/" + variant;
}
inline std::string ref_train_dir() {
  return testdata_dir() + "/ref_train";
}

// {"input_ids", "labels"} lines of `path` as data::Sequences (file order).
inline std::vector<data::Sequence> read_tokenized(const std::string& path) {
  std::vector<data::Sequence> out;
  std::string text = io::read_file(path);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    data::Sequence s;
    s.input_ids = j.at("input_ids").get<std::vector<int32_t>>();
    s.labels = j.at("labels").get<std::vector<int32_t>>();
    for (size_t t = 0; t < s.input_ids.size(); ++t) {
      s.position_ids.push_back(static_cast<int32_t>(t));
      s.segment_ids.push_back(1);
    }
    out.push_back(std::move(s));
  }
  return out;
}

// Consecutive rows of `seqs` in micro-batches of `micro` rows, padded with 0.
inline std::vector<train::MicroBatch> micro_batches(const std::vector<data::Sequence>& seqs,
                                                    size_t micro) {
  std::vector<train::MicroBatch> out;
  for (size_t i = 0; i < seqs.size(); i += micro) {
    std::vector<const data::Sequence*> rows;
    for (size_t j = i; j < std::min(seqs.size(), i + micro); ++j) rows.push_back(&seqs[j]);
    out.push_back(train::to_micro_batch(data::collate(rows, 0), c10::Device(c10::kCPU), false));
  }
  return out;
}

}  // namespace loratune::test
