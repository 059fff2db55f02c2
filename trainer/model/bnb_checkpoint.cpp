// trainer/model/bnb_checkpoint.cpp — bitsandbytes 4-bit states → Nf4Weight.
#include "trainer/model/bnb_checkpoint.h"

#include <ATen/ops/isfinite.h>
#include <ATen/ops/scalar_tensor.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <sstream>

#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"

namespace loratune::model {
namespace {

using nlohmann::json;

constexpr size_t kMaxStateBytes = 4096;  // the JSON is ~170 bytes

const char* const kNf4State = ".quant_state.bitsandbytes__nf4";
const char* const kFp4State = ".quant_state.bitsandbytes__fp4";

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

// Errors of one weight: "<file>: tensor '<name>': <what>".
struct Reporter {
  const io::Checkpoint& ckpt;
  [[noreturn]] void fail(const std::string& name, const std::string& what,
                         ErrorKind kind = ErrorKind::kCorrupt) const {
    const std::string file = ckpt.contains(name) ? ckpt.file_of(name).path() : "checkpoint";
    throw Error(file + ": tensor '" + printable(name, 120) + "': " + what, kind);
  }
  // The tensor `name`, present with `dtype` and `shape`.
  at::Tensor get(const std::string& name, at::ScalarType dtype,
                 const std::vector<int64_t>& shape) const {
    if (!ckpt.contains(name)) fail(name, "missing (a bitsandbytes 4-bit weight needs it)");
    const io::TensorInfo& info = ckpt.info(name);
    if (info.scalar_type != dtype || info.shape != shape) {
      fail(name, "is " + printable(info.dtype, 16) + " " + shape_str(info.shape) + ", expected " +
                     io::dtype_name(dtype) + " " + shape_str(shape));
    }
    return ckpt.tensor(name);
  }
};

// The JSON of the quant_state tensor: an object, bounded.
json read_state_json(const Reporter& r, const std::string& name) {
  const io::TensorInfo& info = r.ckpt.info(name);
  if (info.scalar_type != at::kByte || info.shape.size() != 1) {
    r.fail(name, "must be a 1-D uint8 tensor (JSON bytes), got " + printable(info.dtype, 16) + " " +
                     shape_str(info.shape));
  }
  if (info.nbytes() > kMaxStateBytes) {
    r.fail(name, std::to_string(info.nbytes()) + " bytes of JSON (at most " +
                     std::to_string(kMaxStateBytes) + ")");
  }
  const uint8_t* p = r.ckpt.file_of(name).data(info);
  const std::string text(reinterpret_cast<const char*>(p), info.nbytes());
  json j;
  try {
    j = io::parse_json(text, "", ErrorKind::kCorrupt);
  } catch (const Error& e) {
    r.fail(name, "is not a JSON object: " + std::string(e.what()));
  }
  if (!j.is_object()) {
    r.fail(name, "is not a JSON object: " + printable(text, 60));
  }
  return j;
}

// Same bits (0.0 and -0.0 differ, as do NaNs), both float32.
bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() &&
         a.contiguous().view(at::kInt).equal(b.contiguous().view(at::kInt));
}

}  // namespace

std::vector<std::string> bnb_companion_names(const std::string& weight) {
  return {weight + ".absmax",           weight + ".quant_map", weight + ".nested_absmax",
          weight + ".nested_quant_map", weight + kNf4State,    weight + kFp4State};
}

bool is_bnb_quantized(const io::Checkpoint& ckpt, const std::string& weight) {
  return ckpt.contains(weight + kNf4State) || ckpt.contains(weight + kFp4State);
}

Nf4Weight read_bnb_nf4(const io::Checkpoint& ckpt, const std::string& weight, int64_t out,
                       int64_t in, bool double_quant) {
  const Reporter r{ckpt};
  if (ckpt.contains(weight + kFp4State)) {
    r.fail(weight + kFp4State, "bitsandbytes fp4 is not supported (only nf4)",
           ErrorKind::kUnsupported);
  }
  const std::string state_name = weight + kNf4State;
  if (!ckpt.contains(state_name)) r.fail(state_name, "missing (a bitsandbytes 4-bit weight)");
  const json j = read_state_json(r, state_name);
  auto field = [&](const char* key) -> const json& {
    auto it = j.find(key);
    if (it == j.end()) r.fail(state_name, std::string("JSON lacks \"") + key + "\"");
    return *it;
  };
  auto integer = [&](const char* key) {
    const json& v = field(key);
    if (!v.is_number_integer()) {
      r.fail(state_name,
             std::string("\"") + key + "\" must be an integer, got " + printable(v.dump(), 40));
    }
    return v.get<int64_t>();
  };
  auto string = [&](const char* key) {
    const json& v = field(key);
    if (!v.is_string()) {
      r.fail(state_name,
             std::string("\"") + key + "\" must be a string, got " + printable(v.dump(), 40));
    }
    return v.get<std::string>();
  };

  const std::string type = string("quant_type");
  if (type != "nf4") {
    r.fail(state_name, "quant_type \"" + printable(type, 40) + "\" is not supported (only nf4)",
           ErrorKind::kUnsupported);
  }
  const int64_t blocksize = integer("blocksize");
  if (blocksize != kNf4BlockSize) {
    r.fail(state_name,
           "blocksize " + std::to_string(blocksize) +
               " is not supported (only 64, bitsandbytes' "
               "default)",
           ErrorKind::kUnsupported);
  }
  const std::string dtype = string("dtype");
  if (dtype != "float32" && dtype != "bfloat16" && dtype != "float16") {
    r.fail(state_name,
           "dtype \"" + printable(dtype, 40) + "\" is not supported (float32, bfloat16, float16)",
           ErrorKind::kUnsupported);
  }
  const json& shape = field("shape");
  const std::vector<int64_t> want = {out, in};
  if (!shape.is_array() || shape.size() != 2 || !shape[0].is_number_integer() ||
      !shape[1].is_number_integer() || shape[0].get<int64_t>() != out ||
      shape[1].get<int64_t>() != in) {
    r.fail(state_name,
           "shape " + printable(shape.dump(), 60) + " but config.json implies " + shape_str(want));
  }
  const bool nested =
      j.contains("nested_blocksize") || j.contains("nested_offset") || j.contains("nested_dtype");
  if (nested != double_quant) {
    r.fail(state_name, std::string(nested ? "has" : "lacks") +
                           " double-quant fields but config.json's "
                           "quantization_config.bnb_4bit_use_double_quant is " +
                           (double_quant ? "true" : "false"));
  }

  Nf4Weight q;
  q.shape = want;
  q.packed = r.get(weight, at::kByte, {(out * in + 1) / 2, 1});
  const int64_t blocks = q.blocks();
  q.absmax = r.get(weight + ".absmax", double_quant ? at::kByte : at::kFloat, {blocks});
  const at::Tensor code = r.get(weight + ".quant_map", at::kFloat, {16});
  if (!bitwise_equal(code, nf4_code())) {
    r.fail(weight + ".quant_map", "is not the NF4 code (bitsandbytes' get_4bit_type(\"nf4\"))");
  }
  if (!double_quant) {
    if (!at::isfinite(q.absmax).all().item<bool>()) r.fail(weight + ".absmax", "holds NaN or inf");
    return q;
  }
  const int64_t nested_blocksize = integer("nested_blocksize");
  if (nested_blocksize != kNestedBlockSize) {
    r.fail(state_name,
           "nested_blocksize " + std::to_string(nested_blocksize) +
               " is not supported (only 256, bitsandbytes' default)",
           ErrorKind::kUnsupported);
  }
  const std::string nested_dtype = string("nested_dtype");
  if (nested_dtype != "float32") {
    r.fail(state_name,
           "nested_dtype \"" + printable(nested_dtype, 40) + "\" is not supported (only float32)",
           ErrorKind::kUnsupported);
  }
  const json& off = field("nested_offset");
  if (!off.is_number() || !std::isfinite(off.get<double>()) ||
      !std::isfinite(static_cast<float>(off.get<double>()))) {
    r.fail(state_name, "nested_offset must be a finite number, got " + printable(off.dump(), 40));
  }
  // Python wrote the float32 offset as the double that equals it: exact.
  q.offset = at::scalar_tensor(static_cast<float>(off.get<double>()), at::kFloat);
  q.nested_absmax = r.get(weight + ".nested_absmax", at::kFloat,
                          {(blocks + kNestedBlockSize - 1) / kNestedBlockSize});
  if (!at::isfinite(q.nested_absmax).all().item<bool>()) {
    r.fail(weight + ".nested_absmax", "holds NaN or inf");
  }
  const at::Tensor map = r.get(weight + ".nested_quant_map", at::kFloat, {256});
  if (!bitwise_equal(map, dynamic_map())) {
    r.fail(weight + ".nested_quant_map",
           "is not bitsandbytes' dynamic map (create_dynamic_map(signed=True))");
  }
  return q;
}

}  // namespace loratune::model
