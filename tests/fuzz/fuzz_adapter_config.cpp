// libFuzzer target: a PEFT adapter_config.json through
// lora::read_adapter_config, then the rank/alpha of a few module paths
// (rank_pattern / alpha_pattern are regexes) and a write/read round trip.
#include <cstdint>
#include <cstdio>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace loratune::lora;
  static const std::string dir = loratune::fuzz::temp_dir("adapter");
  static const std::string again = dir + "/again";
  loratune::fuzz::write_file(dir + "/adapter_config.json", data, size);
  LoraSpec spec;
  try {
    spec = read_adapter_config(dir);
    for (const char* path :
         {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head"}) {
      const auto [r, alpha] = rank_and_alpha(spec, path);
      (void)lora_scale(alpha, r, spec.use_rslora);
    }
  } catch (const loratune::Error&) {
    return 0;
  }
  // What loratune writes for an accepted spec must read back.
  std::filesystem::create_directories(again);
  loratune::fuzz::write_file(again + "/adapter_config.json", adapter_config_json(spec));
  try {
    (void)read_adapter_config(again);
  } catch (const loratune::Error& e) {
    std::fprintf(stderr, "adapter_config_json output is rejected: %s\n", e.what());
    __builtin_trap();
  }
  return 0;
}
