// trainer/gguf/gguf_read.cpp — GgufFile: parsing and validating the header,
// the metadata and the tensor infos (checks listed in gguf.h).
//
// Every count and length is checked against the bytes left before anything
// is allocated from it, so a lying header costs no memory and never reads
// past the mapping.
#include <algorithm>
#include <cstring>

#include "trainer/gguf/gguf.h"
#include "trainer/io/mmap.h"

namespace loratune::gguf {
namespace {

constexpr int kMaxArrayDepth = 8;
constexpr uint64_t kMaxNameBytes = 4096;
// Array elements in all metadata together. Each becomes a Value (~90 bytes)
// whatever its size in the file, so a file of one huge uint8 array would
// otherwise cost ~90x its size in memory. The largest real vocabularies
// (262k tokens with scores and types; 280k-450k merges: under 1M elements)
// stay far below this.
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 22;
// Metadata keys: real files have a few dozen (per-layer values are arrays).
constexpr uint64_t kMaxMetadataKeys = uint64_t{1} << 16;
// Memory the parsed metadata may take (Values, strings, keys): real files
// need well under 100 MiB.
constexpr uint64_t kMaxMetadataMemory = uint64_t{256} << 20;

const TypeTraits kTypes[] = {
    {0, "F32", 1, 4, true},          {1, "F16", 1, 2, true},
    {2, "Q4_0", 32, 18, true},       {3, "Q4_1", 32, 20, true},
    {6, "Q5_0", 32, 22, true},       {7, "Q5_1", 32, 24, true},
    {8, "Q8_0", 32, 34, true},       {9, "Q8_1", 32, 40, false},
    {10, "Q2_K", 256, 84, false},    {11, "Q3_K", 256, 110, false},
    {12, "Q4_K", 256, 144, true},    {13, "Q5_K", 256, 176, false},
    {14, "Q6_K", 256, 210, true},    {15, "Q8_K", 256, 292, false},
    {16, "IQ2_XXS", 256, 66, false}, {17, "IQ2_XS", 256, 74, false},
    {18, "IQ3_XXS", 256, 98, false}, {19, "IQ1_S", 256, 50, false},
    {20, "IQ4_NL", 32, 18, false},   {21, "IQ3_S", 256, 110, false},
    {22, "IQ2_S", 256, 82, false},   {23, "IQ4_XS", 256, 136, false},
    {24, "I8", 1, 1, false},         {25, "I16", 1, 2, false},
    {26, "I32", 1, 4, false},        {27, "I64", 1, 8, false},
    {28, "F64", 1, 8, false},        {29, "IQ1_M", 256, 56, false},
    {30, "BF16", 1, 2, true},        {34, "TQ1_0", 256, 54, false},
    {35, "TQ2_0", 256, 66, false},   {39, "MXFP4", 32, 17, false},
};

// Size in bytes of a scalar value type; 0 for string/array; -1 if unknown.
int scalar_size(uint32_t t) {
  switch (static_cast<ValueType>(t)) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kBool:
      return 1;
    case ValueType::kUint16:
    case ValueType::kInt16:
      return 2;
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kFloat32:
      return 4;
    case ValueType::kUint64:
    case ValueType::kInt64:
    case ValueType::kFloat64:
      return 8;
    case ValueType::kString:
    case ValueType::kArray:
      return 0;
  }
  return -1;
}

// The smallest number of bytes one value of type t occupies in the file.
uint64_t min_size(uint32_t t) {
  const int s = scalar_size(t);
  if (s > 0) return static_cast<uint64_t>(s);
  return static_cast<ValueType>(t) == ValueType::kString ? 8 : 12;  // length / type+count
}

// A bounds-checked little-endian cursor over the file image.
class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t size, const std::string& path)
      : p_(p), size_(size), path_(path) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  void need(uint64_t n, const std::string& what) const {
    if (n > left()) {
      throw Error(path_ + ": " + what + " at byte " + std::to_string(pos_) + " needs " +
                      std::to_string(n) + " bytes, only " + std::to_string(left()) +
                      " left (truncated file?)",
                  ErrorKind::kCorrupt);
    }
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));  // x86/ARM Linux: little-endian hosts
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const std::string& what, uint64_t max_len = UINT64_MAX) {
    const uint64_t n = read<uint64_t>(what + " length");
    if (n > left()) {
      throw Error(path_ + ": " + what + " length " + std::to_string(n) + " at byte " +
                      std::to_string(pos_ - 8) + " runs past the end of the file (" +
                      std::to_string(left()) + " bytes left)",
                  ErrorKind::kCorrupt);
    }
    if (n > max_len) {
      throw Error(path_ + ": " + what + " length " + std::to_string(n) + " exceeds the limit of " +
                      std::to_string(max_len),
                  ErrorKind::kCorrupt);
    }
    std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return s;
  }
  // Counts `n` more array elements against kMaxArrayElements (kResource).
  void take_elements(uint64_t n, const std::string& what) {
    if (n > elements_left_) {
      throw Error(path_ + ": " + what + ": array count " + std::to_string(n) +
                      " takes the metadata past the limit of " + std::to_string(kMaxArrayElements) +
                      " array elements",
                  ErrorKind::kResource);
    }
    elements_left_ -= n;
  }
  // Counts `n` more bytes of parsed metadata against kMaxMetadataMemory.
  void take_memory(uint64_t n, const std::string& what) {
    if (n > memory_left_) {
      throw Error(path_ + ": " + what + " takes the parsed metadata past the limit of " +
                      std::to_string(kMaxMetadataMemory >> 20) + " MiB",
                  ErrorKind::kResource);
    }
    memory_left_ -= n;
  }

 private:
  uint64_t elements_left_ = kMaxArrayElements;
  uint64_t memory_left_ = kMaxMetadataMemory;
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

Value read_value(Cursor& c, uint32_t type, const std::string& ctx, int depth,
                 const std::string& path) {
  Value v;
  if (scalar_size(type) < 0) {
    throw Error(path + ": " + ctx + ": unknown value type " + std::to_string(type),
                ErrorKind::kCorrupt);
  }
  v.type = static_cast<ValueType>(type);
  switch (v.type) {
    case ValueType::kUint8:
      v.u = c.read<uint8_t>(ctx);
      v.i = static_cast<int64_t>(v.u);
      break;
    case ValueType::kInt8:
      v.i = c.read<int8_t>(ctx);
      break;
    case ValueType::kUint16:
      v.u = c.read<uint16_t>(ctx);
      v.i = static_cast<int64_t>(v.u);
      break;
    case ValueType::kInt16:
      v.i = c.read<int16_t>(ctx);
      break;
    case ValueType::kUint32:
      v.u = c.read<uint32_t>(ctx);
      v.i = static_cast<int64_t>(v.u);
      break;
    case ValueType::kInt32:
      v.i = c.read<int32_t>(ctx);
      break;
    case ValueType::kUint64:
      v.u = c.read<uint64_t>(ctx);
      v.i = static_cast<int64_t>(v.u);
      break;
    case ValueType::kInt64:
      v.i = c.read<int64_t>(ctx);
      break;
    case ValueType::kFloat32:
      v.f = c.read<float>(ctx);
      break;
    case ValueType::kFloat64:
      v.f = c.read<double>(ctx);
      break;
    case ValueType::kBool: {
      const uint8_t b = c.read<uint8_t>(ctx);
      if (b > 1) {
        throw Error(path + ": " + ctx + ": bool value " + std::to_string(b) + " is not 0 or 1",
                    ErrorKind::kCorrupt);
      }
      v.i = b;
      break;
    }
    case ValueType::kString:
      v.s = c.string(ctx);
      c.take_memory(v.s.size(), ctx);
      break;
    case ValueType::kArray: {
      if (depth >= kMaxArrayDepth) {
        throw Error(
            path + ": " + ctx + ": arrays nested deeper than " + std::to_string(kMaxArrayDepth),
            ErrorKind::kCorrupt);
      }
      const uint32_t et = c.read<uint32_t>(ctx + " element type");
      if (scalar_size(et) < 0) {
        throw Error(path + ": " + ctx + ": unknown array element type " + std::to_string(et),
                    ErrorKind::kCorrupt);
      }
      v.elem_type = static_cast<ValueType>(et);
      const uint64_t n = c.read<uint64_t>(ctx + " array count");
      if (n > c.left() / min_size(et)) {
        throw Error(path + ": " + ctx + ": array count " + std::to_string(n) + " of " +
                        value_type_name(v.elem_type) + " cannot fit in the " +
                        std::to_string(c.left()) + " bytes left",
                    ErrorKind::kCorrupt);
      }
      c.take_elements(n, ctx);
      c.take_memory(n * sizeof(Value), ctx + ": array of " + std::to_string(n) + " elements");
      v.array.reserve(n);
      for (uint64_t k = 0; k < n; ++k) {
        v.array.push_back(read_value(c, et, ctx + "[" + std::to_string(k) + "]", depth + 1, path));
      }
      break;
    }
  }
  return v;
}

}  // namespace

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
      return "uint8";
    case ValueType::kInt8:
      return "int8";
    case ValueType::kUint16:
      return "uint16";
    case ValueType::kInt16:
      return "int16";
    case ValueType::kUint32:
      return "uint32";
    case ValueType::kInt32:
      return "int32";
    case ValueType::kFloat32:
      return "float32";
    case ValueType::kBool:
      return "bool";
    case ValueType::kString:
      return "string";
    case ValueType::kArray:
      return "array";
    case ValueType::kUint64:
      return "uint64";
    case ValueType::kInt64:
      return "int64";
    case ValueType::kFloat64:
      return "float64";
  }
  return "?";
}

bool Value::is_integer() const {
  const int s = scalar_size(static_cast<uint32_t>(type));
  return s > 0 && type != ValueType::kBool && type != ValueType::kFloat32 &&
         type != ValueType::kFloat64;
}

const TypeTraits* type_traits(uint32_t id) {
  for (const auto& t : kTypes) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // checked for overflow when parsed
  return n;
}

std::shared_ptr<GgufFile> GgufFile::open(const std::string& path) {
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->map_ = io::MappedFile::open(path);
  f->base_ = f->map_->data();
  f->size_ = f->map_->size();
  f->parse_all();
  return f;
}

std::shared_ptr<GgufFile> GgufFile::parse(std::string bytes, const std::string& name) {
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->path_ = name;
  f->owned_ = std::move(bytes);
  f->base_ = reinterpret_cast<const uint8_t*>(f->owned_.data());
  f->size_ = f->owned_.size();
  f->parse_all();
  return f;
}

void GgufFile::parse_all() {
  const std::string& path = path_;
  if (size_ < 24) {
    throw Error(path + ": file too small for a GGUF header (" + std::to_string(size_) + " bytes)",
                ErrorKind::kCorrupt);
  }
  if (std::memcmp(base_, "GGUF", 4) != 0) {
    throw Error(path + ": not a GGUF file (magic " +
                    printable(std::string(reinterpret_cast<const char*>(base_), 4)) +
                    ", expected GGUF)",
                ErrorKind::kCorrupt);
  }
  Cursor c(base_, size_, path);
  c.read<uint32_t>("magic");
  version_ = c.read<uint32_t>("version");
  if (version_ == 1) {
    throw Error(path + ": GGUF version 1 is not supported (supported: 2, 3)",
                ErrorKind::kUnsupported);
  }
  if (version_ != 2 && version_ != 3) {
    const bool swapped = version_ == 0x02000000u || version_ == 0x03000000u;
    throw Error(path + ": GGUF version " + std::to_string(version_) +
                    (swapped ? " (a big-endian file; only little-endian is supported)"
                             : " is unknown (supported: 2, 3)"),
                swapped ? ErrorKind::kUnsupported : ErrorKind::kCorrupt);
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  // A kv pair takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor
  // info 8 + 4 + 8 + 4 + 8 (one dim); counts beyond that are lies.
  if (n_kv > c.left() / 13) {
    throw Error(path + ": metadata count " + std::to_string(n_kv) + " cannot fit in a " +
                    std::to_string(size_) + "-byte file",
                ErrorKind::kCorrupt);
  }
  if (n_tensors > c.left() / 32) {
    throw Error(path + ": tensor count " + std::to_string(n_tensors) + " cannot fit in a " +
                    std::to_string(size_) + "-byte file",
                ErrorKind::kCorrupt);
  }
  if (n_kv > kMaxMetadataKeys) {
    throw Error(path + ": metadata count " + std::to_string(n_kv) + " exceeds the limit of " +
                    std::to_string(kMaxMetadataKeys) + " keys",
                ErrorKind::kResource);
  }
  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string key = c.string("metadata key #" + std::to_string(k), kMaxNameBytes);
    // The key twice (kv_ and kv_index_), its Value and the containers' nodes.
    c.take_memory(2 * key.size() + sizeof(Value) + 128, "metadata key #" + std::to_string(k));
    const std::string ctx = "metadata key '" + printable(key) + "'";
    if (key.empty())
      throw Error(path + ": metadata key #" + std::to_string(k) + " is empty", ErrorKind::kCorrupt);
    const uint32_t type = c.read<uint32_t>(ctx + " type");
    Value v = read_value(c, type, ctx, 0, path);
    if (!kv_index_.emplace(key, kv_.size()).second) {
      throw Error(path + ": duplicate " + ctx, ErrorKind::kCorrupt);
    }
    kv_.emplace_back(key, std::move(v));
  }
  if (const Value* a = find("general.alignment")) {
    if (a->type != ValueType::kUint32) {
      throw Error(path + ": metadata key 'general.alignment' is " + value_type_name(a->type) +
                      ", expected uint32",
                  ErrorKind::kCorrupt);
    }
    if (a->u == 0 || (a->u & (a->u - 1)) != 0) {
      throw Error(path + ": metadata key 'general.alignment' is " + std::to_string(a->u) +
                      ", expected a power of two",
                  ErrorKind::kCorrupt);
    }
    alignment_ = a->u;
  }

  tensors_.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo t;
    t.name = c.string("tensor #" + std::to_string(k) + " name", kMaxNameBytes);
    const std::string ctx = path + ": tensor '" + printable(t.name) + "': ";
    if (t.name.empty())
      throw Error(path + ": tensor #" + std::to_string(k) + " has an empty name",
                  ErrorKind::kCorrupt);
    const uint32_t n_dims = c.read<uint32_t>("tensor '" + t.name + "' n_dims");
    if (n_dims < 1 || n_dims > 4) {
      throw Error(ctx + "n_dims " + std::to_string(n_dims) + " is not in 1..4",
                  ErrorKind::kCorrupt);
    }
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t v = c.read<uint64_t>("tensor '" + t.name + "' dims");
      if (v == 0 || v > static_cast<uint64_t>(INT64_MAX) ||
          __builtin_mul_overflow(numel, v, &numel) || numel > static_cast<uint64_t>(INT64_MAX)) {
        throw Error(ctx + "dimension " + std::to_string(d) + " is " + std::to_string(v) +
                        (v == 0 ? " (must be > 0)" : " (the element count overflows)"),
                    ErrorKind::kCorrupt);
      }
      t.ne.push_back(static_cast<int64_t>(v));
    }
    t.shape.assign(t.ne.rbegin(), t.ne.rend());
    t.type = c.read<uint32_t>("tensor '" + t.name + "' type");
    t.traits = type_traits(t.type);
    if (t.traits == nullptr) {
      throw Error(ctx + "unknown ggml tensor type " + std::to_string(t.type), ErrorKind::kCorrupt);
    }
    if (t.ne[0] % t.traits->block != 0) {
      throw Error(ctx + "row length " + std::to_string(t.ne[0]) + " is not a multiple of the " +
                      t.traits->name + " block size " + std::to_string(t.traits->block),
                  ErrorKind::kCorrupt);
    }
    // numel <= INT64_MAX and block_bytes/block <= 4, so bytes fit uint64.
    t.nbytes = numel / static_cast<uint64_t>(t.traits->block) *
               static_cast<uint64_t>(t.traits->block_bytes);
    t.offset = c.read<uint64_t>("tensor '" + t.name + "' offset");
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) {
      throw Error(path + ": duplicate tensor name '" + printable(t.name) + "'",
                  ErrorKind::kCorrupt);
    }
    tensors_.push_back(std::move(t));
  }
  // The data section starts at the next multiple of the alignment.
  const uint64_t end_of_infos = c.pos();
  data_offset_ = (end_of_infos + alignment_ - 1) / alignment_ * alignment_;
  if (!tensors_.empty() && data_offset_ > size_) {
    throw Error(path + ": the data section would start at byte " + std::to_string(data_offset_) +
                    ", past the end of the file (" + std::to_string(size_) + " bytes)",
                ErrorKind::kCorrupt);
  }
  const uint64_t data_size = size_ > data_offset_ ? size_ - data_offset_ : 0;
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors_) {
    const std::string ctx = path + ": tensor '" + printable(t.name) + "': ";
    if (t.offset % alignment_ != 0) {
      throw Error(ctx + "data offset " + std::to_string(t.offset) +
                      " is not a multiple of the alignment " + std::to_string(alignment_),
                  ErrorKind::kCorrupt);
    }
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      throw Error(ctx + "data [" + std::to_string(t.offset) + ", " + std::to_string(t.offset) +
                      "+" + std::to_string(t.nbytes) + ") (" + t.traits->name + " " +
                      std::to_string(t.numel()) + " elements) runs past the data section of " +
                      std::to_string(data_size) + " bytes",
                  ErrorKind::kCorrupt);
    }
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const TensorInfo& prev = *by_offset[k - 1];
    const TensorInfo& cur = *by_offset[k];
    if (cur.offset < prev.offset + prev.nbytes) {
      throw Error(path + ": tensor '" + printable(cur.name) + "' (data at " +
                      std::to_string(cur.offset) + ") overlaps tensor '" + printable(prev.name) +
                      "' (data [" + std::to_string(prev.offset) + ", " +
                      std::to_string(prev.offset + prev.nbytes) + "))",
                  ErrorKind::kCorrupt);
    }
  }
}

const Value* GgufFile::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const TensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const uint8_t* GgufFile::data(const TensorInfo& info) const {
  return base_ + data_offset_ + info.offset;
}

}  // namespace loratune::gguf
