// tests/fuzz/fuzz_util.h — helpers shared by the libFuzzer targets.
//
// Each target feeds the bytes to one real parser and catches loratune::Error
// only (the parser's documented rejection). Any other exception escapes and
// aborts the process, which libFuzzer reports as a crash, as it does every
// sanitizer report, leak, timeout and out-of-memory.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace loratune::fuzz {

// A directory private to this process (libFuzzer may run several jobs),
// created on first use: /tmp/loratune-fuzz-<tag>-<pid>.
inline const std::string& temp_dir(const std::string& tag) {
  static const std::string dir = [&] {
    std::string d = "/tmp/loratune-fuzz-" + tag + "-" + std::to_string(::getpid());
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

// Writes `size` bytes to `path` (replacing it); aborts when it cannot, since
// a harness that silently tests nothing is worse than one that stops.
inline void write_file(const std::string& path, const void* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(data, 1, size, f) != size || std::fclose(f) != 0) {
    std::fprintf(stderr, "fuzz harness: cannot write %s\n", path.c_str());
    std::abort();
  }
}

inline void write_file(const std::string& path, const std::string& text) {
  write_file(path, text.data(), text.size());
}

// A small valid byte-level BPE tokenizer.json: the 256 byte symbols of GPT-2's
// byte-to-unicode map (ids 0..255), the merge "a b" -> "ab" (256), and the
// special added tokens <s> 257, </s> 258, <|im_start|> 259, <|im_end|> 260.
// Any UTF-8 text encodes without an unknown token.
inline std::string byte_level_tokenizer_json() {
  using Json = nlohmann::ordered_json;
  Json vocab = Json::object();
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool kept = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    const int cp = kept ? b : next++;
    std::string s;  // UTF-8 of cp (< 0x800)
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    vocab[s] = b;
  }
  vocab["ab"] = 256;
  Json added = Json::array();
  int id = 257;
  for (const char* t : {"<s>", "</s>", "<|im_start|>", "<|im_end|>"}) {
    added.push_back({{"id", id++},
                     {"content", t},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const Json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", true}};
  Json j = {{"version", "1.0"},
            {"added_tokens", added},
            {"normalizer", nullptr},
            {"pre_tokenizer", byte_level}};
  j["post_processor"] = Json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [257], "tokens": ["<s>"]}}})");
  j["decoder"] = byte_level;
  j["model"] = {{"type", "BPE"},     {"dropout", nullptr},     {"unk_token", nullptr},
                {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab},
                {"merges", {"a b"}}};
  return j.dump();
}

// tokenizer_config.json for it: PreTrainedTokenizerFast with bos/eos/pad and
// a ChatML chat template.
inline std::string byte_level_tokenizer_config() {
  nlohmann::ordered_json j = {
      {"tokenizer_class", "PreTrainedTokenizerFast"},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"},
      {"pad_token", "</s>"},
      {"chat_template",
       "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
       "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt "
       "%}{{ '<|im_start|>assistant\n' }}{% endif %}"}};
  return j.dump();
}

}  // namespace loratune::fuzz
