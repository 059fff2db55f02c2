// libFuzzer target: a model's config.json through io::parse_json and
// model::parse_config (what model::load_config does after reading the file).
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "trainer/io/file_util.h"
#include "trainer/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto j = loratune::io::parse_json(text, "config.json");
    const auto cfg = loratune::model::parse_config(j, "config.json");
    (void)cfg.q_dim();
    (void)cfg.kv_dim();
  } catch (const loratune::Error&) {
  }
  return 0;
}
