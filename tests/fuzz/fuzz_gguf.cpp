// libFuzzer target: one GGUF image through GgufFile::parse (header, metadata,
// tensor infos), then everything import does with an accepted file: typed
// metadata access, every tensor dequantized (while the total stays small),
// map_model (config.json, tensor names) with hf_tensor for each entry
// (dequantize, un-permute, cast), and map_tokenizer (gpt2 / llama
// tokenizer.json and tokenizer_config.json).
#include <cstdint>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/gguf/gguf.h"

namespace {

// Elements dequantized per input at most (float32: 16 MB).
constexpr int64_t kBudget = int64_t{1} << 22;

// Touches the first and last element of a float tensor of the expected size.
void check(const at::Tensor& x, int64_t numel) {
  if (x.numel() != numel || !x.is_contiguous()) __builtin_trap();
  if (numel > 0) {
    const auto* p = static_cast<const volatile uint8_t*>(x.data_ptr());
    (void)p[0];
    (void)p[x.nbytes() - 1];
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace g = loratune::gguf;
  std::shared_ptr<g::GgufFile> file;
  try {
    file = g::GgufFile::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz.gguf");
  } catch (const loratune::Error&) {
    return 0;
  }
  for (const auto& [key, v] : file->metadata()) {
    try {
      (void)file->find(key);
      if (v.is_integer()) (void)file->get_int(key);
      if (v.type == g::ValueType::kString) (void)file->get_string(key).size();
      if (v.type == g::ValueType::kFloat32 || v.type == g::ValueType::kFloat64)
        (void)file->get_float(key);
    } catch (const loratune::Error&) {
    }
  }
  int64_t budget = kBudget;
  for (const auto& t : file->tensors()) {
    if (file->find_tensor(t.name) != &t) __builtin_trap();
    if (t.numel() > budget) continue;
    budget -= t.numel();
    try {
      check(file->dequantize(t), t.numel());
    } catch (const loratune::Error&) {
    }
  }
  try {
    const g::HfModel model = g::map_model(*file, at::kFloat);
    budget = kBudget;
    for (const auto& e : model.entries) {
      if (e.info->numel() > budget) continue;
      budget -= e.info->numel();
      check(g::hf_tensor(*file, e, at::kBFloat16), e.info->numel());
    }
  } catch (const loratune::Error&) {
  }
  try {
    const g::HfTokenizer tok = g::map_tokenizer(*file);
    (void)tok.tokenizer_json.size();
  } catch (const loratune::Error&) {
  }
  return 0;
}
