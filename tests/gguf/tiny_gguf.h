// tests/gguf/tiny_gguf.h — a tiny valid llama GGUF as an editable spec, so a
// test can break exactly one thing (a key, a count, an offset, a type) and
// rebuild the bytes.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "gguf/gguf_bytes.h"

namespace loratune::test {

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;  // innermost first
  uint32_t type = 0;         // ggml type id
  int64_t offset = -1;       // -1: the next aligned offset
  int64_t nbytes = -1;       // -1: the size the type and shape imply
  float base = 0.0f;         // F32 payload: base + 0.02 sin(...)
};

struct ModelSpec {
  uint32_t version = 3;
  std::vector<std::pair<std::string, std::string>> kvs;  // key, serialized kv pair
  std::vector<TensorSpec> tensors;
  int64_t n_tensors = -1, n_kv = -1;  // -1: the real counts
  size_t cut = 0;                     // bytes removed from the end
  uint64_t align = 32;

  void set(const std::string& key, const std::string& kv_bytes) {
    for (auto& [k, v] : kvs) {
      if (k == key) {
        v = kv_bytes;
        return;
      }
    }
    kvs.emplace_back(key, kv_bytes);
  }
  void erase(const std::string& key) {
    for (size_t i = 0; i < kvs.size(); ++i) {
      if (kvs[i].first == key) kvs.erase(kvs.begin() + static_cast<long>(i));
    }
  }
  TensorSpec* tensor(const std::string& name) {
    for (auto& t : tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
};

inline std::string kv_u32(const std::string& k, uint32_t v) {
  return GgufBytes().kv_u32(k, v).bytes();
}
inline std::string kv_f32(const std::string& k, float v) {
  return GgufBytes().kv_f32(k, v).bytes();
}
inline std::string kv_str(const std::string& k, const std::string& v) {
  return GgufBytes().kv_str(k, v).bytes();
}

inline uint64_t type_bytes(uint32_t type, uint64_t numel) {
  switch (type) {
    case 1:
    case 30:
      return numel * 2;
    case 2:
    case 20:
      return numel / 32 * 18;
    case 3:
      return numel / 32 * 20;
    case 8:
      return numel / 32 * 34;
    default:
      return numel * 4;
  }
}

// llama, 1 layer, hidden 32, 2 heads of 16, 1 kv head, ffn 32, vocab 4; F32.
inline ModelSpec tiny_llama() {
  ModelSpec m;
  m.set("general.architecture", kv_str("general.architecture", "llama"));
  m.set("llama.block_count", kv_u32("llama.block_count", 1));
  m.set("llama.context_length", kv_u32("llama.context_length", 64));
  m.set("llama.embedding_length", kv_u32("llama.embedding_length", 32));
  m.set("llama.feed_forward_length", kv_u32("llama.feed_forward_length", 32));
  m.set("llama.attention.head_count", kv_u32("llama.attention.head_count", 2));
  m.set("llama.attention.head_count_kv", kv_u32("llama.attention.head_count_kv", 1));
  m.set("llama.attention.layer_norm_rms_epsilon",
        kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f));
  m.set("llama.rope.freq_base", kv_f32("llama.rope.freq_base", 10000.0f));
  m.set("tokenizer.ggml.model", kv_str("tokenizer.ggml.model", "gpt2"));
  m.set("tokenizer.ggml.tokens",
        GgufBytes().kv_str_array("tokenizer.ggml.tokens", {"a", "b", "ab", "<s>"}).bytes());
  m.set("tokenizer.ggml.token_type",
        GgufBytes().kv_i32_array("tokenizer.ggml.token_type", {1, 1, 1, 3}).bytes());
  m.set("tokenizer.ggml.merges",
        GgufBytes().kv_str_array("tokenizer.ggml.merges", {"a b"}).bytes());
  m.set("tokenizer.ggml.bos_token_id", kv_u32("tokenizer.ggml.bos_token_id", 3));
  m.set("tokenizer.ggml.eos_token_id", kv_u32("tokenizer.ggml.eos_token_id", 3));
  m.tensors = {
      {"token_embd.weight", {32, 4}},      {"output_norm.weight", {32}},
      {"blk.0.attn_norm.weight", {32}},    {"blk.0.ffn_norm.weight", {32}},
      {"blk.0.attn_q.weight", {32, 32}},   {"blk.0.attn_k.weight", {32, 16}},
      {"blk.0.attn_v.weight", {32, 16}},   {"blk.0.attn_output.weight", {32, 32}},
      {"blk.0.ffn_gate.weight", {32, 32}}, {"blk.0.ffn_up.weight", {32, 32}},
      {"blk.0.ffn_down.weight", {32, 32}},
  };
  return m;
}

// tiny_llama as another architecture: every "llama." key renamed.
inline ModelSpec as_arch(ModelSpec m, const std::string& arch) {
  ModelSpec out;
  for (const auto& [k, v] : m.kvs) {
    if (k.rfind("llama.", 0) != 0) {
      out.kvs.emplace_back(k, v);
      continue;
    }
    const std::string key = arch + k.substr(5);
    // Re-serialize under the new key: the value bytes follow the old key's.
    const size_t old_len = 8 + k.size();  // u64 length + the key
    std::string kv = GgufBytes().str(key).bytes() + v.substr(old_len);
    out.kvs.emplace_back(key, kv);
  }
  out.kvs[0].second = kv_str("general.architecture", arch);
  out.tensors = m.tensors;
  return out;
}

// gemma2: tiny_llama's sizes with Gemma's four norms and its sliding window.
inline ModelSpec tiny_gemma2() {
  ModelSpec m = as_arch(tiny_llama(), "gemma2");
  m.set("gemma2.attention.sliding_window", kv_u32("gemma2.attention.sliding_window", 8));
  m.tensors.push_back({"blk.0.post_attention_norm.weight", {32}});
  m.tensors.push_back({"blk.0.post_ffw_norm.weight", {32}});
  return m;
}

// phi3: tiny_llama's sizes with fused attn_qkv ([q | k | v], 32 + 16 + 16 rows)
// and ffn_up ([gate | up], 2 x 32 rows).
inline ModelSpec tiny_phi3() {
  ModelSpec m = as_arch(tiny_llama(), "phi3");
  std::vector<TensorSpec> t;
  for (const auto& x : m.tensors) {
    if (x.name == "blk.0.attn_k.weight" || x.name == "blk.0.attn_v.weight" ||
        x.name == "blk.0.ffn_gate.weight") {
      continue;
    }
    if (x.name == "blk.0.attn_q.weight") {
      t.push_back({"blk.0.attn_qkv.weight", {32, 64}});
    } else if (x.name == "blk.0.ffn_up.weight") {
      t.push_back({"blk.0.ffn_up.weight", {32, 64}});
    } else {
      t.push_back(x);
    }
  }
  m.tensors = t;
  return m;
}

inline std::string build(const ModelSpec& m) {
  GgufBytes b;
  b.header(m.n_tensors >= 0 ? static_cast<uint64_t>(m.n_tensors) : m.tensors.size(),
           m.n_kv >= 0 ? static_cast<uint64_t>(m.n_kv) : m.kvs.size(), m.version);
  for (const auto& kv : m.kvs) b.raw(kv.second.data(), kv.second.size());
  uint64_t pos = 0;
  std::vector<uint64_t> sizes;
  for (const auto& t : m.tensors) {
    uint64_t numel = 1;
    for (uint64_t d : t.ne) numel *= d;
    const uint64_t n = t.nbytes >= 0 ? static_cast<uint64_t>(t.nbytes) : type_bytes(t.type, numel);
    pos = (pos + m.align - 1) / m.align * m.align;
    b.tensor(t.name, t.ne, t.type, t.offset >= 0 ? static_cast<uint64_t>(t.offset) : pos);
    sizes.push_back(n);
    pos += n;
  }
  b.pad(m.align);
  std::string data(pos, '\0');
  // F32 payload: small deterministic values so an imported model is finite.
  uint64_t p = 0;
  for (size_t i = 0; i < m.tensors.size(); ++i) {
    p = (p + m.align - 1) / m.align * m.align;
    if (m.tensors[i].type == 0) {
      for (uint64_t k = 0; k + 4 <= sizes[i]; k += 4) {
        const float v = m.tensors[i].base + 0.02f * std::sin(static_cast<float>(k + i));
        std::memcpy(&data[p + k], &v, 4);
      }
    }
    p += sizes[i];
  }
  std::string out = b.bytes() + data;
  out.resize(out.size() - std::min(m.cut, out.size()));
  return out;
}

}  // namespace loratune::test
