// trainer/data/cache.cpp — the tokenized-data cache: key and file format.
//
// File layout (all integers little-endian):
//   magic        8 bytes  "LTDCACHE"
//   version      u32      kCacheVersion
//   key          32 bytes SHA-256 (cache_key)
//   records      u64      non-blank lines read
//   skipped      u64      malformed records skipped
//   n            u64      examples
//   lengths      u64 x n  tokens per example
//   input_ids    i32 x sum(lengths)
//   labels       i32 x sum(lengths)
//   checksum     32 bytes SHA-256 of everything above
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "trainer/data/detail.h"
#include "trainer/io/error.h"
#include "trainer/io/sha256.h"

namespace loratune::data::detail {
namespace {

// Bump whenever encoding rules change: old cache files then miss.
constexpr uint32_t kCacheVersion = 1;
const char kMagic[8] = {'L', 'T', 'D', 'C', 'A', 'C', 'H', 'E'};
constexpr size_t kHeader = 8 + 4 + 32 + 8 * 3;

// Files of a model directory that decide how text becomes ids.
const char* const kTokenizerFiles[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                       "special_tokens_map.json", "generation_config.json"};

void put_u64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void put_u32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

class Reader {
 public:
  Reader(const std::string& b, size_t end) : b_(b), end_(end) {}
  bool has(size_t n) const { return pos_ <= end_ && end_ - pos_ >= n; }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t(static_cast<unsigned char>(b_[pos_ + i])) << (8 * i);
    pos_ += 8;
    return v;
  }
  uint32_t u32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t(static_cast<unsigned char>(b_[pos_ + i])) << (8 * i);
    pos_ += 4;
    return v;
  }
  void ids(std::vector<int32_t>* out, size_t n) {
    out->resize(n);
    for (size_t i = 0; i < n; ++i) (*out)[i] = static_cast<int32_t>(u32());
  }
  std::string bytes(size_t n) {
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& b_;
  size_t end_;
  size_t pos_ = 0;
};

}  // namespace

std::string cache_key(const std::vector<std::string>& files, const config::DataConfig& cfg,
                      const std::string& template_source, const std::string& tokenizer_dir) {
  std::string desc = "loratune data cache v" + std::to_string(kCacheVersion) + "\n";
  desc += "format=" + config::to_string(cfg.format) + "\n";
  desc += "chat_template=" + cfg.chat_template + "\n";
  desc += "template_sha256=" + io::sha256_hex(template_source) + "\n";
  desc += "train_on_prompt=" + std::to_string(cfg.train_on_prompt) + "\n";
  desc += "allow_special_tokens=" + std::to_string(cfg.allow_special_tokens) + "\n";
  desc += "skip_malformed=" + std::to_string(cfg.skip_malformed) + "\n";
  for (const char* name : kTokenizerFiles) {
    std::filesystem::path p = std::filesystem::path(tokenizer_dir) / name;
    std::error_code ec;
    desc += std::string(name) + "=" +
            (std::filesystem::is_regular_file(p, ec) ? io::sha256_file_hex(p.string()) : "absent") +
            "\n";
  }
  for (const auto& f : files) {
    try {
      desc += "data=" + io::sha256_file_hex(f) + "\n";
    } catch (const Error& e) {
      // Missing or unreadable: the file system's answer (as read_files says).
      throw Error(std::string("data file: ") + e.what(),
                  e.kind() == ErrorKind::kConfig || e.kind() == ErrorKind::kCorrupt ? ErrorKind::kIo
                                                                                    : e.kind());
    }
  }
  io::Sha256 h;
  h.update(desc);
  return h.digest();
}

std::string encode_cache(const EncodedFiles& e, const std::string& key) {
  size_t total = 0;
  for (const auto& ex : e.examples) total += ex.input_ids.size();
  std::string out;
  out.reserve(kHeader + 8 * e.examples.size() + 8 * total + 32);
  out.append(kMagic, sizeof kMagic);
  put_u32(&out, kCacheVersion);
  out += key;
  put_u64(&out, static_cast<uint64_t>(e.records));
  put_u64(&out, static_cast<uint64_t>(e.skipped_malformed));
  put_u64(&out, e.examples.size());
  for (const auto& ex : e.examples) put_u64(&out, ex.input_ids.size());
  for (const auto& ex : e.examples) {
    for (int32_t id : ex.input_ids) put_u32(&out, static_cast<uint32_t>(id));
  }
  for (const auto& ex : e.examples) {
    for (int32_t id : ex.labels) put_u32(&out, static_cast<uint32_t>(id));
  }
  io::Sha256 h;
  h.update(out);
  out += h.digest();
  return out;
}

bool decode_cache(const std::string& bytes, const std::string& key, EncodedFiles* out,
                  std::string* why) {
  auto fail = [why](std::string reason) {
    *why = std::move(reason);
    return false;
  };
  if (bytes.size() < kHeader + 32) return fail("file too short");
  if (std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) return fail("bad magic");
  const size_t body = bytes.size() - 32;
  io::Sha256 h;
  h.update(bytes.data(), body);
  if (h.digest() != bytes.substr(body)) return fail("checksum mismatch");
  Reader r(bytes, body);
  r.bytes(sizeof kMagic);
  uint32_t version = r.u32();
  if (version != kCacheVersion) {
    return fail("version " + std::to_string(version) + ", expected " +
                std::to_string(kCacheVersion));
  }
  if (r.bytes(32) != key) return fail("key mismatch");
  EncodedFiles e;
  e.records = static_cast<int64_t>(r.u64());
  e.skipped_malformed = static_cast<int64_t>(r.u64());
  const uint64_t n = r.u64();
  if (n > body / 8 || !r.has(8 * n)) return fail("example count exceeds the file");
  std::vector<uint64_t> lengths(n);
  uint64_t total = 0;
  for (auto& len : lengths) {
    len = r.u64();
    if (len == 0 || len > body) return fail("bad example length");
    total += len;
  }
  if (total > body || r.pos() + 8 * total != body) return fail("sizes do not match the file");
  e.examples.resize(n);
  for (size_t i = 0; i < n; ++i) r.ids(&e.examples[i].input_ids, lengths[i]);
  for (size_t i = 0; i < n; ++i) r.ids(&e.examples[i].labels, lengths[i]);
  *out = std::move(e);
  return true;
}

}  // namespace loratune::data::detail
