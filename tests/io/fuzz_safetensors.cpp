// libFuzzer target for the safetensors reader (clang, -DLORATUNE_FUZZ=ON):
//   ./fuzz_safetensors -max_len=4096 corpus/
// Any input must either open (and every tensor view with it) or throw
// loratune::Error; anything else (a crash, a sanitizer report, another
// exception type escaping) is a bug.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "trainer/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/fuzz_safetensors." + std::to_string(::getpid());
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    auto file = loratune::io::SafetensorsFile::open(path);
    for (const auto& t : file->tensors()) {
      at::Tensor x = file->tensor(t.name);
      if (x.numel() > 0) (void)*static_cast<volatile const uint8_t*>(x.data_ptr());
    }
  } catch (const loratune::Error&) {
  }
  return 0;
}
