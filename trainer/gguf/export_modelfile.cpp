// trainer/gguf/export_modelfile.cpp — the Ollama Modelfile written beside an
// exported GGUF: FROM the file, the tokenizer's end-of-sequence and
// end-of-turn tokens as stop parameters, no TEMPLATE (Ollama takes the
// chat template from the GGUF's tokenizer.chat_template).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "trainer/gguf/export.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace loratune::gguf {
namespace {

// End-of-turn tokens of the common chat formats (ChatML, Llama 3, Phi-3,
// Gemma): stops wherever the tokenizer has them.
const char* const kEndOfTurn[] = {"<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"};

// The ids of an "eos_token_id" value: one id, a list of ids, or null.
std::vector<int64_t> ids_of(const json& v, const std::string& where) {
  std::vector<int64_t> out;
  if (v.is_number_integer()) {
    out.push_back(v.get<int64_t>());
  } else if (v.is_array()) {
    for (const json& id : v) {
      if (!id.is_number_integer()) {
        throw Error(where + ": eos_token_id: expected token ids, got " + id.dump(),
                    ErrorKind::kCorrupt);
      }
      out.push_back(id.get<int64_t>());
    }
  } else if (!v.is_null()) {
    throw Error(where + ": eos_token_id: expected a token id or a list of them, got " + v.dump(),
                ErrorKind::kCorrupt);
  }
  return out;
}

// Ollama's parser reads a quoted value with backslash escapes.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

bool carriable(const std::string& s) {
  return !s.empty() && std::none_of(s.begin(), s.end(), [](char c) {
    return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
  });
}

}  // namespace

std::vector<std::string> stop_strings(const std::string& model_dir) {
  const fs::path dir(model_dir);
  const std::string tok_path = (dir / "tokenizer.json").string();
  std::error_code ec;
  if (!fs::is_regular_file(tok_path, ec)) {
    throw Error(model_dir + ": no tokenizer.json: the Modelfile's stop tokens come from it",
                ErrorKind::kIo);
  }
  const json tok = io::read_json(tok_path);
  // id -> text, for the added tokens and the vocabulary.
  std::map<int64_t, std::string> text;
  std::set<std::string> known;
  if (tok.contains("model") && tok["model"].is_object() && tok["model"].contains("vocab")) {
    const json& vocab = tok["model"]["vocab"];
    if (vocab.is_object()) {
      for (const auto& [t, id] : vocab.items()) {
        if (id.is_number_integer()) text[id.get<int64_t>()] = t;
        known.insert(t);
      }
    } else if (vocab.is_array()) {  // Unigram: [[piece, score], ...]
      for (size_t i = 0; i < vocab.size(); ++i) {
        if (vocab[i].is_array() && !vocab[i].empty() && vocab[i][0].is_string()) {
          text[static_cast<int64_t>(i)] = vocab[i][0].get<std::string>();
          known.insert(vocab[i][0].get<std::string>());
        }
      }
    }
  }
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array()) {
    for (const json& a : tok["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a.contains("content")) continue;
      if (!a["id"].is_number_integer() || !a["content"].is_string()) continue;
      text[a["id"].get<int64_t>()] = a["content"].get<std::string>();
      known.insert(a["content"].get<std::string>());
    }
  }

  std::vector<std::string> out;
  auto add = [&](const std::string& s) {
    if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
  };
  const fs::path cfg_path = dir / "tokenizer_config.json";
  if (fs::is_regular_file(cfg_path, ec)) {
    const json cfg = io::read_json(cfg_path.string());
    const json eos = cfg.value("eos_token", json(nullptr));
    if (eos.is_string()) add(eos.get<std::string>());
    if (eos.is_object() && eos.contains("content") && eos["content"].is_string())
      add(eos["content"].get<std::string>());
  }
  for (const char* name : {"generation_config.json", "config.json"}) {
    const fs::path p = dir / name;
    if (!fs::is_regular_file(p, ec)) continue;
    const json j = io::read_json(p.string());
    if (!j.is_object()) continue;
    for (int64_t id : ids_of(j.value("eos_token_id", json(nullptr)), p.string())) {
      auto it = text.find(id);
      if (it == text.end()) {
        throw Error(
            p.string() + ": eos_token_id " + std::to_string(id) + " is no token of " + tok_path,
            ErrorKind::kCorrupt);
      }
      add(it->second);
    }
  }
  for (const char* t : kEndOfTurn) {
    if (known.count(t)) add(t);
  }
  return out;
}

std::string modelfile_text(const std::string& from, const std::string& adapter,
                           const std::vector<std::string>& stops) {
  std::string s =
      "# Ollama Modelfile written by loratune: ollama create NAME -f Modelfile\n"
      "# No TEMPLATE: Ollama takes the prompt format from the GGUF's tokenizer.chat_template.\n";
  s += "FROM " + from + "\n";
  if (!adapter.empty()) s += "ADAPTER " + adapter + "\n";
  for (const std::string& stop : stops) {
    if (carriable(stop)) s += "PARAMETER stop " + quoted(stop) + "\n";
  }
  return s;
}

std::string modelfile_path(const std::string& gguf_path) {
  return (fs::path(gguf_path).parent_path() / "Modelfile").string();
}

std::string modelfile_base(const std::string& base) {
  std::error_code ec;
  const bool is_path = base.find('/') != std::string::npos || is_gguf_path(base) ||
                       fs::exists(fs::symlink_status(base, ec));
  return is_path ? fs::absolute(base).lexically_normal().string() : base;
}

std::string write_modelfile(const std::string& gguf_path, const std::string& base,
                            const std::vector<std::string>& stops) {
  const std::string self = "./" + fs::path(gguf_path).filename().string();
  const std::string path = modelfile_path(gguf_path);
  io::write_file_atomic(path, base.empty() ? modelfile_text(self, "", stops)
                                           : modelfile_text(modelfile_base(base), self, stops));
  return path;
}

}  // namespace loratune::gguf
