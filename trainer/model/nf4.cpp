// trainer/model/nf4.cpp — NF4 quantization as bitsandbytes 0.50.2 does it on
// the CPU, dequantization, and the projection that dequantizes on the fly.
#include "trainer/model/nf4.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/linspace.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/tensor.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <type_traits>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "trainer/io/error.h"

namespace loratune::model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// bnb.functional.get_4bit_type("nf4"): quantiles of N(0,1) scaled to [-1,1].
// Written as the doubles bitsandbytes lists and rounded to float32 as
// torch.tensor(list, dtype=float32) rounds them.
constexpr std::array<double, 16> kNf4Codes = {
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
};

// absmax.clamp(min=1e-38) of bitsandbytes' quantize_4bit (a float32 subnormal).
const float kMinAbsmax = static_cast<float>(1e-38);

// The 15 decision bounds (code[i] + code[i+1]) / 2 in float32.
const std::array<float, 15>& nf4_bounds() {
  static const std::array<float, 15> bounds = [] {
    std::array<float, 15> b{};
    for (size_t i = 0; i < b.size(); ++i) {
      const float sum = static_cast<float>(kNf4Codes[i]) + static_cast<float>(kNf4Codes[i + 1]);
      b[i] = sum / 2.0f;
    }
    return b;
  }();
  return bounds;
}

// torch.bucketize(x, bounds, right=False): the number of bounds below x, so
// a value on a bound takes the lower code.
inline uint8_t nf4_index(float x) {
  const std::array<float, 15>& b = nf4_bounds();
  uint8_t i = 0;
  while (i < 15 && b[i] < x) ++i;
  return i;
}

// bitsandbytes' CPU quantize_blockwise table: 65536 bins over [-1,1], each
// holding the index of the first map entry whose midpoint with the next is
// not below the bin's value (the nearest entry).
constexpr int kLutSize = 65536;
const std::array<uint8_t, kLutSize>& dynamic_lut() {
  static const std::array<uint8_t, kLutSize> lut = [] {
    const float* code = dynamic_map().data_ptr<float>();
    std::array<float, 255> mid{};
    for (int i = 0; i < 255; ++i) mid[i] = 0.5f * (code[i] + code[i + 1]);
    std::array<uint8_t, kLutSize> out{};
    int k = 0;
    for (int i = 0; i < kLutSize; ++i) {
      const float twice = static_cast<float>(i) + static_cast<float>(i);
      const float val = twice / static_cast<float>(kLutSize - 1) - 1.0f;
      while (k < 255 && mid[k] < val) ++k;
      out[i] = static_cast<uint8_t>(k);
    }
    return out;
  }();
  return lut;
}

// The LUT bin of a normalized value: (v + 1) / 2 * 65535 + 0.5 truncated,
// the last two operations fused as bitsandbytes' compiled kernel fuses them.
inline uint16_t lut_bin(float v) {
  v = std::clamp(v, -1.0f, 1.0f);
  const float half = (v + 1.0f) * 0.5f;
  return static_cast<uint16_t>(static_cast<int32_t>(std::fma(half, 65535.0f, 0.5f)));
}

// Quantizes the float32 values `a` [n] with dynamic_map() in blocks of 256
// (bitsandbytes' CPU quantize_blockwise). Returns (uint8 [n], float32 absmax).
std::pair<at::Tensor, at::Tensor> quantize_blockwise_8bit(const at::Tensor& a) {
  const int64_t n = a.numel();
  const int64_t blocks = (n + kNestedBlockSize - 1) / kNestedBlockSize;
  at::Tensor q = at::empty({n}, at::TensorOptions().dtype(at::kByte));
  at::Tensor absmax = at::empty({blocks}, at::TensorOptions().dtype(at::kFloat));
  const float* x = a.data_ptr<float>();
  uint8_t* out = q.data_ptr<uint8_t>();
  float* am = absmax.data_ptr<float>();
  const std::array<uint8_t, kLutSize>& lut = dynamic_lut();
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t start = b * kNestedBlockSize;
    const int64_t end = std::min(n, start + kNestedBlockSize);
    float m = 0.0f;
    for (int64_t i = start; i < end; ++i) m = std::max(m, std::fabs(x[i]));
    am[b] = m;
    if (m == 0.0f) {
      std::fill(out + start, out + end, uint8_t{0});
      continue;
    }
    const float inv = 1.0f / m;
    for (int64_t i = start; i < end; ++i) out[i] = lut[lut_bin(x[i] * inv)];
  }
  return {q, absmax};
}

// The 4-bit part: absmax [blocks] and packed [ceil(n/2)] of the float32
// values x [n]. Returns false when a value is not finite.
bool quantize_4bit(const float* x, int64_t n, float* absmax, uint8_t* packed) {
  const int64_t blocks = (n + kNf4BlockSize - 1) / kNf4BlockSize;
  const int64_t full_blocks = n / kNf4BlockSize;
  std::atomic<bool> finite{true};
  at::parallel_for(0, blocks, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * kNf4BlockSize;
      const int64_t end = std::min(n, start + kNf4BlockSize);
      float m = 0.0f;
      for (int64_t i = start; i < end; ++i) {
        if (!std::isfinite(x[i])) finite = false;
        m = std::max(m, std::fabs(x[i]));
      }
      const float d = std::max(m, kMinAbsmax);
      // Full blocks multiply by the reciprocal (A * (1.0 / absmax)) and keep
      // the raw absmax; the short last block divides (A / absmax) and keeps
      // the clamped one, as bitsandbytes does.
      const bool full = b < full_blocks;
      absmax[b] = full ? m : d;
      const float r = 1.0f / d;
      // Blocks hold an even count, so a byte never spans two blocks.
      for (int64_t i = start; i < end; i += 2) {
        const float v0 = std::clamp(full ? x[i] * r : x[i] / d, -1.0f, 1.0f);
        uint8_t lo = 7;  // the pad of an odd count: the code 0.0
        if (i + 1 < end)
          lo = nf4_index(std::clamp(full ? x[i + 1] * r : x[i + 1] / d, -1.0f, 1.0f));
        packed[i / 2] = static_cast<uint8_t>((nf4_index(v0) << 4) | lo);
      }
    }
  });
  return finite;
}

// One block's 16 values: code * scale, rounded to T once (as bitsandbytes
// multiplies in float32 and casts the product).
template <typename T>
void block_values(float scale, std::array<T, 16>& value) {
  for (size_t k = 0; k < value.size(); ++k)
    value[k] = static_cast<T>(static_cast<float>(kNf4Codes[k]) * scale);
}

// The scalar loop over blocks [b0, b1): byte i/2 holds element i in its high
// nibble and element i+1 in its low one.
template <typename T>
void dequantize_blocks_scalar(const uint8_t* p, const float* scales, int64_t n, int64_t b0,
                              int64_t b1, T* out) {
  std::array<T, 16> value{};
  for (int64_t b = b0; b < b1; ++b) {
    block_values(scales[b], value);
    const int64_t end = std::min(n, (b + 1) * kNf4BlockSize);
    int64_t i = b * kNf4BlockSize;  // even: a byte never spans two blocks
    for (; i + 1 < end; i += 2) {
      const uint8_t byte = p[i >> 1];
      out[i] = value[byte >> 4];
      out[i + 1] = value[byte & 0xF];
    }
    if (i < end) out[i] = value[p[i >> 1] >> 4];  // an odd count: the last high nibble
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define LORATUNE_NF4_AVX512 1
// GCC 12 warns inside its own intrinsics headers (the _mm*_undefined_*
// operands of masked conversions) at -O3; nothing here is uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
static_assert(kNf4BlockSize == 64, "the AVX-512 loops handle 32 packed bytes a block");

bool cpu_has_avx512bw() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return ok;
}

// Each of the 16 packed bytes x[j] twice, as 32 words (or 32 dwords over two
// calls): element 2j reads the high nibble, 2j+1 the low one, so a variable
// shift by (4, 0, 4, 0, ...) and a mask give the 32 code indices in order.
__attribute__((target("avx512f,avx512bw"))) inline __m512i nibble_words(const uint8_t* x) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x));
  const __m256i twice = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi8(b, b)),
                                                _mm_unpackhi_epi8(b, b), 1);
  const __m512i w = _mm512_cvtepu8_epi16(twice);  // [32] words
  return _mm512_and_si512(_mm512_srlv_epi16(w, _mm512_set1_epi32(4)), _mm512_set1_epi16(0xF));
}

// Full blocks [b0, b1) into bfloat16: the block's 16 values rounded to
// nearest even (c10::BFloat16's rounding, NaN to 0x7FC0) form a word table
// that one vpermw per 32 elements reads.
__attribute__((target("avx512f,avx512bw"))) void dequantize_blocks_bf16_avx512(
    const uint8_t* p, const float* scales, int64_t b0, int64_t b1, at::BFloat16* out) {
  float code[16];
  for (int k = 0; k < 16; ++k) code[k] = static_cast<float>(kNf4Codes[k]);
  const __m512 codes = _mm512_loadu_ps(code);
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF);
  for (int64_t b = b0; b < b1; ++b) {
    const __m512 v = _mm512_mul_ps(codes, _mm512_set1_ps(scales[b]));
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), one);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, bias)), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    const __m512i table = _mm512_broadcast_i64x4(_mm512_cvtepi32_epi16(r));  // words 0..15, twice
    const uint8_t* src = p + b * (kNf4BlockSize / 2);
    at::BFloat16* dst = out + b * kNf4BlockSize;
    for (int h = 0; h < 2; ++h) {
      _mm512_storeu_si512(dst + 32 * h,
                          _mm512_permutexvar_epi16(nibble_words(src + 16 * h), table));
    }
  }
}

// Full blocks [b0, b1) into float32: vpermps over the block's 16 values.
__attribute__((target("avx512f,avx512bw"))) void dequantize_blocks_f32_avx512(
    const uint8_t* p, const float* scales, int64_t b0, int64_t b1, float* out) {
  float code[16];
  for (int k = 0; k < 16; ++k) code[k] = static_cast<float>(kNf4Codes[k]);
  const __m512 codes = _mm512_loadu_ps(code);
  for (int64_t b = b0; b < b1; ++b) {
    const __m512 v = _mm512_mul_ps(codes, _mm512_set1_ps(scales[b]));
    const uint8_t* src = p + b * (kNf4BlockSize / 2);
    float* dst = out + b * kNf4BlockSize;
    for (int h = 0; h < 2; ++h) {
      const __m512i idx = nibble_words(src + 16 * h);  // [32] words
      const __m512i lo = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(idx));
      const __m512i hi = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(idx, 1));
      _mm512_storeu_ps(dst + 32 * h, _mm512_permutexvar_ps(lo, v));
      _mm512_storeu_ps(dst + 32 * h + 16, _mm512_permutexvar_ps(hi, v));
    }
  }
}
#pragma GCC diagnostic pop
#endif

// Dequantizes every block into `out` [numel], in parallel over blocks; the
// full blocks go through AVX-512 when `simd` and the CPU has it.
template <typename T>
void dequantize_cpu_into(const Nf4Weight& q, const float* scales, T* out, bool simd) {
  const int64_t n = q.numel(), full = n / kNf4BlockSize;
  const uint8_t* p = q.packed.data_ptr<uint8_t>();
  (void)full, (void)simd;
  at::parallel_for(0, q.blocks(), 256, [&](int64_t b0, int64_t b1) {
    int64_t b = b0;
#ifdef LORATUNE_NF4_AVX512
    if (simd && cpu_has_avx512bw()) {
      const int64_t e = std::min(b1, full);
      if constexpr (std::is_same_v<T, at::BFloat16>) {
        if (b < e) dequantize_blocks_bf16_avx512(p, scales, b, e, out), b = e;
      } else if constexpr (std::is_same_v<T, float>) {
        if (b < e) dequantize_blocks_f32_avx512(p, scales, b, e, out), b = e;
      }
    }
#endif
    dequantize_blocks_scalar(p, scales, n, b, b1, out);
  });
}

// Fills `out` (contiguous, q's shape, dtype float32/bfloat16/float16, on
// the CPU).
void dequantize_cpu_to(const Nf4Weight& q, at::Tensor& out, bool simd) {
  const at::Tensor scales = nf4_scales(q).contiguous();
  const float* s = scales.data_ptr<float>();
  switch (out.scalar_type()) {
    case at::kFloat:
      dequantize_cpu_into(q, s, out.data_ptr<float>(), simd);
      break;
    case at::kBFloat16:
      dequantize_cpu_into(q, s, out.data_ptr<at::BFloat16>(), simd);
      break;
    default:
      dequantize_cpu_into(q, s, out.data_ptr<at::Half>(), simd);
      break;
  }
}

void check_dtype(at::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) {
    throw Error(std::string("dequantize_nf4: unsupported dtype ") + c10::toString(dtype) +
                    " (float32, bfloat16, float16)",
                ErrorKind::kInternal);
  }
}

Nf4Weight weight_from(const AutogradContext* ctx) {
  Nf4Weight q;
  q.packed = ctx->saved_data.at("packed").toTensor();
  q.absmax = ctx->saved_data.at("absmax").toTensor();
  q.nested_absmax = ctx->saved_data.at("nested_absmax").toTensor();
  q.offset = ctx->saved_data.at("offset").toTensor();
  q.shape = ctx->saved_data.at("shape").toIntVector();
  return q;
}

// The frozen operands of the projection, passed as one non-tensor argument
// so autograd tracks x only (an undefined bias is no autograd input).
struct FrozenWeights {
  const Nf4Weight& q;
  const at::Tensor& bias;  // [out] or undefined
};

// W for one product. On the CPU it is written into a per-thread buffer kept
// between calls: glibc serves each fresh allocation of this size with a new
// mmap, and faulting its pages in costs several times the dequantization
// itself (Llama-3.1-8B's 117 MB bf16 up_proj: 58 ms fresh, 9 ms reused). The
// buffer is reused only when nothing else holds its storage, so it grows to
// the largest projection and stays: the one dequantized weight alive at a
// time. Other devices allocate from their caching allocator.
at::Tensor dequantize_for_product(const Nf4Weight& q, at::ScalarType dtype) {
  if (!q.packed.device().is_cpu()) return detail::dequantize_nf4_portable(q, dtype);
  check_dtype(dtype);
  thread_local at::Tensor buffer;  // uint8 [bytes]
  const int64_t bytes = q.numel() * static_cast<int64_t>(c10::elementSize(dtype));
  if (!buffer.defined() || buffer.numel() < bytes || buffer.storage().use_count() > 1)
    buffer = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  at::Tensor w = buffer.narrow(0, 0, bytes).view(dtype).view(q.shape);  // [out,in]
  dequantize_cpu_to(q, w, /*simd=*/true);
  return w;
}

// y = x W^T + b with W dequantized in the forward and again in the
// backward; only the packed state is kept between them.
class Nf4Linear : public torch::autograd::Function<Nf4Linear> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const FrozenWeights& f) {
    const Nf4Weight& q = f.q;
    ctx->saved_data["packed"] = q.packed;
    ctx->saved_data["absmax"] = q.absmax;
    ctx->saved_data["nested_absmax"] = q.nested_absmax;
    ctx->saved_data["offset"] = q.offset;
    ctx->saved_data["shape"] = q.shape;
    at::Tensor w = dequantize_for_product(q, x.scalar_type());  // [out,in]
    return at::linear(x, w, f.bias);                            // [..., out]
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& g = grads[0];  // [..., out]
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      at::Tensor w = dequantize_for_product(weight_from(ctx), g.scalar_type());  // [out,in]
      grad_x = at::matmul(g, w);                                                 // [..., in]
    }
    return {grad_x, at::Tensor()};
  }
};

}  // namespace

int64_t Nf4Weight::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

int64_t Nf4Weight::blocks() const {
  return (numel() + kNf4BlockSize - 1) / kNf4BlockSize;
}

int64_t Nf4Weight::nbytes() const {
  int64_t b = static_cast<int64_t>(packed.nbytes() + absmax.nbytes());
  if (double_quant()) b += static_cast<int64_t>(nested_absmax.nbytes() + offset.nbytes());
  return b;
}

Nf4Weight Nf4Weight::to(const c10::Device& device) const {
  Nf4Weight q = *this;
  q.packed = packed.to(device);
  q.absmax = absmax.to(device);
  if (double_quant()) {
    q.nested_absmax = nested_absmax.to(device);
    q.offset = offset.to(device);
  }
  return q;
}

const at::Tensor& nf4_code() {
  static const at::Tensor code = [] {
    std::vector<float> v(kNf4Codes.begin(), kNf4Codes.end());
    return at::tensor(v, at::TensorOptions().dtype(at::kFloat));
  }();
  return code;
}

const at::Tensor& dynamic_map() {
  // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for
  // exponent i = 0..6, the midpoints of linspace(0.1, 1, 2^i + 1) (float32)
  // times +-10^(i-6), then 0 and 1, sorted. The same ATen ops bitsandbytes'
  // Python runs, so the same float32 values.
  static const at::Tensor map = [] {
    std::vector<float> data;
    for (int i = 0; i < 7; ++i) {
      const int64_t items = (int64_t{1} << i) + 1;
      at::Tensor bounds = at::linspace(0.1, 1, items, at::TensorOptions().dtype(at::kFloat));
      at::Tensor means = (bounds.narrow(0, 0, items - 1) + bounds.narrow(0, 1, items - 1)) / 2.0;
      const double scale = i == 6 ? 1.0 : std::pow(10.0, i - 6);
      for (double sign : {1.0, -1.0}) {
        at::Tensor v = (means * (sign * scale)).contiguous();
        data.insert(data.end(), v.data_ptr<float>(), v.data_ptr<float>() + v.numel());
      }
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    std::sort(data.begin(), data.end());
    return at::tensor(data, at::TensorOptions().dtype(at::kFloat));
  }();
  return map;
}

Nf4Weight quantize_nf4(const at::Tensor& w, bool double_quant, const std::string& name) {
  if (w.dim() != 2 || !at::isFloatingType(w.scalar_type())) {
    throw Error("quantize_nf4: " + name + " must be a 2-D floating tensor", ErrorKind::kInternal);
  }
  // bitsandbytes reads the weight as float32 (A.reshape(-1).float()).
  const at::Tensor x = w.to(at::kCPU).to(at::kFloat).contiguous();
  const int64_t n = x.numel();
  Nf4Weight q;
  q.shape = {w.size(0), w.size(1)};
  const int64_t blocks = q.blocks();
  at::Tensor absmax = at::empty({blocks}, at::TensorOptions().dtype(at::kFloat));
  q.packed = at::empty({(n + 1) / 2, 1}, at::TensorOptions().dtype(at::kByte));
  if (!quantize_4bit(x.data_ptr<float>(), n, absmax.data_ptr<float>(),
                     q.packed.data_ptr<uint8_t>())) {
    throw Error(name + ": the weight holds NaN or inf; NF4 quantization needs finite weights",
                ErrorKind::kCorrupt);
  }
  if (double_quant) {
    // offset = absmax.mean(); quantize_blockwise(absmax - offset, blocksize=256).
    q.offset = at::mean(absmax);
    auto [qa, nested] = quantize_blockwise_8bit((absmax - q.offset).contiguous());
    q.absmax = qa;
    q.nested_absmax = nested;
  } else {
    q.absmax = absmax;
  }
  return w.device().is_cpu() ? q : q.to(w.device());
}

at::Tensor nf4_scales(const Nf4Weight& q) {
  if (!q.double_quant()) return q.absmax;
  // dequantize_blockwise(absmax, state2) + offset, in float32.
  const at::Tensor code = dynamic_map().to(q.absmax.device());
  at::Tensor nested = q.nested_absmax.repeat_interleave(kNestedBlockSize).narrow(0, 0, q.blocks());
  return code.index_select(0, q.absmax.to(at::kLong)).mul(nested).add(q.offset);  // [blocks]
}

at::Tensor dequantize_nf4(const Nf4Weight& q, at::ScalarType dtype) {
  if (!q.packed.device().is_cpu()) return detail::dequantize_nf4_portable(q, dtype);
  return detail::dequantize_nf4_cpu(q, dtype, /*simd=*/true);
}

namespace detail {

at::Tensor dequantize_nf4_cpu(const Nf4Weight& q, at::ScalarType dtype, bool simd) {
  check_dtype(dtype);
  at::Tensor out = at::empty(q.shape, at::TensorOptions().dtype(dtype));
  dequantize_cpu_to(q, out, simd);
  return out;
}

at::Tensor dequantize_nf4_portable(const Nf4Weight& q, at::ScalarType dtype) {
  check_dtype(dtype);
  const int64_t n = q.numel(), blocks = q.blocks();
  const c10::Device device = q.packed.device();
  // Both values of every byte value: pairs[b] = {code[b >> 4], code[b & 15]}.
  static const at::Tensor pairs_cpu = [] {
    std::vector<float> v(512);
    for (int b = 0; b < 256; ++b) {
      v[2 * b] = static_cast<float>(kNf4Codes[b >> 4]);
      v[2 * b + 1] = static_cast<float>(kNf4Codes[b & 0xF]);
    }
    return at::tensor(v, at::TensorOptions().dtype(at::kFloat)).view({256, 2});
  }();
  const at::Tensor pairs = pairs_cpu.to(device);  // [256,2] float32
  const at::Tensor scales = nf4_scales(q);        // [blocks] float32
  const at::Tensor bytes = q.packed.view({-1});   // [ceil(n/2)]
  at::Tensor out = at::empty({blocks * kNf4BlockSize}, q.packed.options().dtype(dtype));
  // Chunks of blocks bound the float32 scratch (16 MiB of indices and 32 MiB
  // of values) whatever the projection's size: a 70B up_proj would need
  // 2 GB of scratch at once.
  constexpr int64_t kChunkBlocks = 1 << 17;  // 8M weights
  for (int64_t b0 = 0; b0 < blocks; b0 += kChunkBlocks) {
    const int64_t nb = std::min(kChunkBlocks, blocks - b0);
    const int64_t first = b0 * (kNf4BlockSize / 2);
    const int64_t count = std::min(nb * (kNf4BlockSize / 2), bytes.numel() - first);
    const at::Tensor idx = bytes.narrow(0, first, count).to(at::kInt);  // [count]
    at::Tensor v = pairs.index_select(0, idx).view({-1});               // [2*count] float32
    if (v.numel() != nb * kNf4BlockSize)  // the short last block (and an odd pad nibble)
      v = at::constant_pad_nd(v, {0, nb * kNf4BlockSize - v.numel()});
    v = v.view({nb, kNf4BlockSize}).mul_(scales.narrow(0, b0, nb).unsqueeze(1));  // [nb,64]
    out.narrow(0, b0 * kNf4BlockSize, nb * kNf4BlockSize).copy_(v.view({-1}));
  }
  if (out.numel() == n) return out.view(q.shape);  // [out,in]
  return out.narrow(0, 0, n).clone().view(q.shape);
}

}  // namespace detail

at::Tensor nf4_linear(const at::Tensor& x, const Nf4Weight& q, const at::Tensor& bias) {
  return Nf4Linear::apply(x, FrozenWeights{q, bias});
}

}  // namespace loratune::model
