// trainer/io/sha256.h — SHA-256 (FIPS 180-4) of bytes and files.
//
// Used for the tokenized-data cache key (trainer/data) and for data-file
// digests in the exported model card. Streaming: update() any number of
// times, then digest() once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace loratune::io {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(const std::string& s) { update(s.data(), s.size()); }
  // The 32-byte digest. The object must not be updated afterwards.
  std::string digest();

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;  // bytes hashed
};

// Lower-case hex of bytes ("ab01...").
std::string to_hex(const std::string& bytes);
// Hex SHA-256 of `bytes`.
std::string sha256_hex(const std::string& bytes);
// Hex SHA-256 of the file at `path`, read in chunks; throws io::Error naming
// the path when it cannot be read.
std::string sha256_file_hex(const std::string& path);

}  // namespace loratune::io
