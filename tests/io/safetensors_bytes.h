// Helpers shared by the safetensors tests: hand-built file bytes and a
// deterministic tensor for every dtype.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace loratune::test {

// u64 little-endian length + header + data, as a safetensors file.
inline std::string st_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// Values both sides can build: element i is (i % 23) - 7 (bool: i % 3 == 0;
// unsigned: i % 23; floats: ((i % 23) - 7) * 0.25). Exact in every dtype.
inline at::Tensor pattern_tensor(at::ScalarType t, at::IntArrayRef shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  at::Tensor i = at::arange(n, at::kLong);
  at::Tensor v;
  if (t == at::kBool) {
    v = i.remainder(3).eq(0);
  } else if (t == at::kByte || t == at::kUInt16 || t == at::kUInt32 || t == at::kUInt64) {
    v = i.remainder(23).to(t);
  } else if (at::isFloatingType(t)) {
    v = i.remainder(23).sub(7).to(at::kDouble).mul(0.25).to(t);
  } else {
    v = i.remainder(23).sub(7).to(t);
  }
  return v.reshape(shape);
}

// Byte equality of two CPU tensors of the same dtype and shape.
inline bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  at::Tensor x = a.contiguous(), y = b.contiguous();
  size_t n = static_cast<size_t>(x.numel()) * x.element_size();
  return n == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), n) == 0;
}

}  // namespace loratune::test
