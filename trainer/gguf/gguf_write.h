// trainer/gguf/gguf_write.h — writing GGUF files (the inverse of gguf.h's
// reader): metadata values, tensor infos, and the tensor data streamed in
// order, laid out byte for byte as gguf-py's GGUFWriter lays them out.
//
// Layout (GGUF v3, little-endian): "GGUF", u32 3, u64 tensor_count, u64
// kv_count; the key/value pairs in the order they were set; the tensor infos
// in the order they were added (name, n_dims, ne innermost first, ggml type,
// offset); zero padding to 32 bytes (general.alignment is not written, 32 is
// the default); then each tensor's data, zero-padded to 32 bytes, at the
// offset its info names.
//
// The header is complete before any data is written, so a file is written
// tensor by tensor and never held whole in memory.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "trainer/gguf/gguf.h"

namespace loratune::io {
class AtomicFile;
}

namespace loratune::gguf {

// The ggml types the writer produces (ggml_type ids).
constexpr uint32_t kGgmlF32 = 0;
constexpr uint32_t kGgmlF16 = 1;
constexpr uint32_t kGgmlQ8_0 = 8;
constexpr uint32_t kGgmlBF16 = 30;

// Bytes `n` values take as ggml type `type` (one of the four above; n a
// multiple of the block size, 32 for Q8_0).
uint64_t encoded_bytes(uint32_t type, int64_t n);

// Encodes `n` float32 values as ggml type `type` into `dst`
// (encoded_bytes(type, n) bytes), bit for bit as gguf-py's
// gguf.quants.quantize does: F32 copied; F16 rounded to nearest even;
// BF16 rounded to nearest even with NaN quieted (ggml_compute_fp32_to_bf16);
// Q8_0 per block of 32: d = max|x| / 127, q = round-half-away(x * (1/d)) (0
// for a zero block), d stored as F16 then 32 int8. Throws kInternal for
// another type or an `n` that is not a multiple of the block.
void encode_row(uint32_t type, const float* src, int64_t n, uint8_t* dst);

// Metadata values (gguf.h's Value) of the types llama.cpp's keys use.
Value string_value(std::string s);
Value u32_value(uint32_t v);
Value i32_value(int32_t v);
Value f32_value(float v);
Value bool_value(bool v);
Value string_array(const std::vector<std::string>& items);
Value i32_array(const std::vector<int32_t>& items);
Value f32_array(const std::vector<float>& items);
Value u32_array(const std::vector<uint32_t>& items);

using Metadata = std::vector<std::pair<std::string, Value>>;

// One tensor of the file: name, PyTorch-order shape (the file stores it
// reversed) and ggml type.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  uint32_t type = kGgmlF32;
  uint64_t nbytes() const;
};

class GgufWriter {
 public:
  // `metadata` keys must be unique and `tensors` names unique; the innermost
  // dimension of a quantized tensor must be a multiple of its block. Throws
  // kInternal otherwise (the callers build both).
  GgufWriter(Metadata metadata, std::vector<TensorSpec> tensors);

  // Everything before the first tensor's data: header, metadata, tensor
  // infos, padding.
  std::string header() const;
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  // Bytes of the whole file.
  uint64_t file_size() const;

  // Streaming: begin() writes header() to `out`; write_tensor() writes the
  // next tensor's bytes (in the order given to the constructor, exactly
  // nbytes() of them) and its padding; finish() checks every tensor was
  // written. Out-of-order or misshapen writes throw kInternal.
  void begin(io::AtomicFile& out);
  void write_tensor(const std::string& name, const uint8_t* data, uint64_t n);
  // write_tensor() in pieces, so a tensor is never encoded whole in memory:
  // the next tensor's bytes over several calls, its padding after the last.
  void write_tensor_part(const std::string& name, const uint8_t* data, uint64_t n);
  void finish();

 private:
  Metadata metadata_;
  std::vector<TensorSpec> tensors_;
  std::vector<uint64_t> offsets_;  // relative to the data section
  io::AtomicFile* out_ = nullptr;
  size_t next_ = 0;
  uint64_t written_ = 0;  // bytes of tensors_[next_] written so far
};

}  // namespace loratune::gguf
