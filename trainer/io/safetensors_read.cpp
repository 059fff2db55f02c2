// trainer/io/safetensors_read.cpp — dtype mapping, SafetensorsFile, Checkpoint.
//
// Validation order (each failure throws io::Error naming the file and, where
// it applies, the tensor): size of the length prefix, header length bound,
// header inside the file, JSON (UTF-8, object, no duplicate keys), each entry
// (fields, types, dtype, shape, overflow-checked byte size == offset span),
// then the layout (sorted by offset: starts at 0, no gaps, no overlaps, ends
// exactly at the end of the file). Nothing is allocated from header claims
// before they are checked against the file size.
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include "trainer/io/file_util.h"
#include "trainer/io/mmap.h"
#include "trainer/io/safetensors.h"

namespace fs = std::filesystem;

namespace loratune::io {
namespace {

constexpr uint64_t kMaxHeaderSize = 100'000'000;  // as the reference reader

struct DtypeEntry {
  const char* name;
  at::ScalarType type;
  size_t size;
};

const DtypeEntry kDtypes[] = {
    {"F64", at::kDouble, 8},
    {"F32", at::kFloat, 4},
    {"F16", at::kHalf, 2},
    {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},
    {"I32", at::kInt, 4},
    {"I16", at::kShort, 2},
    {"I8", at::kChar, 1},
    {"U8", at::kByte, 1},
    {"BOOL", at::kBool, 1},
    {"U16", at::kUInt16, 2},
    {"U32", at::kUInt32, 4},
    {"U64", at::kUInt64, 8},
    {"F8_E4M3", at::kFloat8_e4m3fn, 1},
    {"F8_E5M2", at::kFloat8_e5m2, 1},
};

const DtypeEntry* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

std::vector<std::string> dtype_names() {
  std::vector<std::string> v;
  for (const auto& d : kDtypes) v.emplace_back(d.name);
  return v;
}

// A JSON number that is a non-negative integer fitting uint64.
bool as_u64(const nlohmann::json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

TensorInfo parse_entry(const std::string& ctx, const std::string& name, const nlohmann::json& e) {
  if (!e.is_object()) throw Error(ctx + "entry is not a JSON object", ErrorKind::kCorrupt);
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!e.contains(field))
      throw Error(ctx + "missing field \"" + field + "\"", ErrorKind::kCorrupt);
  }
  TensorInfo info;
  info.name = name;
  if (!e["dtype"].is_string()) throw Error(ctx + "\"dtype\" is not a string", ErrorKind::kCorrupt);
  info.dtype = e["dtype"].get<std::string>();
  const DtypeEntry* d = find_dtype(info.dtype);
  if (d == nullptr) {
    std::string hint = closest_match(info.dtype, dtype_names());
    throw Error(ctx + "unknown dtype \"" + info.dtype + "\"" +
                    (hint.empty() ? "" : " (did you mean \"" + hint + "\"?)"),
                ErrorKind::kCorrupt);
  }
  info.scalar_type = d->type;

  const auto& shape = e["shape"];
  if (!shape.is_array()) throw Error(ctx + "\"shape\" is not an array", ErrorKind::kCorrupt);
  uint64_t nbytes = d->size;
  for (const auto& dim : shape) {
    uint64_t v = 0;
    if (!as_u64(dim, &v) || v > static_cast<uint64_t>(INT64_MAX)) {
      throw Error(ctx + "shape " + shape.dump() + " has a negative or non-integer dimension",
                  ErrorKind::kCorrupt);
    }
    if (__builtin_mul_overflow(nbytes, v, &nbytes)) {
      throw Error(ctx + "shape " + shape.dump() + " overflows the byte size", ErrorKind::kCorrupt);
    }
    info.shape.push_back(static_cast<int64_t>(v));
  }
  const auto& off = e["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !as_u64(off[0], &info.begin) ||
      !as_u64(off[1], &info.end)) {
    throw Error(ctx + "\"data_offsets\" is not [begin, end] of non-negative integers",
                ErrorKind::kCorrupt);
  }
  if (info.begin > info.end) {
    throw Error(ctx + "data_offsets begin " + std::to_string(info.begin) + " > end " +
                    std::to_string(info.end),
                ErrorKind::kCorrupt);
  }
  if (info.end - info.begin != nbytes) {
    throw Error(ctx + "byte size " + std::to_string(nbytes) + " of " + info.dtype + " " +
                    shape.dump() + " != data_offsets span " + std::to_string(info.end - info.begin),
                ErrorKind::kCorrupt);
  }
  return info;
}

// Sorted by offset, entries must tile [0, buffer_size) exactly.
void check_layout(const std::string& path, std::vector<TensorInfo>& tensors, uint64_t buffer) {
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  for (const auto& t : tensors) {
    const std::string ctx = path + ": tensor '" + t.name + "': ";
    if (t.begin > pos) {
      throw Error(ctx + "gap in the data buffer: begins at " + std::to_string(t.begin) +
                      ", previous data ends at " + std::to_string(pos),
                  ErrorKind::kCorrupt);
    }
    if (t.begin < pos) {
      throw Error(ctx + "overlaps the previous tensor: begins at " + std::to_string(t.begin) +
                      ", previous data ends at " + std::to_string(pos),
                  ErrorKind::kCorrupt);
    }
    if (t.end > buffer) {
      throw Error(ctx + "data_offsets end " + std::to_string(t.end) +
                      " is past the data buffer of " + std::to_string(buffer) + " bytes",
                  ErrorKind::kCorrupt);
    }
    pos = t.end;
  }
  if (pos != buffer) {
    throw Error(path + ": " + std::to_string(buffer - pos) +
                    " trailing bytes after the last tensor (data ends at " + std::to_string(pos) +
                    ", buffer is " + std::to_string(buffer) + " bytes)",
                ErrorKind::kCorrupt);
  }
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // cannot overflow: checked when parsed
  return n;
}

at::ScalarType scalar_type_from_name(const std::string& dtype) {
  const DtypeEntry* d = find_dtype(dtype);
  if (d == nullptr) throw Error("unknown safetensors dtype \"" + dtype + "\"", ErrorKind::kCorrupt);
  return d->type;
}

std::string dtype_name(at::ScalarType t) {
  for (const auto& d : kDtypes) {
    if (d.type == t) return d.name;
  }
  throw Error(std::string("safetensors cannot store dtype ") + c10::toString(t),
              ErrorKind::kUnsupported);
}

size_t dtype_size(const std::string& dtype) {
  const DtypeEntry* d = find_dtype(dtype);
  if (d == nullptr) throw Error("unknown safetensors dtype \"" + dtype + "\"", ErrorKind::kCorrupt);
  return d->size;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = MappedFile::open(path);
  const uint64_t size = f->map_->size();
  if (size < 8) {
    throw Error(
        path + ": file too small for a safetensors header (" + std::to_string(size) + " bytes)",
        ErrorKind::kCorrupt);
  }
  uint64_t n = 0;
  const uint8_t* p = f->map_->data();
  for (int i = 7; i >= 0; --i) n = (n << 8) | p[i];  // little-endian u64
  if (n > kMaxHeaderSize) {
    throw Error(path + ": header length " + std::to_string(n) + " exceeds the limit of " +
                    std::to_string(kMaxHeaderSize),
                ErrorKind::kCorrupt);
  }
  if (8 + n > size) {
    throw Error(path + ": header length " + std::to_string(n) + " runs past the end of the file (" +
                    std::to_string(size) + " bytes)",
                ErrorKind::kCorrupt);
  }
  f->header_size_ = n;
  const std::string text(reinterpret_cast<const char*>(p + 8), n);
  nlohmann::json header = parse_json(text, path + " (header)");
  if (!header.is_object()) throw Error(path + ": header is not a JSON object", ErrorKind::kCorrupt);

  f->tensors_.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        throw Error(path + ": __metadata__ is not a JSON object", ErrorKind::kCorrupt);
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) {
          throw Error(path + ": __metadata__ value of \"" + k + "\" is not a string",
                      ErrorKind::kCorrupt);
        }
        f->metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    f->tensors_.push_back(parse_entry(path + ": tensor '" + name + "': ", name, entry));
  }
  check_layout(path, f->tensors_, size - 8 - n);
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->by_name_[f->tensors_[i].name] = i;
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsFile::rename(const std::function<std::string(const std::string&)>& new_name) {
  std::unordered_map<std::string, size_t> by_name;
  std::vector<std::string> names;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    names.push_back(new_name(tensors_[i].name));
    auto [it, fresh] = by_name.emplace(names.back(), i);
    if (!fresh) {
      throw Error(path_ + ": tensors '" + tensors_[it->second].name + "' and '" + tensors_[i].name +
                      "' would both be read as '" + names.back() + "'",
                  ErrorKind::kCorrupt);
    }
  }
  for (size_t i = 0; i < tensors_.size(); ++i) tensors_[i].name = std::move(names[i]);
  by_name_ = std::move(by_name);
}

const uint8_t* SafetensorsFile::data(const TensorInfo& info) const {
  return map_->data() + 8 + header_size_ + info.begin;
}

uint64_t SafetensorsFile::file_size() const {
  return map_->size();
}

void SafetensorsFile::release(const TensorInfo& info) const {
  map_->release(8 + header_size_ + info.begin, info.nbytes());
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo* info = find(name);
  if (info == nullptr) {
    std::vector<std::string> names;
    for (const auto& t : tensors_) names.push_back(t.name);
    std::string hint = closest_match(name, names);
    throw Error(path_ + ": no tensor '" + name + "'" +
                    (hint.empty() ? "" : " (did you mean '" + hint + "'?)"),
                ErrorKind::kCorrupt);
  }
  const auto options = at::TensorOptions().dtype(info->scalar_type).device(at::kCPU);
  try {
    if (info->nbytes() == 0) return at::empty(info->shape, options);
    uint8_t* ptr = map_->data() + 8 + header_size_ + info->begin;
    if (reinterpret_cast<uintptr_t>(ptr) % dtype_size(info->dtype) != 0) {
      // A writer that did not pad its header leaves data misaligned; kernels
      // may assume alignment, so such a tensor is copied instead of viewed.
      at::Tensor t = at::empty(info->shape, options);
      std::memcpy(t.data_ptr(), ptr, info->nbytes());
      return t;
    }
    std::shared_ptr<MappedFile> keep = map_;
    return at::from_blob(
        ptr, info->shape, [keep](void*) {}, options);
  } catch (const c10::Error& e) {  // e.g. a zero-size shape LibTorch finds too large
    throw Error(path_ + ": tensor '" + name + "': " + e.what_without_backtrace(),
                ErrorKind::kCorrupt);
  }
}

// --- Checkpoint -------------------------------------------------------------------

Checkpoint Checkpoint::open(const std::string& path) {
  std::string index;
  std::string single;
  if (fs::is_directory(path)) {
    const fs::path dir(path);
    // model.safetensors first when both exist, as transformers'
    // from_pretrained looks for it before the index.
    if (fs::exists(dir / "model.safetensors")) {
      single = (dir / "model.safetensors").string();
    } else if (fs::exists(dir / "model.safetensors.index.json")) {
      index = (dir / "model.safetensors.index.json").string();
    } else {
      std::vector<std::string> found;
      for (const auto& e : fs::directory_iterator(dir)) {
        if (e.path().extension() == ".safetensors") found.push_back(e.path().string());
      }
      if (found.size() != 1) {
        throw Error(path + ": no model.safetensors.index.json or model.safetensors" +
                        (found.empty() ? std::string() : " (and several other .safetensors files)"),
                    ErrorKind::kIo);
      }
      single = found[0];
    }
  } else if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
    index = path;
  } else {
    single = path;
  }

  Checkpoint ck;
  if (!single.empty()) {
    ck.shards_.push_back(SafetensorsFile::open(single));
    for (const auto& t : ck.shards_[0]->tensors()) ck.shard_of_[t.name] = 0;
    return ck;
  }

  const nlohmann::json j = read_json(index);
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    throw Error(index + ": no \"weight_map\" object", ErrorKind::kCorrupt);
  }
  const fs::path base = fs::path(index).parent_path();
  std::map<std::string, size_t> file_index;  // shard file name -> shards_ slot
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string())
      throw Error(index + ": weight_map entry '" + name + "' is not a string", ErrorKind::kCorrupt);
    const std::string f = file.get<std::string>();
    if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
      throw Error(index + ": tensor '" + name + "': shard name \"" + f +
                      "\" is not a file name in the checkpoint directory",
                  ErrorKind::kCorrupt);
    }
    file_index.emplace(f, 0);
  }
  for (auto& [f, slot] : file_index) {
    const std::string shard_path = (base / f).string();
    if (!fs::exists(shard_path)) {
      throw Error(index + ": names shard " + f + ", which is missing (" + shard_path + ")",
                  ErrorKind::kIo);
    }
    slot = ck.shards_.size();
    ck.shards_.push_back(SafetensorsFile::open(shard_path));
  }
  for (size_t s = 0; s < ck.shards_.size(); ++s) {
    for (const auto& t : ck.shards_[s]->tensors()) {
      auto [it, fresh] = ck.shard_of_.emplace(t.name, s);
      if (!fresh) {
        throw Error(index + ": tensor '" + t.name + "' is in two shards: " +
                        ck.shards_[it->second]->path() + " and " + ck.shards_[s]->path(),
                    ErrorKind::kCorrupt);
      }
    }
  }
  for (const auto& [name, file] : j["weight_map"].items()) {
    const size_t s = file_index.at(file.get<std::string>());
    auto it = ck.shard_of_.find(name);
    if (it == ck.shard_of_.end() || it->second != s) {
      throw Error(
          index + ": tensor '" + name + "' is mapped to " + ck.shards_[s]->path() +
              ", which does not contain it" +
              (it == ck.shard_of_.end() ? ""
                                        : " (it is in " + ck.shards_[it->second]->path() + ")"),
          ErrorKind::kCorrupt);
    }
  }
  return ck;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> v;
  v.reserve(shard_of_.size());
  for (const auto& [name, s] : shard_of_) v.push_back(name);
  std::sort(v.begin(), v.end());
  return v;
}

bool Checkpoint::contains(const std::string& name) const {
  return shard_of_.count(name) != 0;
}

const SafetensorsFile& Checkpoint::file_of(const std::string& name) const {
  auto it = shard_of_.find(name);
  if (it == shard_of_.end()) {
    std::string hint = closest_match(name, names());
    std::string where = shards_.empty() ? std::string("checkpoint") : shards_[0]->path();
    throw Error(where + ": checkpoint has no tensor '" + name + "'" +
                    (hint.empty() ? "" : " (did you mean '" + hint + "'?)"),
                ErrorKind::kCorrupt);
  }
  return *shards_[it->second];
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  return *file_of(name).find(name);
}

at::Tensor Checkpoint::tensor(const std::string& name) const {
  return file_of(name).tensor(name);
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t n = 0;
  for (const auto& s : shards_) {
    for (const auto& t : s->tensors()) n += t.nbytes();
  }
  return n;
}

}  // namespace loratune::io
