// output.gguf (trainer/config/config.h) and the Ollama Modelfile
// (trainer/gguf/export.h) on the tiny models of fixture gguf_export_models:
//   - a training run with output.gguf {type: f32, adapter: true} ends with
//     model.f32.gguf and adapter.gguf whose metadata and tensors are bitwise
//     what `loratune export-gguf` writes from the run's adapter, and a
//     Modelfile FROM the file with the tokenizer's stop tokens, no TEMPLATE;
//   - an unknown output.gguf.type is refused with a did-you-mean, and a model
//     the export cannot carry (no tokenizer.json) before the first step;
//   - stop strings of each fixture tokenizer and of a synthetic one (eos ids
//     as a list, eos_token as an object, end-of-turn tokens), quoting;
//   - `export-gguf --modelfile` / `--modelfile-base` and what they refuse.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>

#include "common/test_env.h"
#include "trainer/gguf/export.h"
#include "trainer/gguf/gguf.h"

namespace fs = std::filesystem;
namespace t = loratune::test;
namespace gguf = loratune::gguf;

namespace {

std::string model_dir(const std::string& f) {
  return t::testdata_dir() + "/gguf_export/models/" + f;
}
std::string adapter_dir(const std::string& f) {
  return t::testdata_dir() + "/gguf_export/adapters/" + f;
}
std::string bin() {
  return t::quote(t::loratune_bin());
}

// A few lines of plain text to train on.
std::string write_text_data(const std::string& dir) {
  const std::string path = dir + "/train.jsonl";
  std::string text;
  for (int i = 0; i < 16; ++i) {
    text += "{\"text\": \"Example " + std::to_string(i) +
            ": the battery charges at noon and discharges in the evening.\"}\n";
  }
  t::write_file(path, text);
  return path;
}

// A training config of a few CPU steps on `model` with `data` (format
// `format`), with `output` appended to the output map.
std::string write_config(const std::string& dir, const std::string& model, const std::string& data,
                         const std::string& format, const std::string& output) {
  const std::string path = dir + "/cfg.yaml";
  t::write_file(path, "model: {path: " + model +
                          ", dtype: float32}\n"
                          "device: cpu\nseed: 5\n"
                          "lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj, "
                          "up_proj]}\n"
                          "data: {train: " +
                          data + ", format: " + format +
                          ", max_seq_len: 32}\n"
                          "train: {max_steps: 3, micro_batch_size: 2, optimizer: {lr: 1.0e-2}}\n"
                          "output: {dir: " +
                          dir + "/run" + output + "}\n");
  return path;
}

t::RunResult train(const std::string& config, const std::string& args = "") {
  return t::run(bin() + " train --plain " + t::quote(config) + " " + args + " 2>&1");
}

// Every metadata key and tensor (name, type, shape, bytes) of two GGUF files
// is the same.
void expect_same_gguf(const std::string& got_path, const std::string& want_path) {
  SCOPED_TRACE(got_path + " vs " + want_path);
  auto got = gguf::GgufFile::open(got_path);
  auto want = gguf::GgufFile::open(want_path);
  ASSERT_EQ(got->metadata().size(), want->metadata().size());
  for (size_t i = 0; i < got->metadata().size(); ++i) {
    const auto& [k, v] = got->metadata()[i];
    EXPECT_EQ(k, want->metadata()[i].first);
    const gguf::Value& w = want->metadata()[i].second;
    EXPECT_EQ(static_cast<int>(v.type), static_cast<int>(w.type)) << k;
    EXPECT_EQ(v.s, w.s) << k;
    EXPECT_EQ(v.i, w.i) << k;
    EXPECT_EQ(v.f, w.f) << k;
    EXPECT_EQ(v.array.size(), w.array.size()) << k;
  }
  ASSERT_EQ(got->tensors().size(), want->tensors().size());
  size_t same = 0;
  for (size_t i = 0; i < got->tensors().size(); ++i) {
    const gguf::TensorInfo& a = got->tensors()[i];
    const gguf::TensorInfo& b = want->tensors()[i];
    SCOPED_TRACE(a.name);
    ASSERT_EQ(a.name, b.name);
    ASSERT_EQ(a.type, b.type);
    ASSERT_EQ(a.shape, b.shape);
    ASSERT_EQ(a.nbytes, b.nbytes);
    same += std::memcmp(got->data(a), want->data(b), a.nbytes) == 0;
  }
  EXPECT_EQ(same, got->tensors().size()) << "tensors differ bitwise";
  EXPECT_EQ(t::read_file(got_path), t::read_file(want_path)) << "the files differ";
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// The values of the `PARAMETER stop` lines, unquoted.
std::vector<std::string> stop_lines(const std::string& modelfile) {
  std::vector<std::string> out;
  for (const std::string& l : lines_of(modelfile)) {
    const std::string p = "PARAMETER stop \"";
    if (l.rfind(p, 0) == 0 && l.back() == '"')
      out.push_back(l.substr(p.size(), l.size() - p.size() - 1));
  }
  return out;
}

bool has_line_starting(const std::string& text, const std::string& prefix) {
  for (const std::string& l : lines_of(text)) {
    if (l.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

TEST(TrainGgufExport, RunWritesTheExportOfItsAdapterAndAModelfile) {
  const std::string dir = t::make_temp_dir("train_gguf");
  const std::string cfg = write_config(dir, model_dir("qwen2"), write_text_data(dir), "text",
                                       ", gguf: {type: f32, adapter: true}");
  auto r = train(cfg);
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string run = dir + "/run";
  for (const char* f :
       {"adapter/adapter_model.safetensors", "model.f32.gguf", "adapter.gguf", "Modelfile"}) {
    EXPECT_TRUE(fs::exists(run + "/" + f)) << f << "\n" << r.out;
  }
  // Nothing else (no temp file of the atomic writes is left).
  const std::set<std::string> expected = {"adapter",     "checkpoints",    "metrics.jsonl",
                                          "config.yaml", "model.f32.gguf", "adapter.gguf",
                                          "Modelfile",   "cache",          ".loratune.lock"};
  for (const auto& e : fs::directory_iterator(run)) {
    EXPECT_TRUE(expected.count(e.path().filename().string())) << e.path();
  }
  EXPECT_NE(t::read_file(run + "/config.yaml").find("gguf:\n    type: f32\n    adapter: true"),
            std::string::npos)
      << t::read_file(run + "/config.yaml");

  // What export-gguf writes from the same adapter.
  const std::string ref = dir + "/ref";
  auto e = t::run(bin() + " export-gguf --model " + t::quote(model_dir("qwen2")) + " --adapter " +
                  run + "/adapter --type f32 --modelfile --out " + ref + "/model.f32.gguf 2>&1");
  ASSERT_EQ(e.status, 0) << e.out;
  expect_same_gguf(run + "/model.f32.gguf", ref + "/model.f32.gguf");
  e = t::run(bin() + " export-gguf --model " + t::quote(model_dir("qwen2")) + " --adapter " + run +
             "/adapter --adapter-only --out " + ref + "/adapter.gguf 2>&1");
  ASSERT_EQ(e.status, 0) << e.out;
  expect_same_gguf(run + "/adapter.gguf", ref + "/adapter.gguf");
  EXPECT_EQ(t::read_file(run + "/Modelfile"), t::read_file(ref + "/Modelfile"));

  // The trained adapter is in it: an adapted weight differs from the base's.
  e = t::run(bin() + " export-gguf --model " + t::quote(model_dir("qwen2")) + " --type f32 --out " +
             ref + "/base.f32.gguf 2>&1");
  ASSERT_EQ(e.status, 0) << e.out;
  auto merged = gguf::GgufFile::open(run + "/model.f32.gguf");
  auto base = gguf::GgufFile::open(ref + "/base.f32.gguf");
  const gguf::TensorInfo* mq = merged->find_tensor("blk.0.attn_q.weight");
  const gguf::TensorInfo* bq = base->find_tensor("blk.0.attn_q.weight");
  ASSERT_TRUE(mq != nullptr && bq != nullptr);
  EXPECT_NE(std::memcmp(merged->data(*mq), base->data(*bq), mq->nbytes), 0)
      << "the merged q_proj equals the base's: the adapter was not merged";
  const gguf::TensorInfo* mk = merged->find_tensor("blk.0.attn_k.weight");
  const gguf::TensorInfo* bk = base->find_tensor("blk.0.attn_k.weight");
  ASSERT_TRUE(mk != nullptr && bk != nullptr);
  EXPECT_EQ(std::memcmp(merged->data(*mk), base->data(*bk), mk->nbytes), 0) << "k_proj not adapted";

  const std::string mf = t::read_file(run + "/Modelfile");
  EXPECT_TRUE(has_line_starting(mf, "FROM ./model.f32.gguf")) << mf;
  EXPECT_EQ(stop_lines(mf), std::vector<std::string>{"<|im_end|>"}) << mf;
  EXPECT_FALSE(has_line_starting(mf, "TEMPLATE")) << mf;
  EXPECT_NE(mf.find("# No TEMPLATE"), std::string::npos) << mf;
}

TEST(TrainGgufExport, UnknownTypeIsRefusedWithDidYouMean) {
  const std::string dir = t::make_temp_dir("train_gguf_q4");
  const std::string cfg =
      write_config(dir, model_dir("qwen2"), write_text_data(dir), "text", ", gguf: {type: q4}");
  auto r = train(cfg);
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("output.gguf.type: 'q4' is not one of none, f32, f16, bf16, q8_0 (did you "
                       "mean 'q8_0'?)"),
            std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(dir + "/run")) << r.out;
  // As an override too.
  const std::string ok = write_config(dir, model_dir("qwen2"), dir + "/train.jsonl", "text", "");
  r = train(ok, "output.gguf.type=Q8_0");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("override 'output.gguf.type=Q8_0': output.gguf.type: 'Q8_0' is not one of "
                       "none, f32, f16, bf16, q8_0 (did you mean 'q8_0'?)"),
            std::string::npos)
      << r.out;
}

// A copy of the qwen2 model without its tokenizer files trains on
// pre-tokenized data, but has nothing the GGUF's tokenizer.* keys could come
// from: output.gguf.type is refused before the first step, while
// output.gguf.adapter alone (no tokenizer in an adapter GGUF) goes through.
TEST(TrainGgufExport, UnexportableModelIsRefusedBeforeTraining) {
  const std::string dir = t::make_temp_dir("train_gguf_notok");
  const std::string model = dir + "/model";
  fs::create_directories(model);
  for (const char* f : {"config.json", "generation_config.json"}) {
    fs::copy_file(model_dir("qwen2") + "/" + f, model + "/" + f);
  }
  fs::create_symlink(fs::absolute(model_dir("qwen2") + "/model.safetensors"),
                     model + "/model.safetensors");
  std::string data;
  for (int i = 0; i < 8; ++i) {
    data += "{\"input_ids\": [" + std::to_string(100 + i) + ", 2000, 3000, 4000, 151645]}\n";
  }
  t::write_file(dir + "/tok.jsonl", data);
  const std::string cfg =
      write_config(dir, model, dir + "/tok.jsonl", "tokenized", ", gguf: {type: f16}");
  auto r = train(cfg);
  EXPECT_NE(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("output.gguf.type=f16: this model cannot be written as GGUF after training"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("tokenizer.json"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("loratune: training"), std::string::npos) << "it trained first:\n" << r.out;
  EXPECT_FALSE(fs::exists(dir + "/run/metrics.jsonl"));

  r = train(cfg, "output.gguf.type=none output.gguf.adapter=true");
  ASSERT_EQ(r.status, 0) << r.out;
  auto a = gguf::GgufFile::open(dir + "/run/adapter.gguf");
  EXPECT_EQ(a->get_string("general.type"), "adapter");
  EXPECT_EQ(a->tensors().size(), 3u * 3u * 2u);  // 3 layers x (q, v, up) x (A, B)
  EXPECT_FALSE(fs::exists(dir + "/run/Modelfile"));
}

TEST(ExportModelfile, StopStringsOfTheFixtureTokenizers) {
  EXPECT_EQ(gguf::stop_strings(model_dir("qwen2")), std::vector<std::string>{"<|im_end|>"});
  EXPECT_EQ(gguf::stop_strings(model_dir("llama3")), std::vector<std::string>{"<|eot_id|>"});
  EXPECT_EQ(gguf::stop_strings(model_dir("mistral")), std::vector<std::string>{"</s>"});
}

// eos_token as an object, eos ids as a list, end-of-turn tokens of the
// vocabulary, each once and in that order; a missing id is an error.
TEST(ExportModelfile, StopStringsFromEosIdsAndEndOfTurnTokens) {
  const std::string dir = t::make_temp_dir("modelfile_stops");
  t::write_file(dir + "/tokenizer.json",
                R"({"model": {"type": "BPE", "vocab": {"a": 0, "<end_of_turn>": 1, "</s>": 2}},
                    "added_tokens": [{"id": 3, "content": "<|im_end|>"},
                                     {"id": 4, "content": "<|endoftext|>"}]})");
  t::write_file(dir + "/tokenizer_config.json",
                R"({"eos_token": {"content": "<|endoftext|>", "special": true}})");
  t::write_file(dir + "/generation_config.json", R"({"eos_token_id": [3, 4, 2]})");
  t::write_file(dir + "/config.json", R"({"eos_token_id": 4})");
  EXPECT_EQ(gguf::stop_strings(dir),
            (std::vector<std::string>{"<|endoftext|>", "<|im_end|>", "</s>", "<end_of_turn>"}));
  t::write_file(dir + "/config.json", R"({"eos_token_id": 9})");
  try {
    gguf::stop_strings(dir);
    FAIL() << "eos id 9 has no token";
  } catch (const loratune::Error& e) {
    EXPECT_NE(std::string(e.what()).find("eos_token_id 9 is no token of"), std::string::npos)
        << e.what();
  }
  fs::remove(dir + "/tokenizer.json");
  EXPECT_THROW(gguf::stop_strings(dir), loratune::Error);

  const std::string text =
      gguf::modelfile_text("./m.gguf", "", {"<|im_end|>", "say \"hi\\", "two\nlines"});
  EXPECT_EQ(stop_lines(text), (std::vector<std::string>{"<|im_end|>", "say \\\"hi\\\\"}));
  EXPECT_TRUE(has_line_starting(text, "FROM ./m.gguf")) << text;
  EXPECT_FALSE(has_line_starting(text, "ADAPTER")) << text;
}

TEST(ExportModelfile, ExportGgufOptions) {
  const std::string dir = t::make_temp_dir("modelfile_cli");
  const std::string m = t::quote(model_dir("mistral")), a = t::quote(adapter_dir("mistral"));
  // Refused before anything is written.
  auto r = t::run(bin() + " export-gguf --model " + m + " --adapter " + a +
                  " --modelfile-base x.gguf --out " + dir + "/x/m.gguf 2>&1");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("--modelfile-base is for --adapter-only"), std::string::npos) << r.out;
  r = t::run(bin() + " export-gguf --model " + m + " --adapter " + a +
             " --adapter-only --modelfile --out " + dir + "/x/lora.gguf 2>&1");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("--modelfile with --adapter-only needs --modelfile-base"), std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(dir + "/x"));

  // Adapter: FROM the base (a path made absolute, a model name as given), ADAPTER the file.
  const std::string out = dir + "/a/lora.gguf";
  r = t::run("cd " + t::quote(dir) + " && " + bin() + " export-gguf --model " + m + " --adapter " +
             a + " --adapter-only --modelfile-base base/mistral.f16.gguf --out " + out + " 2>&1");
  ASSERT_EQ(r.status, 0) << r.out;
  std::string mf = t::read_file(dir + "/a/Modelfile");
  EXPECT_TRUE(has_line_starting(
      mf, "FROM " + fs::weakly_canonical(dir).string() + "/base/mistral.f16.gguf"))
      << mf;
  EXPECT_TRUE(has_line_starting(mf, "ADAPTER ./lora.gguf")) << mf;
  EXPECT_EQ(stop_lines(mf), std::vector<std::string>{"</s>"}) << mf;

  // An existing Modelfile needs --overwrite, and nothing is written without it.
  const std::string out2 = dir + "/a/lora2.gguf";
  r = t::run(bin() + " export-gguf --model " + m + " --adapter " + a +
             " --adapter-only --modelfile-base mistral:7b --out " + out2 + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("Modelfile' already exists (pass --overwrite"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out2));
  r = t::run(bin() + " export-gguf --model " + m + " --adapter " + a +
             " --adapter-only --overwrite --modelfile-base mistral:7b --out " + out2 + " 2>&1");
  ASSERT_EQ(r.status, 0) << r.out;
  mf = t::read_file(dir + "/a/Modelfile");
  EXPECT_TRUE(has_line_starting(mf, "FROM mistral:7b")) << mf;
  EXPECT_TRUE(has_line_starting(mf, "ADAPTER ./lora2.gguf")) << mf;
}

}  // namespace
