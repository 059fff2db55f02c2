// trainer/gguf/gguf.h — reading llama.cpp's GGUF files and importing them as
// Hugging Face model directories.
//
// Format (GGUF v2/v3, little-endian): "GGUF", u32 version, u64 tensor_count,
// u64 kv_count; kv_count pairs (string key, u32 value type, value); tensor_count
// infos (string name, u32 n_dims, u64 ne[n_dims] innermost first, u32 ggml
// type, u64 offset); padding to general.alignment (default 32); the data
// section. A string is u64 length + bytes; an array is u32 element type, u64
// count, elements (arrays may nest).
//
// GgufFile::open maps the file once (MAP_PRIVATE, see io/mmap.h) and checks
// everything before any value is kept: magic, version, counts against the
// bytes left, every string length and array count against the end of the
// file, value types, duplicate keys and tensor names, general.alignment (a
// power of two), dims (1..4, each > 0, no overflow), ggml types (known; the
// innermost dim a multiple of the block size), offsets (aligned, inside the
// data section, no two tensors overlapping). The parsed metadata is bounded
// (kResource past it): 65536 keys, 4M array elements in all, 256 MiB of
// memory. Errors are loratune::Error
// naming the file and the key or tensor: kCorrupt for a malformed file,
// kUnsupported for a valid one loratune cannot read (GGUF v1, a big-endian
// file, a quantization type it cannot dequantize, named).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "trainer/io/error.h"

namespace loratune::io {
class MappedFile;
}

namespace loratune::gguf {

// GGUF metadata value types (gguf_type), numbered as in the file.
enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
const char* value_type_name(ValueType t);

// One metadata value. Integers and bools are held in `i` (uint64 above
// INT64_MAX in `u` too), floats in `f`, strings in `s`, arrays in `array`
// with their element type in `elem_type`.
struct Value {
  ValueType type = ValueType::kUint8;
  ValueType elem_type = ValueType::kUint8;  // arrays only
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string s;
  std::vector<Value> array;
  bool is_integer() const;  // any of the eight integer types (not bool)
};

// ggml tensor types (ggml_type ids). Known ids have a block size and a byte
// size per block; only some can be dequantized (can_dequantize).
struct TypeTraits {
  uint32_t id;
  const char* name;
  int64_t block;        // elements per block
  int64_t block_bytes;  // bytes per block
  bool dequantizable;
};
// nullptr for an id ggml does not define (or removed).
const TypeTraits* type_traits(uint32_t id);

struct TensorInfo {
  std::string name;
  std::vector<int64_t> ne;     // ggml order: ne[0] is the innermost (row length)
  std::vector<int64_t> shape;  // PyTorch order: ne reversed
  uint32_t type = 0;
  const TypeTraits* traits = nullptr;
  uint64_t offset = 0;  // relative to the data section
  uint64_t nbytes = 0;
  int64_t numel() const;
};

class GgufFile {
 public:
  // Maps and validates `path` (see the file comment). Throws loratune::Error.
  static std::shared_ptr<GgufFile> open(const std::string& path);
  // Validates an in-memory image (tests, fuzzing); `name` stands for the path.
  static std::shared_ptr<GgufFile> parse(std::string bytes, const std::string& name);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of the data section
  // Keys in file order.
  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // file order

  const Value* find(const std::string& key) const;  // nullptr when absent
  const TensorInfo* find_tensor(const std::string& name) const;

  // Typed access to a required key: throws kCorrupt "<file>: metadata key
  // '<key>' is missing" or "... is <type>, expected <what>".
  int64_t get_int(const std::string& key) const;   // any integer type, fits int64
  double get_float(const std::string& key) const;  // float32/float64 (or an integer)
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  // An array of `elem`; throws when absent or of another element type.
  const std::vector<Value>& get_array(const std::string& key, ValueType elem) const;

  // Raw bytes of a tensor (valid while this object lives).
  const uint8_t* data(const TensorInfo& info) const;
  // The tensor dequantized to float32 in PyTorch shape (a fresh CPU tensor).
  // Throws kUnsupported naming the type for types that cannot be dequantized.
  at::Tensor dequantize(const TensorInfo& info) const;

 private:
  GgufFile() = default;
  void parse_all();
  std::string path_;
  std::shared_ptr<io::MappedFile> map_;
  std::string owned_;  // parse(): the image
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Dequantizes `n` elements (a multiple of the block size) of ggml type `type`
// from `src` into `dst`, exactly as ggml's dequantize_row_* and gguf-py's
// gguf.quants.dequantize compute them in float32. Throws kUnsupported for a
// type without a kernel here.
void dequantize_row(uint32_t type, const uint8_t* src, float* dst, int64_t n);

// --- Import: GGUF -> Hugging Face model directory ------------------------------

// A GGUF model as Hugging Face sees it: the architecture rules applied once.
struct HfModel {
  std::string model_type;              // HF model_type: "llama", "qwen2", "gemma3_text", ...
  std::string config_json;             // config.json text
  std::string generation_config_json;  // generation_config.json text
  // GGUF tensor name -> HF name, in file order; un-permute: rows to reorder
  // (llama Q/K) with the head count to use, 0 = none; minus_one: stored as
  // 1 + w (Gemma's norms).
  struct Entry {
    const TensorInfo* info;
    std::string hf_name;
    int64_t unpermute_heads;
    bool minus_one;
  };
  std::vector<Entry> entries;
};

// Maps architecture, config keys and tensor names (llama/mistral, qwen2,
// qwen3, gemma2, gemma3, phi3; see convert.cpp for what llama.cpp fixes). Throws kUnsupported for
// another architecture or an unknown tensor name, kCorrupt for missing keys or shapes that disagree
// with the config or values config.json cannot hold (a NaN/inf or negative
// epsilon, a rope.freq_base that is not > 0). `dtype` is written as
// config.json's "dtype".
HfModel map_model(const GgufFile& file, at::ScalarType dtype);

// The HF tensor for one entry: dequantized, un-permuted, 1 subtracted from
// Gemma's norms (in float32), cast to `dtype`.
at::Tensor hf_tensor(const GgufFile& file, const HfModel::Entry& e, at::ScalarType dtype);

// tokenizer.json and tokenizer_config.json text from the tokenizer.* keys
// (tokenizer.ggml.model "gpt2" or "llama" (SentencePiece); kUnsupported for
// others). Empty strings when
// the file has no tokenizer.ggml.model key. kCorrupt for what no tokenizer
// loader accepts: an empty, NUL-holding or non-UTF-8 token, a merge whose
// parts or result are not tokens; kResource for a chat template over 1 MiB.
struct HfTokenizer {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  std::string chat_template;  // "" when none (else chat_template.jinja)
};
HfTokenizer map_tokenizer(const GgufFile& file);

struct ImportOptions {
  std::string gguf_path;
  std::string out_dir;
  at::ScalarType dtype = at::kFloat;
  bool overwrite = false;
  uint64_t max_shard_bytes = 5'000'000'000;
};
// Writes out_dir atomically (io::AtomicDir): config.json,
// generation_config.json, model.safetensors (sharded past max_shard_bytes),
// tokenizer.json, tokenizer_config.json, chat_template.jinja.
void import_gguf(const ImportOptions& opt);

// --- A .gguf file as a model path (model.path, --model) ---------------------------

// True when `path` ends in ".gguf" (any case), whether or not it exists.
bool is_gguf_path(const std::string& path);

// Where imports of .gguf model paths live: $LORATUNE_CACHE/gguf, else
// $HOME/.cache/loratune/gguf. Throws kConfig when neither variable is set.
std::string gguf_cache_root();

// The import directory for `gguf_path`: gguf_cache_root()/<stem>-<16 hex
// digits of sha256(real path, size, mtime)>, so a file that changes gets a
// fresh import. Throws kIo when `gguf_path` is not a regular file.
std::string gguf_cache_dir(const std::string& gguf_path);

// The model directory `path` stands for: `path` itself unless it ends in
// .gguf; else gguf_cache_dir(path), imported there first (float32, written
// atomically; a concurrent import of the same file is accepted) when it holds
// no config.json yet. Prints one line on stderr saying where the import is.
// Throws what import_gguf throws.
std::string resolve_model_path(const std::string& path);

}  // namespace loratune::gguf
