// trainer/gguf/gguf_write.cpp — GgufWriter and the float32 -> ggml encoders.
//
// The encoders reproduce gguf-py 0.19 (gguf/quants.py) in float32, one IEEE
// operation at a time in the same order, so the bytes are identical:
//   Q8_0: d = amax / 127 (float32), id = 1 / d (0 when d == 0), q =
//         np_roundf(x * id) (round half away from zero, which is roundf),
//         d stored with numpy's float16 conversion (round to nearest even).
//   F16:  numpy astype(float16): round to nearest even (c10::Half does the same).
//   BF16: ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16), NaN -> quiet NaN first.
#include "trainer/gguf/gguf_write.h"

#include <c10/util/Half.h>

#include <cmath>
#include <cstring>
#include <set>

#include "trainer/io/file_util.h"

namespace loratune::gguf {
namespace {

constexpr uint64_t kAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT
constexpr uint32_t kVersion = 3;

uint64_t align(uint64_t n) {
  return (n + kAlignment - 1) / kAlignment * kAlignment;
}

int64_t block_of(uint32_t type) {
  return type == kGgmlQ8_0 ? 32 : 1;
}

[[noreturn]] void unknown_type(uint32_t type) {
  throw Error("GGUF writer: ggml type " + std::to_string(type) +
                  " is not one the writer encodes (F32, F16, BF16, Q8_0)",
              ErrorKind::kInternal);
}

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));  // little-endian hosts
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_value(std::string& out, const Value& v, ValueType type) {
  switch (type) {
    case ValueType::kUint8:
      put<uint8_t>(out, static_cast<uint8_t>(v.u));
      break;
    case ValueType::kInt8:
      put<int8_t>(out, static_cast<int8_t>(v.i));
      break;
    case ValueType::kUint16:
      put<uint16_t>(out, static_cast<uint16_t>(v.u));
      break;
    case ValueType::kInt16:
      put<int16_t>(out, static_cast<int16_t>(v.i));
      break;
    case ValueType::kUint32:
      put<uint32_t>(out, static_cast<uint32_t>(v.u));
      break;
    case ValueType::kInt32:
      put<int32_t>(out, static_cast<int32_t>(v.i));
      break;
    case ValueType::kUint64:
      put<uint64_t>(out, v.u);
      break;
    case ValueType::kInt64:
      put<int64_t>(out, v.i);
      break;
    case ValueType::kFloat32:
      put<float>(out, static_cast<float>(v.f));
      break;
    case ValueType::kFloat64:
      put<double>(out, v.f);
      break;
    case ValueType::kBool:
      put<uint8_t>(out, v.i != 0 ? 1 : 0);
      break;
    case ValueType::kString:
      put_string(out, v.s);
      break;
    case ValueType::kArray:
      put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
      put<uint64_t>(out, v.array.size());
      for (const Value& e : v.array) put_value(out, e, v.elem_type);
      break;
  }
}

uint16_t bf16_bits(float x) {
  uint32_t n;
  std::memcpy(&n, &x, 4);
  if ((n & 0x7fffffffu) > 0x7f800000u) n = (n & 0xffff0000u) | (64u << 16);  // quiet NaN
  return static_cast<uint16_t>((static_cast<uint64_t>(n) + (0x7fffu + ((n >> 16) & 1u))) >> 16);
}

void q8_0_block(const float* x, uint8_t* dst) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d == 0.0f ? 0.0f : 1.0f / d;
  const uint16_t dh = c10::Half(d).x;
  std::memcpy(dst, &dh, 2);
  for (int j = 0; j < 32; ++j) {
    const float q = std::round(x[j] * id);  // half away from zero, as np_roundf
    dst[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(q));
  }
}

}  // namespace

uint64_t encoded_bytes(uint32_t type, int64_t n) {
  const auto count = static_cast<uint64_t>(n);
  switch (type) {
    case kGgmlF32:
      return count * 4;
    case kGgmlF16:
    case kGgmlBF16:
      return count * 2;
    case kGgmlQ8_0:
      return count / 32 * 34;
  }
  unknown_type(type);
}

void encode_row(uint32_t type, const float* src, int64_t n, uint8_t* dst) {
  if (n % block_of(type) != 0) {
    throw Error("GGUF writer: " + std::to_string(n) + " values are not a whole number of blocks",
                ErrorKind::kInternal);
  }
  switch (type) {
    case kGgmlF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case kGgmlF16:
      for (int64_t k = 0; k < n; ++k) {
        const uint16_t h = c10::Half(src[k]).x;
        std::memcpy(dst + 2 * k, &h, 2);
      }
      return;
    case kGgmlBF16:
      for (int64_t k = 0; k < n; ++k) {
        const uint16_t b = bf16_bits(src[k]);
        std::memcpy(dst + 2 * k, &b, 2);
      }
      return;
    case kGgmlQ8_0:
      for (int64_t b = 0; b < n / 32; ++b) q8_0_block(src + 32 * b, dst + 34 * b);
      return;
  }
  unknown_type(type);
}

Value string_value(std::string s) {
  Value v;
  v.type = ValueType::kString;
  v.s = std::move(s);
  return v;
}

Value u32_value(uint32_t x) {
  Value v;
  v.type = ValueType::kUint32;
  v.u = x;
  v.i = x;
  return v;
}

Value i32_value(int32_t x) {
  Value v;
  v.type = ValueType::kInt32;
  v.i = x;
  return v;
}

Value f32_value(float x) {
  Value v;
  v.type = ValueType::kFloat32;
  v.f = x;
  return v;
}

Value bool_value(bool b) {
  Value v;
  v.type = ValueType::kBool;
  v.i = b ? 1 : 0;
  return v;
}

namespace {
template <typename T, typename F>
Value array_of(ValueType elem, const std::vector<T>& items, F make) {
  Value v;
  v.type = ValueType::kArray;
  v.elem_type = elem;
  v.array.reserve(items.size());
  for (const T& x : items) v.array.push_back(make(x));
  return v;
}
}  // namespace

Value string_array(const std::vector<std::string>& items) {
  return array_of(ValueType::kString, items, [](const std::string& s) { return string_value(s); });
}
Value i32_array(const std::vector<int32_t>& items) {
  return array_of(ValueType::kInt32, items, i32_value);
}
Value f32_array(const std::vector<float>& items) {
  return array_of(ValueType::kFloat32, items, f32_value);
}
Value u32_array(const std::vector<uint32_t>& items) {
  return array_of(ValueType::kUint32, items, u32_value);
}

uint64_t TensorSpec::nbytes() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return encoded_bytes(type, n);
}

GgufWriter::GgufWriter(Metadata metadata, std::vector<TensorSpec> tensors)
    : metadata_(std::move(metadata)), tensors_(std::move(tensors)) {
  std::set<std::string> keys, names;
  for (const auto& [key, value] : metadata_) {
    if (!keys.insert(key).second) {
      throw Error("GGUF writer: metadata key '" + key + "' set twice", ErrorKind::kInternal);
    }
  }
  uint64_t offset = 0;
  for (const TensorSpec& t : tensors_) {
    if (!names.insert(t.name).second) {
      throw Error("GGUF writer: tensor '" + t.name + "' added twice", ErrorKind::kInternal);
    }
    if (t.shape.empty() || t.shape.size() > 4 || t.shape.back() % block_of(t.type) != 0) {
      throw Error("GGUF writer: tensor '" + t.name + "' has a shape its type cannot hold",
                  ErrorKind::kInternal);
    }
    offsets_.push_back(offset);
    offset += align(t.nbytes());
  }
}

std::string GgufWriter::header() const {
  std::string out = "GGUF";
  put<uint32_t>(out, kVersion);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, metadata_.size());
  for (const auto& [key, value] : metadata_) {
    put_string(out, key);
    put<uint32_t>(out, static_cast<uint32_t>(value.type));
    put_value(out, value, value.type);
  }
  for (size_t k = 0; k < tensors_.size(); ++k) {
    const TensorSpec& t = tensors_[k];
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) {
      put<uint64_t>(out, static_cast<uint64_t>(*it));  // ne[0] is the innermost
    }
    put<uint32_t>(out, t.type);
    put<uint64_t>(out, offsets_[k]);
  }
  out.resize(align(out.size()), '\0');
  return out;
}

uint64_t GgufWriter::file_size() const {
  uint64_t n = header().size();
  for (const TensorSpec& t : tensors_) n += align(t.nbytes());
  return n;
}

void GgufWriter::begin(io::AtomicFile& out) {
  out_ = &out;
  next_ = 0;
  written_ = 0;
  const std::string h = header();
  out_->write(h.data(), h.size());
}

void GgufWriter::write_tensor(const std::string& name, const uint8_t* data, uint64_t n) {
  if (written_ != 0 || (next_ < tensors_.size() && tensors_[next_].nbytes() != n)) {
    throw Error("GGUF writer: tensor '" + name + "' (" + std::to_string(n) +
                    " bytes) written out of order or with the wrong size",
                ErrorKind::kInternal);
  }
  write_tensor_part(name, data, n);
}

void GgufWriter::write_tensor_part(const std::string& name, const uint8_t* data, uint64_t n) {
  if (out_ == nullptr || next_ >= tensors_.size() || tensors_[next_].name != name ||
      n > tensors_[next_].nbytes() - written_) {
    throw Error("GGUF writer: tensor '" + name + "' (" + std::to_string(n) +
                    " bytes) written out of order or with the wrong size",
                ErrorKind::kInternal);
  }
  out_->write(data, n);
  written_ += n;
  const uint64_t total = tensors_[next_].nbytes();
  if (written_ < total) return;
  static const char kZeros[kAlignment] = {};
  const uint64_t pad = align(total) - total;
  if (pad > 0) out_->write(kZeros, pad);
  written_ = 0;
  ++next_;
}

void GgufWriter::finish() {
  if (next_ != tensors_.size()) {
    throw Error("GGUF writer: " + std::to_string(tensors_.size() - next_) +
                    " tensors were never written (first: '" + tensors_[next_].name + "')",
                ErrorKind::kInternal);
  }
  out_ = nullptr;
}

}  // namespace loratune::gguf
