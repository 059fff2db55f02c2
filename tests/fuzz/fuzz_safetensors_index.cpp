// libFuzzer target: model.safetensors.index.json through Checkpoint::open, in
// a directory with two valid shards (tensor "a" in model-00001-of-00002, "b"
// in model-00002-of-00002) that the index may or may not describe truthfully.
#include <ATen/ops/ones.h>

#include <cstdint>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/io/safetensors.h"

namespace {

const std::string& checkpoint_dir() {
  static const std::string dir = [] {
    const std::string d = loratune::fuzz::temp_dir("index");
    using loratune::io::serialize;
    loratune::fuzz::write_file(d + "/model-00001-of-00002.safetensors",
                               serialize({{"a", at::ones({2, 3})}}));
    loratune::fuzz::write_file(d + "/model-00002-of-00002.safetensors",
                               serialize({{"b", at::ones({4}, at::kBFloat16)}}));
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = checkpoint_dir();
  loratune::fuzz::write_file(dir + "/model.safetensors.index.json", data, size);
  try {
    auto ck = loratune::io::Checkpoint::open(dir);
    for (const auto& name : ck.names()) {
      if (ck.tensor(name).nbytes() != ck.info(name).nbytes()) __builtin_trap();
    }
    (void)ck.total_bytes();
  } catch (const loratune::Error&) {
  }
  return 0;
}
