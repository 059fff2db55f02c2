// bench_tokenizer MODEL_DIR CORPUS.jsonl [REPEAT]
// Single-thread encode throughput of loratune's tokenizer (a benchmark, not a
// test; scripts/bench_tokenizer.py runs it beside Python `tokenizers`).
// Encodes every line once to warm the caches, then REPEAT times timed, with
// add_special_tokens=false. Prints one JSON object.
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_tokenizer MODEL_DIR CORPUS.jsonl [REPEAT]\n");
    return 2;
  }
  try {
    auto t0 = std::chrono::steady_clock::now();
    auto tok = loratune::tokenizer::load_tokenizer(argv[1]);
    double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::vector<std::string> lines;
    std::ifstream in(argv[2]);
    if (!in) throw loratune::Error(std::string(argv[2]) + ": cannot open file");
    size_t bytes = 0;
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      lines.push_back(nlohmann::json::parse(line).get<std::string>());
      bytes += lines.back().size();
    }
    int repeat = argc > 3 ? std::stoi(argv[3]) : 3;
    loratune::tokenizer::EncodeOptions opt{false, false};
    size_t tokens = 0;
    for (const auto& l : lines) tokens += tok->encode(l, opt).size();
    auto t1 = std::chrono::steady_clock::now();
    for (int r = 0; r < repeat; ++r)
      for (const auto& l : lines) tok->encode(l, opt);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    std::printf(
        "{\"load_s\": %.3f, \"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.4f, \"mb_per_s\": "
        "%.3f}\n",
        load_s, bytes, tokens, s, bytes * repeat / s / 1e6);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
