// `loratune export-gguf` (trainer/gguf/export.h) on one tiny model per family
// carrying a real tokenizer, with a PEFT adapter (fixture gguf_export_models,
// tests/python/make_export_models.py):
//   - round trip: every tensor of the F32 export, read back by loratune's GGUF
//     reader (dequantized, Q/K un-permuted), is bitwise equal to the float32
//     model `loratune merge` writes; `loratune import` of it too (families
//     without llama3 rope: import refuses rope_freqs);
//   - gguf-py: the F32, Q8_0 (and F16/BF16 for two families) files and the
//     --adapter-only files are byte-identical to what gguf-py's GGUFWriter
//     writes from the same model (tests/python/check_gguf_export.py), and
//     llama.cpp's delta alpha/r * B @ A equals PEFT's;
//   - tokenizer: the tokenizer loratune's reader builds from the exported file
//     encodes the corpus as the original tokenizer.json does, and so does
//     transformers' GGUF tokenizer;
//   - fixed point: export-gguf of the file (a .gguf --model, imported) writes
//     the same tensors and metadata again;
//   - the command refuses what it must (existing output, output over an input,
//     bad options, a model without tokenizer.json, an unknown pre-tokenizer)
//     and leaves no file behind.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>
#include <sstream>

#include "common/test_env.h"
#include "trainer/gguf/export_detail.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/safetensors.h"
#include "trainer/tokenizer/tokenizer.h"

using nlohmann::json;
namespace fs = std::filesystem;
namespace t = loratune::test;
namespace gguf = loratune::gguf;

namespace {

std::string data_dir() {
  return t::testdata_dir() + "/gguf_export";
}
std::string model_dir(const std::string& f) {
  return data_dir() + "/models/" + f;
}
std::string adapter_dir(const std::string& f) {
  return data_dir() + "/adapters/" + f;
}
std::string bin() {
  return t::quote(t::loratune_bin());
}

// One scratch directory per family, with the float32 merge and the exports
// made once and shared by the tests of that family.
struct Family {
  std::string dir;
  std::map<std::string, std::string> files;  // "merged", "f32", "q8_0", ...
};

const Family& family(const std::string& name) {
  static std::map<std::string, Family> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  Family f;
  f.dir = t::make_temp_dir("gguf_export_" + name);
  const std::string m = t::quote(model_dir(name)), a = t::quote(adapter_dir(name));
  f.files["merged"] = f.dir + "/merged";
  auto r = t::run(bin() + " merge --model " + m + " --adapter " + a + " --out " +
                  f.files["merged"] + " --dtype float32");
  EXPECT_EQ(r.status, 0) << r.out;
  for (const char* type : {"f32", "q8_0", "f16", "bf16"}) {
    f.files[type] = f.dir + "/" + name + "." + type + ".gguf";
    r = t::run(bin() + " export-gguf --model " + m + " --adapter " + a + " --out " + f.files[type] +
               " --type " + type);
    EXPECT_EQ(r.status, 0) << r.out;
  }
  for (const char* type : {"f32", "q8_0"}) {
    const std::string key = std::string("lora.") + type;
    f.files[key] = f.dir + "/" + name + ".lora." + type + ".gguf";
    r = t::run(bin() + " export-gguf --model " + m + " --adapter " + a + " --adapter-only --out " +
               f.files[key] + " --type " + type);
    EXPECT_EQ(r.status, 0) << r.out;
  }
  return cache.emplace(name, f).first->second;
}

class GgufExport : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufExport, F32RoundTripIsBitwiseTheMergedModel) {
  const std::string name = GetParam();
  const Family& f = family(name);
  const auto merged = loratune::io::Checkpoint::open(f.files.at("merged"));
  const json config = json::parse(t::read_file(model_dir(name) + "/config.json"));
  auto file = gguf::GgufFile::open(f.files.at("f32"));
  const auto* arch = gguf::detail::find_arch(file->get_string("general.architecture"));
  ASSERT_NE(arch, nullptr);
  std::map<std::string, std::string> hf_of;  // GGUF name -> HF name
  for (const auto& n : merged.names()) hf_of[gguf::detail::gguf_tensor_name(*arch, n)] = n;

  size_t compared = 0;
  double worst = 0;
  for (const auto& info : file->tensors()) {
    SCOPED_TRACE(info.name);
    EXPECT_EQ(info.type, gguf::kGgmlF32);
    // rope factor tensors are checked against gguf-py below
    if (info.name.rfind("rope_f", 0) == 0) continue;
    ASSERT_TRUE(hf_of.count(info.name)) << "no merged tensor for " << info.name;
    int64_t heads = 0;
    if (arch->permute_qk && info.name.find(".attn_q.") != std::string::npos)
      heads = config["num_attention_heads"];
    if (arch->permute_qk && info.name.find(".attn_k.") != std::string::npos)
      heads = config["num_key_value_heads"];
    const bool plus_one = gguf::detail::stored_plus_one(*arch, info.name);
    const at::Tensor back =
        gguf::hf_tensor(*file, {&info, hf_of[info.name], heads, plus_one}, at::kFloat);
    const at::Tensor want = merged.tensor(hf_of[info.name]);
    ASSERT_EQ(back.sizes(), want.sizes());
    worst = std::max(worst, (back - want).abs().max().item<double>());
    if (plus_one) {
      // (w + 1) - 1 in float32 is w to half an ulp of 1.
      EXPECT_TRUE(back.allclose(want, 0, 6e-8)) << (back - want).abs().max().item<double>();
    } else {
      EXPECT_TRUE(back.equal(want));
    }
    ++compared;
  }
  // Every merged tensor is in the file, besides lm_head of a tied model.
  const size_t expected = merged.names().size() - (merged.contains("lm_head.weight") &&
                                                   config.value("tie_word_embeddings", false));
  EXPECT_EQ(compared, expected);
  std::printf(
      "%s: %zu tensors of the F32 GGUF read back by loratune, max abs diff to the "
      "merged model %.3g\n",
      name.c_str(), compared, worst);

  if (file->find_tensor("rope_freqs.weight") != nullptr) return;  // import refuses llama3 rope
  const std::string imported = f.dir + "/imported";
  auto r = t::run(bin() + " import " + t::quote(f.files.at("f32")) + " --out " + imported);
  ASSERT_EQ(r.status, 0) << r.out;
  const auto back = loratune::io::Checkpoint::open(imported);
  size_t equal = 0, near = 0;
  for (const auto& n : merged.names()) {
    if (n == "lm_head.weight" && config.value("tie_word_embeddings", false)) continue;
    ASSERT_TRUE(back.contains(n)) << n;
    if (gguf::detail::stored_plus_one(*arch, n)) {  // Gemma's norms: to half an ulp of 1
      near += back.tensor(n).allclose(merged.tensor(n), 0, 6e-8);
    } else {
      equal += back.tensor(n).equal(merged.tensor(n));
    }
  }
  EXPECT_EQ(equal + near, expected);
  std::printf(
      "%s: `loratune import` of the F32 GGUF: %zu/%zu tensors bitwise equal, %zu norms "
      "stored as 1 + w within 6e-8\n",
      name.c_str(), equal, expected, near);
}

TEST_P(GgufExport, FilesAreByteIdenticalToGgufPy) {
  const std::string name = GetParam();
  const Family& f = family(name);
  std::vector<std::string> types = {"f32", "q8_0"};
  if (name == "mistral" || name == "qwen2") types.insert(types.end(), {"f16", "bf16"});
  std::string files, adapters;
  for (const auto& type : types)
    files += " --gguf " + t::quote(f.files.at(type)) + " --type " + type;
  for (const char* type : {"f32", "q8_0"}) {
    adapters += " --gguf " + t::quote(f.files.at(std::string("lora.") + type)) + " --type " + type;
  }
  const std::string args =
      " --model " + t::quote(model_dir(name)) + " --adapter " + t::quote(adapter_dir(name));
  std::printf("%s",
              t::run_python("tests/python/check_gguf_export.py",
                            "model" + args + " --merged " + t::quote(f.files.at("merged")) + files)
                  .c_str());
  std::printf(
      "%s",
      t::run_python("tests/python/check_gguf_export.py", "adapter" + args + adapters).c_str());
}

// The corpus lines (JSON strings, one per line).
std::vector<std::string> corpus(const std::string& path) {
  std::vector<std::string> lines;
  std::istringstream in(t::read_file(path));
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

TEST_P(GgufExport, TokenizerFromTheFileMatchesTokenizerJson) {
  const std::string name = GetParam();
  const Family& f = family(name);
  auto file = gguf::GgufFile::open(f.files.at("f32"));
  const gguf::HfTokenizer hf = gguf::map_tokenizer(*file);
  const std::string dir = f.dir + "/tokenizer_from_gguf";
  fs::create_directories(dir);
  t::write_file(dir + "/tokenizer.json", hf.tokenizer_json);
  t::write_file(dir + "/tokenizer_config.json", hf.tokenizer_config_json);
  const auto ours = loratune::tokenizer::load_tokenizer(dir);
  const auto ref = loratune::tokenizer::load_tokenizer(model_dir(name));

  const json tok = json::parse(t::read_file(model_dir(name) + "/tokenizer.json"));
  // A GGUF carries no normalizer: Qwen's NFC is applied to the text first.
  const bool nfc = tok["normalizer"].is_object() && tok["normalizer"].value("type", "") == "NFC";
  const bool spm = tok["model"].value("byte_fallback", false);
  std::vector<std::string> specials;
  for (const auto& a : tok["added_tokens"]) {
    if (a.value("special", false)) specials.push_back(a["content"]);
  }
  loratune::tokenizer::EncodeOptions plain;
  plain.add_special_tokens = false;
  size_t checked = 0, equal = 0, set_aside = 0, tokens = 0;
  for (const auto& text : corpus(data_dir() + (nfc ? "/corpus.nfc.jsonl" : "/corpus.jsonl"))) {
    const bool same = ours->encode(text, plain) == ref->encode(text, plain) &&
                      ours->encode(text) == ref->encode(text);
    // A SentencePiece tokenizer read from a GGUF has no `legacy` flag: after
    // special-token text it does not add the space transformers' legacy mode adds.
    bool special = false;
    for (const auto& s : specials) special = special || text.find(s) != std::string::npos;
    if (spm && special) {
      ++set_aside;
      continue;
    }
    ++checked;
    equal += same;
    tokens += ref->encode(text, plain).size();
    if (!same && checked - equal <= 3) ADD_FAILURE() << "differs on " << json(text).dump();
  }
  EXPECT_EQ(equal, checked);
  EXPECT_GE(checked, 500u);
  std::printf(
      "%s: loratune's tokenizer from the GGUF equals tokenizer.json on %zu/%zu corpus lines "
      "(%zu tokens)%s, %zu lines with special-token text set aside\n",
      name.c_str(), equal, checked, tokens, nfc ? " (NFC text)" : "", set_aside);
  std::printf("%s", t::run_python("tests/python/check_gguf_export.py",
                                  "tokens --model " + t::quote(model_dir(name)) + " --gguf " +
                                      t::quote(f.files.at("f32")) + " --corpus " +
                                      t::quote(data_dir() + "/corpus.jsonl"))
                        .c_str());
}

bool same_value(const gguf::Value& a, const gguf::Value& b) {
  if (a.type != b.type || a.elem_type != b.elem_type || a.i != b.i || a.u != b.u || a.f != b.f ||
      a.s != b.s || a.array.size() != b.array.size()) {
    return false;
  }
  for (size_t k = 0; k < a.array.size(); ++k) {
    if (!same_value(a.array[k], b.array[k])) return false;
  }
  return true;
}

// GGUF -> (import) -> export-gguf gives the file back: every tensor byte for
// byte, every metadata key (the tokenizer rebuilt from its tokenizer.json
// included) but general.name, plus the add_eos_token = false the import's
// tokenizer_config.json states; SentencePiece scores may be renumbered where
// the import's derived merges break a tie differently, in the same order.
TEST_P(GgufExport, ExportOfTheImportIsTheSameFile) {
  const std::string name = GetParam();
  const Family& f = family(name);
  auto first = gguf::GgufFile::open(f.files.at("f32"));
  const std::string again = f.dir + "/again.gguf";
  if (first->find_tensor("rope_freqs.weight") != nullptr) {
    // import cannot express llama3 rope factors in config.json (yet): it refuses.
    auto r = t::run(bin() + " import " + t::quote(f.files.at("f32")) + " --out " + f.dir + "/x");
    EXPECT_EQ(r.status, 6) << r.out;
    EXPECT_NE(r.out.find("rope_freqs.weight"), std::string::npos) << r.out;
    return;
  }
  auto r = t::run("LORATUNE_CACHE=" + t::quote(f.dir + "/cache") + " " + bin() +
                  " export-gguf --model " + t::quote(f.files.at("f32")) + " --out " + again +
                  " --type f32");
  ASSERT_EQ(r.status, 0) << r.out;
  auto second = gguf::GgufFile::open(again);
  size_t same = 0;
  for (const auto& [key, value] : second->metadata()) {
    const gguf::Value* v = first->find(key);
    if (v == nullptr) {
      EXPECT_EQ(key, "tokenizer.ggml.add_eos_token");
      EXPECT_EQ(value.i, 0) << key;
      continue;
    }
    if (key == "general.name") continue;
    if (key == "tokenizer.ggml.scores" && !same_value(*v, value)) {
      // The import derives merges from the scores (transformers'
      // generate_merges), which may order a tie differently from the
      // original merges, renumbering a token's rank; llama.cpp only compares
      // scores, so the order they put the vocabulary in must not change.
      ASSERT_EQ(v->array.size(), value.array.size());
      std::vector<size_t> a(v->array.size()), b(a.size());
      std::iota(a.begin(), a.end(), 0);
      std::iota(b.begin(), b.end(), 0);
      auto by = [](const gguf::Value& s) {
        return [&s](size_t x, size_t y) {
          return s.array[x].f != s.array[y].f ? s.array[x].f > s.array[y].f : x < y;
        };
      };
      std::stable_sort(a.begin(), a.end(), by(*v));
      std::stable_sort(b.begin(), b.end(), by(value));
      size_t renumbered = 0;
      for (size_t k = 0; k < a.size(); ++k) renumbered += v->array[k].f != value.array[k].f;
      EXPECT_TRUE(a == b) << "the scores order the vocabulary differently after import";
      std::printf("%s: tokenizer.ggml.scores: %zu of %zu renumbered, same order\n", name.c_str(),
                  renumbered, a.size());
      same += a == b;
      continue;
    }
    EXPECT_TRUE(same_value(*v, value)) << key;
    same += same_value(*v, value);
  }
  for (const auto& [key, value] : first->metadata()) EXPECT_NE(second->find(key), nullptr) << key;
  ASSERT_EQ(first->tensors().size(), second->tensors().size());
  size_t equal = 0;
  for (const auto& info : first->tensors()) {
    const gguf::TensorInfo* b = second->find_tensor(info.name);
    ASSERT_NE(b, nullptr) << info.name;
    equal += b->nbytes == info.nbytes && b->type == info.type &&
             std::memcmp(first->data(info), second->data(*b), info.nbytes) == 0;
  }
  EXPECT_EQ(equal, first->tensors().size());
  std::printf("%s: export of the import: %zu/%zu tensors and %zu metadata keys the same\n",
              name.c_str(), equal, first->tensors().size(), same);
}

INSTANTIATE_TEST_SUITE_P(Families, GgufExport,
                         ::testing::Values("llama3", "mistral", "qwen2", "qwen3", "gemma2",
                                           "gemma3", "phi3", "phi4mini"));

// A multimodal Gemma 3 (Gemma3ForConditionalGeneration, fixture gemma3mm: the
// gemma3 model's language model with a SigLIP tower, and gemma3's adapter as
// PEFT names it on that model) exports its language model: the same files,
// byte for byte, as the text-only model gives (which the llama.cpp test runs
// at parity): the base, the base with the adapter merged, the adapter GGUF.
TEST(GgufExportMultimodal, Gemma3ExportsItsLanguageModelAsTheTextModel) {
  const std::string dir = t::make_temp_dir("gguf_export_mm");
  for (const std::string kind : {"base", "merged", "adapter"}) {
    SCOPED_TRACE(kind);
    std::vector<std::string> bytes;
    for (const std::string m : {"gemma3", "gemma3mm"}) {
      const std::string out = dir + "/" + m + "." + kind + ".gguf";
      std::string args = " --type q8_0";
      if (kind != "base") args += " --adapter " + t::quote(adapter_dir(m));
      if (kind == "adapter")
        args = " --type f32 --adapter-only --adapter " + t::quote(adapter_dir(m));
      auto r = t::run(bin() + " export-gguf --model " + t::quote(model_dir(m)) + " --out " + out +
                      args + " --name gemma3");
      ASSERT_EQ(r.status, 0) << r.out;
      bytes.push_back(t::read_file(out));
    }
    EXPECT_GT(bytes[0].size(), 10000u);
    EXPECT_TRUE(bytes[0] == bytes[1]) << "the multimodal model's " << kind << " GGUF differs";
    std::printf("gemma3mm: %s GGUF of the multimodal model = the text model's (%zu bytes)\n",
                kind.c_str(), bytes[1].size());
  }
}

// --- What the command refuses ----------------------------------------------------

// Runs export-gguf with `args` and returns its result.
t::RunResult export_gguf(const std::string& args) {
  return t::run(bin() + " export-gguf " + args);
}

// No file (nor temp file) named after `out` exists in its directory.
void expect_nothing_written(const std::string& out) {
  const fs::path p(out);
  for (const auto& e : fs::directory_iterator(p.parent_path())) {
    EXPECT_NE(e.path().filename().string().rfind(p.filename().string(), 0), 0u)
        << "left behind: " << e.path();
  }
}

TEST(GgufExportCli, RefusesWhatItMust) {
  const std::string dir = t::make_temp_dir("gguf_export_cli");
  const std::string m = t::quote(model_dir("qwen3"));
  const std::string out = dir + "/out.gguf";

  auto r = export_gguf("--model " + m + " --out " + out + " --type q4_k");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("--type: 'q4_k' is not a GGUF type"), std::string::npos) << r.out;
  r = export_gguf("--model " + m + " --out " + out + " --type q8");
  EXPECT_NE(r.out.find("did you mean 'q8_0'?"), std::string::npos) << r.out;
  r = export_gguf("--model " + m + " --out " + out + " --adapter-only");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("--adapter-only needs --adapter"), std::string::npos) << r.out;
  r = export_gguf("--model " + m + " --out " + t::quote(model_dir("qwen3") + "/x.gguf"));
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("--out"), std::string::npos) << r.out;
  expect_nothing_written(out);

  r = export_gguf("--model " + m + " --out " + out + " --type q8_0");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto size = fs::file_size(out);
  r = export_gguf("--model " + m + " --out " + out + " --type f32");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("already exists (pass --overwrite"), std::string::npos) << r.out;
  EXPECT_EQ(fs::file_size(out), size);
  r = export_gguf("--model " + m + " --out " + out + " --type f32 --overwrite");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_GT(fs::file_size(out), size);
}

TEST(GgufExportCli, RefusesTokenizersItCannotCarry) {
  const std::string dir = t::make_temp_dir("gguf_export_tok");
  const std::string m = dir + "/model";
  fs::copy(model_dir("qwen3"), m);
  const std::string out = dir + "/out.gguf";

  // No tokenizer.json: kIo (exit 4), nothing written.
  fs::rename(m + "/tokenizer.json", dir + "/tokenizer.json");
  auto r = export_gguf("--model " + m + " --out " + out);
  EXPECT_EQ(r.status, 4) << r.out;
  EXPECT_NE(r.out.find("tokenizer.json: no such file"), std::string::npos) << r.out;
  expect_nothing_written(out);

  // A pre-tokenizer llama.cpp has no name for: kUnsupported (exit 6).
  json tok = json::parse(t::read_file(dir + "/tokenizer.json"));
  tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+|\\w+";
  t::write_file(m + "/tokenizer.json", tok.dump());
  r = export_gguf("--model " + m + " --out " + out);
  EXPECT_EQ(r.status, 6) << r.out;
  EXPECT_NE(r.out.find("has no llama.cpp pre-tokenizer name"), std::string::npos) << r.out;
  expect_nothing_written(out);

  // A token id past the embedding: kCorrupt (exit 5).
  tok = json::parse(t::read_file(dir + "/tokenizer.json"));
  tok["added_tokens"][0]["id"] = 10000000;
  t::write_file(m + "/tokenizer.json", tok.dump());
  r = export_gguf("--model " + m + " --out " + out);
  EXPECT_EQ(r.status, 5) << r.out;
  EXPECT_NE(r.out.find("outside the model's"), std::string::npos) << r.out;
  expect_nothing_written(out);
}

}  // namespace
