// trainer/model/nf4.h — 4-bit NormalFloat (NF4) base weights for QLoRA,
// stored exactly as bitsandbytes 0.50.2 stores them (quantize_4bit with
// quant_type "nf4", blocksize 64, compress_statistics = double quant, on the
// CPU), so packed bytes, scales and dequantized weights are bitwise theirs.
//
// Quantization of a weight w [out,in] (any float dtype, read as float32):
//   * w is flattened row-major and cut into blocks of 64 (the last block is
//     shorter when 64 does not divide out*in);
//   * absmax[b] = max |w| over block b;
//   * each element is scaled to [-1,1] (x * (1/absmax) in full blocks, x /
//     absmax in the last short one, as bitsandbytes computes them) and takes
//     the index of the nearest of the 16 codes of nf4_code(), ties to the
//     lower index (torch.bucketize on the midpoints);
//   * indices are packed two per byte, element 2i in the HIGH nibble and 2i+1
//     in the low one; an odd count is padded with index 7 (the code 0.0).
// Double quantization of the scales (QLoRA's "double quant"): offset =
// mean(absmax); absmax - offset is quantized with dynamic_map() (the signed
// 8-bit dynamic map) in blocks of 256: nested_absmax[c] = max |.| over block
// c in float32, and each value takes the entry bitsandbytes' CPU kernel picks
// (a 65536-bin table over [-1,1] of nearest map entries, a block of zeros
// gives index 0).
// Dequantization: w = code4[q] * absmax[b], with, double quantized,
// absmax[b] = code8[qa[b]] * nested_absmax[b/256] + offset; each product and
// sum is rounded to float32 as bitsandbytes rounds it, then the result is
// rounded once to the requested dtype (round to nearest even).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace loratune::model {

constexpr int64_t kNf4BlockSize = 64;      // weights per absmax (bnb blocksize)
constexpr int64_t kNestedBlockSize = 256;  // absmax values per nested absmax

// How a load stores the frozen projection weights of the decoder layers
// (model.quantize / model.double_quant in a training config).
enum class Quantization { kNone, kNf4 };
struct QuantizeOptions {
  Quantization kind = Quantization::kNone;
  bool double_quant = true;  // 8-bit block scales: 0.127 instead of 0.5 bits per weight
};

// One weight in NF4. Tensors live on one device (the model's); `packed` is
// what bitsandbytes stores as the uint8 "weight" of a Linear4bit.
struct Nf4Weight {
  at::Tensor packed;  // uint8 [ceil(out*in/2), 1]
  // Without double quant: float32 [blocks]. With it: uint8 [blocks], indices
  // into dynamic_map() (bnb's "absmax" tensor of a nested state).
  at::Tensor absmax;
  at::Tensor nested_absmax;    // float32 [ceil(blocks/256)]; undefined without double quant
  at::Tensor offset;           // float32 0-dim; undefined without double quant
  std::vector<int64_t> shape;  // [out, in]

  bool double_quant() const { return nested_absmax.defined(); }
  int64_t numel() const;
  int64_t blocks() const;  // ceil(numel / 64)
  // Bytes held on the device (packed + scales).
  int64_t nbytes() const;
  Nf4Weight to(const c10::Device& device) const;
};

// The 16 NF4 codes (bnb.functional.get_4bit_type("nf4")), float32 [16] on the CPU.
const at::Tensor& nf4_code();
// bitsandbytes' signed 8-bit dynamic map (create_dynamic_map()), float32
// [256] on the CPU: the "nested_quant_map" of a double-quantized weight.
const at::Tensor& dynamic_map();

// Quantizes `w` [out,in] (float32, bfloat16 or float16; any device: the work
// runs on the CPU, the result lives on w's device). Throws Error (kData)
// naming `name` when w holds NaN or inf.
Nf4Weight quantize_nf4(const at::Tensor& w, bool double_quant, const std::string& name);

// The float32 scale of every block [blocks] on q's device (absmax itself, or
// its double-quantized reconstruction).
at::Tensor nf4_scales(const Nf4Weight& q);

// The dequantized weight [out,in] in `dtype` (float32, bfloat16, float16) on
// q's device. A fresh tensor the caller owns.
at::Tensor dequantize_nf4(const Nf4Weight& q, at::ScalarType dtype);

// y = x W^T + b for W = dequantize_nf4(q, x's dtype): x [..., in] -> [...,
// out]. W is made for the product and freed at once, in the forward and
// again in the backward (nothing [out,in] is kept for autograd); the
// gradient flows to x only (the base weight and bias are frozen).
at::Tensor nf4_linear(const at::Tensor& x, const Nf4Weight& q, const at::Tensor& bias);

namespace detail {
// The device-generic dequantization (ATen ops) that CUDA uses; the CPU path
// is a fused loop (AVX-512 for float32 and bfloat16 where the CPU has
// AVX512BW and `simd`, else scalar). All give the same bits; exposed for the
// tests.
at::Tensor dequantize_nf4_portable(const Nf4Weight& q, at::ScalarType dtype);
at::Tensor dequantize_nf4_cpu(const Nf4Weight& q, at::ScalarType dtype, bool simd);
}  // namespace detail

}  // namespace loratune::model
