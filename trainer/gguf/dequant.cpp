// trainer/gguf/dequant.cpp — ggml block formats to float32.
//
// Block layouts as ggml-common.h defines them (fp16 scales little-endian):
//   Q8_0 (32 values, 34 bytes): d:f16, qs:int8[32]            x = d*q
//   Q4_0 (32, 18): d:f16, qs:u8[16]; q[j] = qs[j]&15, q[j+16] = qs[j]>>4; x = d*(q-8)
//   Q4_1 (32, 20): d:f16, m:f16, qs:u8[16] (as Q4_0);            x = d*q + m
//   Q5_0 (32, 22): d:f16, qh:u32, qs:u8[16]; bit j of qh is bit 4 of q[j]; x = d*(q-16)
//   Q5_1 (32, 24): d:f16, m:f16, qh:u32, qs:u8[16];              x = d*q + m
//   Q4_K, Q6_K: see q4_k / q6_k below.
// Each product and sum is one float32 operation, in the order ggml and
// gguf-py use, so results are bitwise equal (the build has no FMA
// contraction: ISO C++ mode, and baseline x86-64 has no FMA instruction).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>

#include "trainer/gguf/gguf.h"

namespace loratune::gguf {
namespace {

float half(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

void q8_0(const uint8_t* b, float* y) {
  const float d = half(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

void q4_0(const uint8_t* b, float* y) {
  const float d = half(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

void q4_1(const uint8_t* b, float* y) {
  const float d = half(b), m = half(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

void q5_0(const uint8_t* b, float* y) {
  const float d = half(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

void q5_1(const uint8_t* b, float* y) {
  const float d = half(b), m = half(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

// Q4_K (256 values, 144 bytes): d:f16, dmin:f16, scales:u8[12] (eight 6-bit
// scale/min pairs, ggml's get_scale_min_k4), qs:u8[128]; sub-block s of 32
// takes the low (s even) or high nibbles of qs[32*(s/2) ..]; x = (d*sc)*q - dmin*m.
void q4_k(const uint8_t* b, float* y) {
  const float d = half(b), dmin = half(b + 2);
  const uint8_t* sc = b + 4;
  const uint8_t* qs = b + 16;
  for (int s = 0; s < 8; ++s) {
    const int scale = s < 4 ? sc[s] & 63 : (sc[s + 4] & 0x0F) | ((sc[s - 4] >> 6) << 4);
    const int min = s < 4 ? sc[s + 4] & 63 : (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
    const float d1 = d * static_cast<float>(scale), m1 = dmin * static_cast<float>(min);
    const uint8_t* q = qs + 32 * (s / 2);
    for (int l = 0; l < 32; ++l) {
      const int v = s % 2 == 0 ? q[l] & 0x0F : q[l] >> 4;
      y[32 * s + l] = d1 * static_cast<float>(v) - m1;
    }
  }
}

// Q6_K (256, 210): ql:u8[128] (low 4 bits), qh:u8[64] (high 2 bits),
// scales:int8[16] (one per 16 values), d:f16; x = (d*scale)*(q - 32).
void q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half(b + 208);
  for (int v = 0; v < 256; ++v) {
    const int h = v / 128, r = v % 128;
    const int lo = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
    const int hi = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 3;
    y[v] = (d * static_cast<float>(sc[v / 16])) * static_cast<float>((lo | (hi << 4)) - 32);
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(uint32_t type) {
  switch (type) {
    case 2:
      return q4_0;
    case 3:
      return q4_1;
    case 6:
      return q5_0;
    case 7:
      return q5_1;
    case 8:
      return q8_0;
    case 12:
      return q4_k;
    case 14:
      return q6_k;
    default:
      return nullptr;
  }
}

}  // namespace

void dequantize_row(uint32_t type, const uint8_t* src, float* dst, int64_t n) {
  const TypeTraits* t = type_traits(type);
  if (t == nullptr || !t->dequantizable) {
    throw Error(std::string("cannot dequantize ggml type ") +
                    (t ? t->name : std::to_string(type).c_str()) +
                    " (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K)",
                ErrorKind::kUnsupported);
  }
  if (type == 0) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
    return;
  }
  if (type == 1 || type == 30) {
    for (int64_t k = 0; k < n; ++k) {
      uint16_t bits;
      std::memcpy(&bits, src + 2 * k, 2);
      dst[k] = type == 1 ? static_cast<float>(c10::Half(bits, c10::Half::from_bits()))
                         : static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
    }
    return;
  }
  const BlockFn fn = block_fn(type);
  if (fn == nullptr) {  // the type table and the kernels disagree
    throw Error(std::string("no dequantization kernel for ggml type ") + t->name,
                ErrorKind::kInternal);
  }
  for (int64_t b = 0; b < n / t->block; ++b) fn(src + b * t->block_bytes, dst + b * t->block);
}

at::Tensor GgufFile::dequantize(const TensorInfo& info) const {
  if (!info.traits->dequantizable) {
    throw Error(path_ + ": tensor '" + info.name + "': cannot dequantize ggml type " +
                    info.traits->name +
                    " (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K)",
                ErrorKind::kUnsupported);
  }
  at::Tensor out = at::empty(info.shape, at::TensorOptions().dtype(at::kFloat));
  float* dst = out.data_ptr<float>();
  const uint8_t* src = data(info);
  // Split on whole blocks: each chunk dequantizes a run of blocks.
  const int64_t blocks = info.numel() / info.traits->block;
  const int64_t per_block = info.traits->block;
  const int64_t bytes = info.traits->block_bytes;
  const uint32_t type = info.type;
  at::parallel_for(0, blocks, 4096, [&](int64_t begin, int64_t end) {
    dequantize_row(type, src + begin * bytes, dst + begin * per_block, (end - begin) * per_block);
  });
  return out;
}

}  // namespace loratune::gguf
