// trainer/io/safetensors_write.cpp — serialize, save_file, ShardedWriter, parse_size.
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <regex>
#include <set>

#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"

namespace fs = std::filesystem;

namespace loratune::io {
namespace {

using Sink = std::function<void(const void*, size_t)>;

uint64_t tensor_bytes(const std::string& name, const at::Tensor& t) {
  if (!t.defined()) throw Error("tensor '" + name + "' is undefined");
  if (t.layout() != at::kStrided) throw Error("tensor '" + name + "' is not a dense tensor");
  return static_cast<uint64_t>(t.numel()) * t.element_size();
}

// The header the reference writer produces: compact JSON, "__metadata__"
// first, then entries {"dtype","shape","data_offsets"} in the given order,
// padded with spaces so that the data starts at a multiple of 8.
std::string make_header(const NamedTensors& tensors, const Metadata& user_metadata) {
  Metadata metadata = user_metadata;
  metadata.emplace("format", "pt");  // a caller's "format" wins
  std::string h = "{\"__metadata__\":{";
  bool first = true;
  for (const auto& [k, v] : metadata) {
    if (!first) h += ',';
    first = false;
    h += nlohmann::json(k).dump() + ":" + nlohmann::json(v).dump();
  }
  h += "}";
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") throw Error("tensor name '__metadata__' is reserved");
    if (!seen.insert(name).second) throw Error("duplicate tensor name '" + name + "'");
    const uint64_t n = tensor_bytes(name, t);
    std::string dtype;
    try {
      dtype = dtype_name(t.scalar_type());
    } catch (const Error& e) {
      throw Error("tensor '" + name + "': ", e);
    }
    h += "," + nlohmann::json(name).dump() + ":{\"dtype\":\"" + dtype + "\",\"shape\":[";
    for (int64_t i = 0; i < t.dim(); ++i) h += (i ? "," : "") + std::to_string(t.size(i));
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + n) + "]}";
    offset += n;
  }
  h += "}";
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

void write_all(const NamedTensors& tensors, const Metadata& metadata, const Sink& sink) {
  const std::string header = make_header(tensors, metadata);
  uint8_t len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));  // little-endian
  sink(len, 8);
  sink(header.data(), header.size());
  for (const auto& [name, t] : tensors) {
    if (t.numel() == 0) continue;
    // One tensor at a time on the CPU, so a GPU state dict is never copied whole.
    at::Tensor c;
    try {
      c = t.device().is_cpu() ? t.contiguous() : t.to(at::kCPU).contiguous();
    } catch (const c10::Error& e) {  // e.g. a meta tensor, a device error
      throw Error("tensor '" + name + "': cannot copy to the CPU: " + e.what_without_backtrace());
    }
    sink(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  }
}

}  // namespace

std::string serialize(const NamedTensors& tensors, Metadata metadata) {
  std::string out;
  write_all(tensors, metadata,
            [&out](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); });
  return out;
}

void save_file(const NamedTensors& tensors, const std::string& path, Metadata metadata) {
  try {
    AtomicFile f(path);
    write_all(tensors, metadata, [&f](const void* p, size_t n) { f.write(p, n); });
    f.commit();
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.rfind(path, 0) == 0) throw;
    throw Error(path + ": ", e);
  }
}

// --- ShardedWriter --------------------------------------------------------------

ShardedWriter::ShardedWriter(std::string dir, uint64_t max_shard_bytes, std::string prefix,
                             Metadata metadata)
    : dir_(std::move(dir)),
      max_bytes_(max_shard_bytes),
      prefix_(std::move(prefix)),
      metadata_(std::move(metadata)) {
  if (max_bytes_ == 0) throw Error(dir_ + ": max shard size must be positive");
  if (!fs::is_directory(dir_)) throw Error(dir_ + ": not a directory", ErrorKind::kIo);
}

ShardedWriter::~ShardedWriter() {
  if (finished_) return;
  for (const auto& f : temp_files_) {
    std::error_code ec;
    fs::remove(f, ec);
  }
}

void ShardedWriter::add(const std::string& name, const at::Tensor& tensor) {
  if (finished_) throw Error(dir_ + ": ShardedWriter::add after finish", ErrorKind::kInternal);
  if (!seen_.emplace(name, true).second) {
    throw Error(dir_ + ": duplicate tensor name '" + name + "'");
  }
  const uint64_t n = tensor_bytes(name, tensor);
  // As transformers: a tensor that would tip the shard over starts a new one;
  // a tensor larger than the limit gets a shard of its own.
  if (!pending_.empty() && pending_bytes_ + n > max_bytes_) flush();
  pending_.emplace_back(name, tensor);
  pending_bytes_ += n;
  total_bytes_ += n;
  total_params_ += static_cast<uint64_t>(tensor.numel());
}

void ShardedWriter::make_room(uint64_t nbytes) {
  if (finished_) {
    throw Error(dir_ + ": ShardedWriter::make_room after finish", ErrorKind::kInternal);
  }
  if (!pending_.empty() && pending_bytes_ + nbytes > max_bytes_) flush();
}

void ShardedWriter::flush() {
  // Written under a temporary name: the final one needs the shard count.
  const std::string tmp = (fs::path(dir_) / ("." + prefix_ + ".shard" +
                                             std::to_string(temp_files_.size()) + ".partial"))
                              .string();
  save_file(pending_, tmp, metadata_);
  temp_files_.push_back(tmp);
  std::vector<std::string> names;
  for (const auto& [name, t] : pending_) names.push_back(name);
  names_per_shard_.push_back(std::move(names));
  pending_.clear();
  pending_bytes_ = 0;
}

std::vector<std::string> ShardedWriter::finish() {
  if (finished_) throw Error(dir_ + ": ShardedWriter::finish called twice", ErrorKind::kInternal);
  if (!pending_.empty() || temp_files_.empty()) flush();
  const size_t count = temp_files_.size();
  const fs::path dir(dir_);
  const std::string index_name = prefix_ + ".safetensors.index.json";
  std::vector<std::string> files;
  if (count == 1) {
    files.push_back(prefix_ + ".safetensors");
  } else {
    char buf[64];
    for (size_t i = 0; i < count; ++i) {
      std::snprintf(buf, sizeof buf, "-%05zu-of-%05zu.safetensors", i + 1, count);
      files.push_back(prefix_ + buf);
    }
  }
  // Shards of an earlier save that this one does not overwrite would be
  // picked up by loaders scanning the directory (transformers removes them too).
  const std::regex stale(
      std::regex_replace(prefix_, std::regex(R"([.^$|()\[\]{}*+?\\])"), R"(\$&)") +
      R"(-\d{5}-of-\d{5}\.safetensors)");
  const std::set<std::string> keep(files.begin(), files.end());
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (std::regex_match(f, stale) && keep.count(f) == 0) fs::remove(e.path());
  }
  for (size_t i = 0; i < count; ++i) {
    if (::rename(temp_files_[i].c_str(), (dir / files[i]).c_str()) != 0) {
      throw Error((dir / files[i]).string() + ": rename failed: " + std::strerror(errno),
                  ErrorKind::kIo);
    }
  }
  temp_files_.clear();
  finished_ = true;
  if (count == 1) {
    std::error_code ec;
    fs::remove(dir / index_name, ec);  // a stale index would shadow the new file
    fsync_dir(dir_);
    return files;
  }
  // transformers 5.x: {"metadata": {"total_parameters", "total_size"},
  // "weight_map"} with sorted keys, indent 2, trailing newline.
  nlohmann::json index;
  index["metadata"]["total_parameters"] = total_params_;
  index["metadata"]["total_size"] = total_bytes_;
  index["weight_map"] = nlohmann::json::object();
  for (size_t i = 0; i < count; ++i) {
    for (const auto& name : names_per_shard_[i]) index["weight_map"][name] = files[i];
  }
  write_json_atomic((dir / index_name).string(), index);  // also fsyncs the renames above
  files.push_back(index_name);
  return files;
}

// --- parse_size -------------------------------------------------------------------

uint64_t parse_size(const std::string& text) {
  const auto bad = [&text](const std::string& why) {
    return Error("invalid size \"" + text + "\": " + why +
                 " (examples: 5GB, 256MB, 500MiB, 1000000)");
  };
  size_t b = text.find_first_not_of(" \t");
  size_t e = text.find_last_not_of(" \t");
  if (b == std::string::npos) throw bad("empty");
  const std::string s = text.substr(b, e - b + 1);
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  const std::string number = s.substr(0, i);
  std::string unit = s.substr(i);
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  if (number.empty() || number == "." || std::count(number.begin(), number.end(), '.') > 1) {
    throw bad("no number");
  }
  std::string u;
  for (char c : unit) u += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::pair<const char*, long double> kUnits[] = {
      {"", 1},
      {"B", 1},
      {"KB", 1e3L},
      {"MB", 1e6L},
      {"GB", 1e9L},
      {"TB", 1e12L},
      {"KIB", 1024.0L},
      {"MIB", 1048576.0L},
      {"GIB", 1073741824.0L},
      {"TIB", 1099511627776.0L},
  };
  long double mult = -1;
  for (const auto& [name, m] : kUnits) {
    if (u == name) mult = m;
  }
  if (mult < 0) throw bad("unknown unit \"" + unit + "\"");
  if (number.find('.') != std::string::npos && u.empty()) throw bad("a byte count is an integer");
  const long double value = std::strtold(number.c_str(), nullptr) * mult;
  if (!(value < 18446744073709551616.0L)) throw bad("too large");
  return static_cast<uint64_t>(value);  // truncates as transformers' int()
}

}  // namespace loratune::io
