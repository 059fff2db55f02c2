// libFuzzer target: one .safetensors file (length prefix, JSON header, data
// buffer) through SafetensorsFile::open, then every tensor view.
#include <cstdint>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using loratune::io::SafetensorsFile;
  static const std::string path = loratune::fuzz::temp_dir("st") + "/model.safetensors";
  loratune::fuzz::write_file(path, data, size);
  try {
    auto file = SafetensorsFile::open(path);
    for (const auto& t : file->tensors()) {
      at::Tensor x = file->tensor(t.name);
      if (static_cast<uint64_t>(x.nbytes()) != t.nbytes()) __builtin_trap();
      if (x.numel() > 0) {  // the first and last byte are inside the mapping
        const auto* p = static_cast<const volatile uint8_t*>(x.data_ptr());
        (void)p[0];
        (void)p[x.nbytes() - 1];
      }
    }
    (void)file->metadata().size();
  } catch (const loratune::Error&) {
  }
  return 0;
}
