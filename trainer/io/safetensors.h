// trainer/io/safetensors.h — reading and writing the safetensors format.
//
// Format (see docs/formats.md, "safetensors"): u64 little-endian header length N, N bytes
// of UTF-8 JSON {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__":
// {str: str}}, then the data buffer. Offsets are relative to the buffer.
//
// Reading is zero-copy: a file is mmap'd once and tensors are CPU views of the
// mapping (at::from_blob with a deleter that holds the mapping alive), so a
// tensor outlives the SafetensorsFile object that produced it. The mapping is
// MAP_PRIVATE: writing into such a tensor copies the touched pages and never
// changes the file.
//
// Every check the reference reader does is done before any tensor is created,
// and more (safetensors_read.cpp). Errors throw io::Error whose
// message names the file and, where it applies, the tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "trainer/io/error.h"

namespace loratune::io {

class MappedFile;  // trainer/io/mmap.h

// One tensor's entry in a safetensors header.
struct TensorInfo {
  std::string name;
  std::string dtype;           // the safetensors spelling: "F32", "BF16", ...
  at::ScalarType scalar_type;  // its LibTorch type
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data buffer, [begin, end)
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

// Maps a safetensors dtype name to a LibTorch type; throws io::Error for names
// the format does not define or LibTorch cannot hold.
at::ScalarType scalar_type_from_name(const std::string& dtype);
// The inverse; throws for LibTorch types safetensors cannot store.
std::string dtype_name(at::ScalarType t);
// Size in bytes of one element of a safetensors dtype.
size_t dtype_size(const std::string& dtype);

// One open, validated .safetensors file.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws io::Error("<path>: <what>").
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return path_; }
  // Entries sorted by data offset (file order).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorInfo* find(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Zero-copy CPU tensor viewing the mapping. Throws io::Error if absent.
  at::Tensor tensor(const std::string& name) const;
  // Raw bytes of one entry (valid while any tensor or this object lives).
  const uint8_t* data(const TensorInfo& info) const;

  // Tells the kernel the pages of `info` are no longer needed in memory, so a
  // loader that has copied a tensor elsewhere (another dtype, a GPU) does not
  // keep both copies resident. Views of those pages stay valid (re-read).
  void release(const TensorInfo& info) const;

  uint64_t file_size() const;
  uint64_t header_size() const { return header_size_; }

  // Renames every tensor to `new_name(name)` in this object only (the file is
  // not touched), for readers of files saved under another naming scheme.
  // Throws io::Error(kCorrupt) naming both tensors when two map to one name.
  void rename(const std::function<std::string(const std::string&)>& new_name);

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::shared_ptr<MappedFile> map_;
  uint64_t header_size_ = 0;  // N
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

// A model's weights: one model.safetensors, or shards named by
// model.safetensors.index.json. Opening a directory prefers the index.
class Checkpoint {
 public:
  // `path` is a directory, a .safetensors file, or an index .json file.
  // Validates every shard and that the index and the shards agree (a shard
  // that is missing, a tensor the index names that its shard lacks, a tensor
  // in two shards). Throws io::Error naming the file and tensor.
  static Checkpoint open(const std::string& path);

  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  const SafetensorsFile& file_of(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;  // zero-copy view
  const std::vector<std::shared_ptr<SafetensorsFile>>& shards() const { return shards_; }
  uint64_t total_bytes() const;  // sum of tensor byte sizes

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> shards_;
  std::unordered_map<std::string, size_t> shard_of_;
};

using Metadata = std::map<std::string, std::string>;
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes one safetensors file atomically (temp file beside it, fsync, rename).
// Tensors may live on any device and be non-contiguous; they are written in
// the given order with the reference layout: header JSON padded with spaces to
// a multiple of 8 and "__metadata__": {"format": "pt"} merged into `metadata`.
// Duplicate names are an error.
void save_file(const NamedTensors& tensors, const std::string& path, Metadata metadata = {});

// Serialises the same bytes save_file would write (for tests and fuzzing).
std::string serialize(const NamedTensors& tensors, Metadata metadata = {});

// Writes a checkpoint shard by shard, holding at most one shard's tensors.
// With one shard the file is "<prefix>.safetensors" and no index is written
// (as transformers does); otherwise "<prefix>-00001-of-0000N.safetensors"
// plus "<prefix>.safetensors.index.json" with metadata.total_parameters,
// metadata.total_size and weight_map, as transformers 5.x writes it (sorted
// keys, indent 2). Shards are written under temp names and renamed in
// finish(); a stale index (one shard) or stale "<prefix>-NNNNN-of-NNNNN"
// shards of an earlier save in `dir` are removed. Shard boundaries follow
// transformers' rule, except that a tensor larger than the limit closes the
// current shard before taking one of its own (transformers keeps filling the
// current shard after it), so that at most one shard is held in memory.
class ShardedWriter {
 public:
  ShardedWriter(std::string dir, uint64_t max_shard_bytes, std::string prefix = "model",
                Metadata metadata = {});
  // Without finish(), removes the shards already written under temp names.
  ~ShardedWriter();
  ShardedWriter(const ShardedWriter&) = delete;
  ShardedWriter& operator=(const ShardedWriter&) = delete;
  // Queues a tensor; writes a shard to disk when the next tensor would not fit.
  void add(const std::string& name, const at::Tensor& tensor);
  // Writes the last shard, names the shards, writes the index. Returns the
  // file names written (relative to dir). Call once.
  std::vector<std::string> finish();
  // Writes the pending shard now if a tensor of `nbytes` would not fit in it
  // (the rule add() applies), so a caller about to materialise that tensor
  // never holds it and a full shard at once. add() of that tensor then
  // starts the next shard without writing.
  void make_room(uint64_t nbytes);
  // Tensors queued for the shard not yet written.
  size_t pending_count() const { return pending_.size(); }
  // Shards on disk so far (under temp names until finish()). A caller that
  // queued views of a mapping releases their pages when this grows.
  size_t shards_written() const { return temp_files_.size(); }

 private:
  void flush();
  std::string dir_;
  uint64_t max_bytes_;
  std::string prefix_;
  Metadata metadata_;
  NamedTensors pending_;
  uint64_t pending_bytes_ = 0;
  uint64_t total_bytes_ = 0;
  uint64_t total_params_ = 0;            // index metadata.total_parameters (sum of numel)
  std::vector<std::string> temp_files_;  // written shards, temp names
  std::vector<std::vector<std::string>> names_per_shard_;
  std::unordered_map<std::string, bool> seen_;
  bool finished_ = false;
};

// Parses a size such as "5GB", "256MB", "500MiB", "1000000" into bytes
// (decimal units as transformers' max_shard_size; KiB/MiB/GiB binary).
uint64_t parse_size(const std::string& text);

}  // namespace loratune::io
