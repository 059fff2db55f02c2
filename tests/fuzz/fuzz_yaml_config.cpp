// libFuzzer target: the YAML experiment config through
// config::config_from_yaml_string (what load_config does after reading the
// file). A config it accepts must survive to_yaml and load back equal
// (config.h: load(to_yaml(c)) == c).
#include <cstdint>
#include <cstdio>
#include <string>

#include "trainer/config/config.h"
#include "trainer/io/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace loratune::config;
  const std::string text(reinterpret_cast<const char*>(data), size);
  TrainConfig cfg;
  try {
    cfg = config_from_yaml_string(text, {}, "fuzz.yaml");
  } catch (const loratune::Error&) {
    return 0;
  }
  const std::string yaml = to_yaml(cfg);
  try {
    if (config_from_yaml_string(yaml, {}, "resolved.yaml") != cfg) {
      std::fprintf(stderr, "to_yaml round trip changed the config:\n%s\n", yaml.c_str());
      __builtin_trap();
    }
  } catch (const loratune::Error& e) {
    std::fprintf(stderr, "to_yaml output is rejected: %s\n%s\n", e.what(), yaml.c_str());
    __builtin_trap();
  }
  return 0;
}
