// tests/gguf/gguf_bytes.h — builds GGUF images byte by byte, so tests can
// write valid files and lie in any field (corruption tables, unit tests).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace loratune::test {

class GgufBytes {
 public:
  // Appends raw little-endian values.
  GgufBytes& u8(uint8_t v) { return raw(&v, 1); }
  GgufBytes& u32(uint32_t v) { return raw(&v, 4); }
  GgufBytes& i32(int32_t v) { return raw(&v, 4); }
  GgufBytes& u64(uint64_t v) { return raw(&v, 8); }
  GgufBytes& f32(float v) { return raw(&v, 4); }
  GgufBytes& str(const std::string& s) {
    u64(s.size());
    return raw(s.data(), s.size());
  }
  GgufBytes& raw(const void* p, size_t n) {
    bytes_.append(static_cast<const char*>(p), n);
    return *this;
  }
  GgufBytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    raw("GGUF", 4);
    u32(version);
    u64(n_tensors);
    return u64(n_kv);
  }
  // Key/value helpers (value type ids as in the spec).
  GgufBytes& kv_u32(const std::string& k, uint32_t v) { return str(k).u32(4).u32(v); }
  GgufBytes& kv_f32(const std::string& k, float v) { return str(k).u32(6).f32(v); }
  GgufBytes& kv_str(const std::string& k, const std::string& v) { return str(k).u32(8).str(v); }
  GgufBytes& kv_bool(const std::string& k, bool v) { return str(k).u32(7).u8(v ? 1 : 0); }
  GgufBytes& kv_str_array(const std::string& k, const std::vector<std::string>& v) {
    str(k).u32(9).u32(8).u64(v.size());
    for (const auto& s : v) str(s);
    return *this;
  }
  GgufBytes& kv_i32_array(const std::string& k, const std::vector<int32_t>& v) {
    str(k).u32(9).u32(5).u64(v.size());
    for (int32_t x : v) i32(x);
    return *this;
  }
  GgufBytes& kv_f32_array(const std::string& k, const std::vector<float>& v) {
    str(k).u32(9).u32(6).u64(v.size());
    for (float x : v) f32(x);
    return *this;
  }
  // One tensor info: dims innermost first.
  GgufBytes& tensor(const std::string& name, const std::vector<uint64_t>& ne, uint32_t type,
                    uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) u64(d);
    return u32(type).u64(offset);
  }
  // Zero padding up to a multiple of `align`.
  GgufBytes& pad(size_t align = 32) {
    while (bytes_.size() % align != 0) bytes_.push_back('\0');
    return *this;
  }
  size_t size() const { return bytes_.size(); }
  const std::string& bytes() const { return bytes_; }
  std::string& mutable_bytes() { return bytes_; }

 private:
  std::string bytes_;
};

}  // namespace loratune::test
