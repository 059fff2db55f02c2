// NF4 quantization (trainer/model/nf4.h) against bitsandbytes 0.50.2 on the
// CPU (tests/python/ref_nf4.py): packed bytes, absmax, the nested state and
// the dequantized weights bitwise equal on real-shaped tensors with odd
// sizes, short last blocks, zero blocks and values on the decision bounds;
// and the on-the-fly projection's forward and backward.
#include <ATen/ops/equal.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <iostream>
#include <utility>
#include <vector>

#include "common/test_env.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/linear.h"
#include "trainer/model/nf4.h"

using namespace loratune;

namespace {

std::string ref_dir() {
  return test::testdata_dir() + "/ref_nf4";
}

// Bitwise: same dtype, shape and bytes (NaN-free data, so equal() is exact).
void expect_bitwise(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.scalar_type(), want.scalar_type()) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const at::Tensor a = got.reshape({-1}).contiguous().view(at::kByte);
  const at::Tensor b = want.reshape({-1}).contiguous().view(at::kByte);
  const int64_t differ = a.ne(b).sum().item<int64_t>();
  EXPECT_EQ(differ, 0) << what << ": " << differ << " of " << a.numel() << " bytes differ";
}

class Nf4Bitwise : public ::testing::TestWithParam<bool> {};

TEST_P(Nf4Bitwise, StateAndDequantizedWeightsEqualBitsandbytes) {
  const bool dq = GetParam();
  const auto cases = io::read_json(ref_dir() + "/tensors.json").at("cases");
  auto file = io::SafetensorsFile::open(ref_dir() + "/tensors.safetensors");
  ASSERT_GE(cases.size(), 8u);
  for (const auto& c : cases) {
    const std::string name = c.get<std::string>();
    const std::string p = name + (dq ? ".dq." : ".sq.");
    SCOPED_TRACE(p);
    const at::Tensor w = file->tensor(name + ".w");
    const model::Nf4Weight q = model::quantize_nf4(w, dq, name);
    ASSERT_EQ(q.double_quant(), dq);
    expect_bitwise(q.packed, file->tensor(p + "packed"), "packed");
    expect_bitwise(q.absmax, file->tensor(p + "absmax"), "absmax");
    expect_bitwise(model::nf4_code(), file->tensor(p + "quant_map"), "quant_map");
    if (dq) {
      expect_bitwise(q.offset, file->tensor(p + "offset"), "offset");
      expect_bitwise(q.nested_absmax, file->tensor(p + "nested_absmax"), "nested_absmax");
      expect_bitwise(model::dynamic_map(), file->tensor(p + "nested_quant_map"),
                     "nested_quant_map");
    }
    const at::Tensor want32 = file->tensor(p + "deq_f32");
    expect_bitwise(model::dequantize_nf4(q, at::kFloat), want32, "dequantized float32");
    expect_bitwise(model::detail::dequantize_nf4_cpu(q, at::kFloat, /*simd=*/false), want32,
                   "dequantized float32 (scalar loop)");
    expect_bitwise(model::detail::dequantize_nf4_portable(q, at::kFloat), want32,
                   "dequantized float32 (portable path)");
    if (dq) {
      const at::Tensor want16 = file->tensor(p + "deq_bf16");
      expect_bitwise(model::dequantize_nf4(q, at::kBFloat16), want16, "dequantized bfloat16");
      expect_bitwise(model::detail::dequantize_nf4_cpu(q, at::kBFloat16, /*simd=*/false), want16,
                     "dequantized bfloat16 (scalar loop)");
      expect_bitwise(model::detail::dequantize_nf4_portable(q, at::kBFloat16), want16,
                     "dequantized bfloat16 (portable path)");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DoubleQuant, Nf4Bitwise, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "nested" : "plain"; });

// The CPU's AVX-512 loops, its scalar loop and the ATen-op path (chunked)
// agree bit for bit in every output dtype: odd sizes (a short last block),
// more than one chunk, and scales whose products overflow bfloat16 or are
// subnormal.
TEST(Nf4, CpuLoopsAndPortablePathGiveTheSameBits) {
  at::manual_seed(11);
  for (auto [rows, cols] :
       std::vector<std::pair<int64_t, int64_t>>{{3, 64},
                                                {5, 100},
                                                {130, 77},
                                                {64, 256},
                                                {1, 1},
                                                // past the portable path's chunk of 2^17
                                                // blocks, with a short last block
                                                {4100, 2049}}) {
    for (bool dq : {false, true}) {
      model::Nf4Weight q = model::quantize_nf4(at::randn({rows, cols}) * 3, dq, "w");
      if (!dq && q.absmax.numel() >= 3) {
        q.absmax[0] = 3.4e38f;  // code 1.0 * 3.4e38 rounds past bfloat16's max
        q.absmax[1] = 1e-40f;   // subnormal products
        q.absmax[2] = -2.5f;
      }
      for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
        SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols) + (dq ? " nested " : " ") +
                     c10::toString(dtype));
        const at::Tensor want = model::detail::dequantize_nf4_portable(q, dtype);
        expect_bitwise(model::detail::dequantize_nf4_cpu(q, dtype, /*simd=*/true), want, "simd");
        expect_bitwise(model::detail::dequantize_nf4_cpu(q, dtype, /*simd=*/false), want, "scalar");
      }
    }
  }
}

TEST(Nf4, QuantizationErrorIsBoundedByHalfTheWidestCodeGap) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({128, 192});
  const model::Nf4Weight q = model::quantize_nf4(w, /*double_quant=*/false, "w");
  const at::Tensor err = (model::dequantize_nf4(q, at::kFloat) - w).abs().view({-1, 64});
  const at::Tensor scale = q.absmax.unsqueeze(1);
  // The widest gap between neighbouring NF4 codes is -0.6962 - -1 = 0.3038.
  EXPECT_LE((err / scale).max().item<double>(), 0.1520);
  EXPECT_EQ(q.nbytes(), 128 * 192 / 2 + 128 * 192 / 64 * 4);
}

TEST(Nf4, NonFiniteWeightsAreRefusedNamingTheTensor) {
  at::Tensor w = at::randn({4, 64});
  w[2][5] = std::numeric_limits<float>::quiet_NaN();
  try {
    model::quantize_nf4(w, true, "model.layers.0.mlp.up_proj.weight");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.up_proj.weight"), std::string::npos);
  }
}

// The projection with an NF4 weight computes x W^T + b with the dequantized
// W, and its backward gives the input gradient of that product (no gradient
// for the frozen weight), in float32 and bfloat16.
TEST(Nf4Linear, ForwardAndInputGradientUseTheDequantizedWeight) {
  at::manual_seed(5);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    auto opts = at::TensorOptions().dtype(dtype);
    model::Linear lin(96, 40, /*bias=*/true, opts);
    {
      torch::NoGradGuard g;
      lin->weight.copy_(at::randn({40, 96}) * 0.1);
      lin->bias.copy_(at::randn({40}));
    }
    lin->set_nf4(model::quantize_nf4(lin->weight, true, "w"));
    ASSERT_NE(lin->nf4(), nullptr);
    EXPECT_EQ(lin->weight.scalar_type(), at::kByte);
    EXPECT_FALSE(lin->weight.requires_grad());
    const at::Tensor w = model::dequantize_nf4(*lin->nf4(), dtype);

    at::Tensor x = at::randn({2, 5, 96}, opts).set_requires_grad(true);
    at::Tensor y = lin->forward(x);
    at::Tensor x2 = x.detach().clone().set_requires_grad(true);
    at::Tensor y2 = at::linear(x2, w, lin->bias);
    EXPECT_TRUE(at::equal(y, y2));
    const at::Tensor gy = at::randn(y.sizes(), opts);
    y.backward(gy);
    y2.backward(gy);
    const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
    EXPECT_LE((x.grad() - x2.grad()).abs().max().item<double>(),
              tol * x2.grad().abs().max().item<double>());
    EXPECT_FALSE(lin->weight.grad().defined());
  }
}

}  // namespace
