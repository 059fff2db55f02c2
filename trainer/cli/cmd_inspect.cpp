// trainer/cli/cmd_inspect.cpp — `loratune inspect DIR`: what a model directory
// holds, from config.json and the safetensors headers (weights are not read
// unless --load).
#include <ATen/core/Tensor.h>
#include <ATen/ops/tensor.h>
#include <c10/core/ScalarType.h>
#include <sys/resource.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "trainer/cli/commands.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/bnb_checkpoint.h"
#include "trainer/model/config.h"
#include "trainer/model/loader.h"
#include "trainer/model/model.h"

namespace loratune::cli {
namespace {

// 5 -> "5", 0.5 -> "0.5": the shortest form of a config number.
std::string format_number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

namespace fs = std::filesystem;
using nlohmann::json;

struct InspectOptions {
  std::string dir;
  bool json = false;
  bool load = false;
  std::string dtype = "float32";
  std::string device = "cpu";
};

const char* const kTokenizerFiles[] = {
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json",     "merges.txt",      "chat_template.jinja",
};

// "layers 1-2: 48" style summary of per-layer sliding windows.
json windows_json(const model::ModelConfig& c) {
  json out = json::array();
  for (int64_t l = 0; l < c.num_hidden_layers;) {
    int64_t e = l;
    while (e + 1 < c.num_hidden_layers && c.layer_window[e + 1] == c.layer_window[l]) ++e;
    if (c.layer_window[l] > 0) out.push_back({{"layers", {l, e}}, {"window", c.layer_window[l]}});
    l = e + 1;
  }
  return out;
}

int64_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

// The prefix a multimodal checkpoint holds its language model under.
std::string checkpoint_layout(model::ModelConfig c, const io::Checkpoint& ckpt) {
  model::detect_checkpoint_layout(c, ckpt);
  return c.checkpoint_prefix;
}

json describe(const InspectOptions& o) {
  const model::ModelConfig c = model::load_config(o.dir);
  const io::Checkpoint ckpt = io::Checkpoint::open(o.dir);

  // Parameter count of the model config.json describes, by arithmetic (no
  // module is built: config.json's sizes are not trusted yet).
  const int64_t params = model::parameter_count(c);
  // Where config.json and the checkpoint disagree; reported, not fatal, so
  // that a broken directory can still be described.
  const std::vector<std::string> problems = model::checkpoint_problems(c, ckpt);

  json dtypes = json::object();
  int64_t ckpt_numel = 0;
  for (const auto& name : ckpt.names()) {
    const io::TensorInfo& info = ckpt.info(name);
    json& d = dtypes[info.dtype];
    if (d.is_null()) d = {{"tensors", 0}, {"bytes", 0}};
    d["tensors"] = d["tensors"].get<int64_t>() + 1;
    d["bytes"] = d["bytes"].get<uint64_t>() + info.nbytes();
    ckpt_numel += info.numel();
  }
  json shards = json::array();
  for (const auto& s : ckpt.shards()) {
    shards.push_back({{"file", fs::path(s->path()).filename().string()},
                      {"bytes", s->file_size()},
                      {"tensors", s->tensors().size()}});
  }
  json tok = json::array();
  for (const char* f : kTokenizerFiles) {
    if (fs::exists(fs::path(o.dir) / f)) tok.push_back(f);
  }
  json j = {
      {"dir", o.dir},
      {"family", c.model_type},
      // A multimodal Gemma 3: the checkpoint prefix of its language model
      // (the only part loratune loads); null for a text-only model.
      {"multimodal_prefix", c.multimodal ? json(checkpoint_layout(c, ckpt)) : json(nullptr)},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rope", {{"type", c.rope.type}, {"theta", c.rope.theta}, {"factor", c.rope.factor}}},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"biases",
       {{"q", c.q_bias}, {"k", c.k_bias}, {"v", c.v_bias}, {"o", c.o_bias}, {"mlp", c.mlp_bias}}},
      {"qk_norm", c.qk_norm},
      {"sliding_windows", windows_json(c)},
      {"config_dtype", c.dtype},
      {"parameters", params},
      {"checkpoint_parameters", ckpt_numel},
      {"checkpoint_bytes", ckpt.total_bytes()},
      {"dtypes", dtypes},
      {"shards", shards},
      {"tokenizer_files", tok},
      {"config_checkpoint_problems", problems},
      {"quantization", nullptr},
  };
  // The family's structural choices beyond the Llama block (family.h).
  auto rope_json = [](const model::RopeConfig& r) {
    json out = {{"type", r.type}, {"theta", r.theta}, {"factor", r.factor}};
    if (r.type == "longrope") {
      out["original_max_position_embeddings"] = r.original_max_position_embeddings;
      out["attention_factor"] = r.attention_factor;
    }
    return out;
  };
  j["rope"] = rope_json(c.rope);
  j["rope"]["rotary_dim"] = c.rotary_dim();
  j["rope_local"] = c.rope_local ? rope_json(*c.rope_local) : json(nullptr);
  j["activation"] = c.hidden_act;
  j["norms"] = {{"unit_offset", c.norm_unit_offset}, {"sandwich", c.sandwich_norms}};
  j["embed_scale"] = c.embed_scale;
  j["attention_scale"] = c.attn_scale > 0 ? c.attn_scale : 1.0 / std::sqrt(double(c.head_dim));
  j["softcap"] = {{"attention", c.attn_softcap}, {"final", c.final_softcap}};
  j["fused"] = {{"qkv", c.fused_qkv}, {"gate_up", c.fused_gate_up}};
  if (c.bnb_nf4) {
    // A pre-quantized bitsandbytes checkpoint: which projections are 4-bit
    // is the checkpoint's say (the states themselves are checked by --load).
    int64_t weights = 0, numel = 0;
    for (const model::LinearShape& l : model::linear_shapes(c)) {
      if (!model::is_bnb_quantized(ckpt, model::checkpoint_name(c, l.path + ".weight"))) continue;
      ++weights;
      numel += l.out_features * l.in_features;
    }
    j["quantization"] = {{"method", "bitsandbytes"},
                         {"type", "nf4"},
                         {"double_quant", c.bnb_nf4->double_quant},
                         {"compute_dtype", c.bnb_nf4->compute_dtype},
                         {"skip_modules", c.bnb_nf4->skip_modules},
                         {"quantized_weights", weights},
                         {"quantized_parameters", numel}};
  }
  if (o.load) {
    model::LoadOptions lo{model::parse_dtype(o.dtype), o.device};
    auto t0 = std::chrono::steady_clock::now();
    model::CausalLM lm = model::load_model(o.dir, lo);
    auto t1 = std::chrono::steady_clock::now();
    {
      torch::NoGradGuard no_grad;
      const int64_t bos = c.bos_token_id.value_or(0);
      const int64_t id = bos >= 0 && bos < c.vocab_size ? bos : 0;
      at::Tensor ids =
          at::tensor({id}, at::TensorOptions().dtype(at::kLong)).view({1, 1});  // [1,1]
      lm->forward(ids).to(at::kCPU);
    }
    auto t2 = std::chrono::steady_clock::now();
    j["load"] = {{"dtype", model::dtype_string(lo.dtype)},
                 {"device", o.device},
                 {"load_seconds", std::chrono::duration<double>(t1 - t0).count()},
                 {"first_forward_seconds", std::chrono::duration<double>(t2 - t1).count()},
                 {"peak_rss_bytes", peak_rss_bytes()}};
  }
  return j;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) b /= 1000, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", b, units[u]);
  return buf;
}

void print_text(const json& j) {
  std::ostream& o = std::cout;
  o << "model:       " << j["dir"].get<std::string>() << "\n";
  o << "family:      " << j["family"].get<std::string>();
  if (j["multimodal_prefix"].is_string()) {
    o << " (language model of a multimodal gemma3, tensors under "
      << j["multimodal_prefix"].get<std::string>() << "; vision tower not loaded)";
  }
  o << "\n";
  o << "dimensions:  vocab " << j["vocab_size"] << ", hidden " << j["hidden_size"]
    << ", intermediate " << j["intermediate_size"] << ", layers " << j["num_hidden_layers"]
    << ", heads " << j["num_attention_heads"] << ", kv heads " << j["num_key_value_heads"]
    << ", head_dim " << j["head_dim"] << "\n";
  o << "rope:        " << j["rope"]["type"].get<std::string>() << ", theta "
    << j["rope"]["theta"].get<double>();
  if (j["rope"]["type"] != "default" && j["rope"]["type"] != "longrope") {
    o << ", factor " << j["rope"]["factor"].get<double>();
  }
  if (j["rope"]["type"] == "longrope") {
    o << ", original context " << j["rope"]["original_max_position_embeddings"]
      << ", attention factor " << j["rope"]["attention_factor"].get<double>();
  }
  if (j["rope"]["rotary_dim"] != j["head_dim"]) {
    o << ", rotating " << j["rope"]["rotary_dim"] << " of " << j["head_dim"] << " dims";
  }
  if (const json& l = j["rope_local"]; !l.is_null()) {
    o << "; sliding layers " << l["type"].get<std::string>() << ", theta "
      << l["theta"].get<double>();
  }
  o << "\n";
  o << "structure:   tied embeddings " << (j["tie_word_embeddings"].get<bool>() ? "yes" : "no")
    << ", qk-norm " << (j["qk_norm"].get<bool>() ? "yes" : "no") << ", biases";
  bool any = false;
  for (const auto& [k, v] : j["biases"].items()) {
    if (v.get<bool>()) o << " " << k, any = true;
  }
  if (!any) o << " none";
  o << ", MLP "
    << (j["activation"] == "gelu_pytorch_tanh" ? "GeGLU (gelu_pytorch_tanh)" : "SwiGLU");
  if (j["fused"]["qkv"].get<bool>()) o << ", fused qkv_proj";
  if (j["fused"]["gate_up"].get<bool>()) o << ", fused gate_up_proj";
  if (j["norms"]["unit_offset"].get<bool>()) o << ", RMSNorm x (1 + w)";
  if (j["norms"]["sandwich"].get<bool>()) o << ", four norms per layer";
  if (j["embed_scale"].get<double>() != 1.0) {
    o << ", embeddings x " << j["embed_scale"].get<double>();
  }
  o << "\n";
  std::vector<std::string> attn;
  for (const auto& w : j["sliding_windows"]) {
    attn.push_back("sliding window " + w["window"].dump() + " on layers " + w["layers"][0].dump() +
                   "-" + w["layers"][1].dump());
  }
  if (attn.empty()) attn.push_back("full causal");
  if (const double cap = j["softcap"]["attention"].get<double>(); cap > 0) {
    attn.push_back("scores soft-capped at " + format_number(cap));
  }
  if (const double cap = j["softcap"]["final"].get<double>(); cap > 0) {
    attn.push_back("logits soft-capped at " + format_number(cap));
  }
  o << "attention:   ";
  for (size_t i = 0; i < attn.size(); ++i) o << (i ? ", " : "") << attn[i];
  o << "\n";
  o << "parameters:  " << j["parameters"] << " (checkpoint holds " << j["checkpoint_parameters"]
    << ", " << human_bytes(j["checkpoint_bytes"].get<double>()) << ")\n";
  o << "dtypes:     ";
  for (const auto& [k, v] : j["dtypes"].items())
    o << " " << k << " (" << v["tensors"] << " tensors)";
  if (!j["config_dtype"].get<std::string>().empty())
    o << "; config.json says " << j["config_dtype"].get<std::string>();
  o << "\n";
  if (const json& q = j["quantization"]; !q.is_null()) {
    o << "quantized:   " << q["method"].get<std::string>() << " " << q["type"].get<std::string>()
      << " (pre-quantized), double quant " << (q["double_quant"].get<bool>() ? "on" : "off") << ", "
      << q["quantized_weights"] << " 4-bit projections (" << q["quantized_parameters"]
      << " parameters); loaded as NF4, merged dequantized\n";
  }
  o << "shards:      " << j["shards"].size() << "\n";
  for (const auto& s : j["shards"]) {
    o << "  " << s["file"].get<std::string>() << "  " << human_bytes(s["bytes"].get<double>())
      << ", " << s["tensors"] << " tensors\n";
  }
  o << "tokenizer:   ";
  if (j["tokenizer_files"].empty()) o << "no tokenizer files";
  for (const auto& f : j["tokenizer_files"]) o << f.get<std::string>() << " ";
  o << "\n";
  for (const auto& p : j["config_checkpoint_problems"]) {
    o << "warning:     config.json disagrees with the checkpoint: " << p.get<std::string>() << "\n";
  }
  if (j.contains("load")) {
    const json& l = j["load"];
    o << "load:        " << l["load_seconds"].get<double>() << " s ("
      << l["dtype"].get<std::string>() << " on " << l["device"].get<std::string>()
      << "), first forward " << l["first_forward_seconds"].get<double>() << " s, peak RSS "
      << human_bytes(l["peak_rss_bytes"].get<double>()) << "\n";
  }
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto opts = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand(
      "inspect",
      "Describe a Hugging Face model directory: family, dimensions, parameter count,\n"
      "tensor dtypes and shards (from the safetensors headers; weights are not read),\n"
      "and which tokenizer files are present. With --load, also load the weights and\n"
      "run one token, reporting the time and peak memory.\n"
      "Where config.json disagrees with the checkpoint's tensors (layer count, shapes,\n"
      "missing or extra tensors), each disagreement is a \"warning:\" line (--json:\n"
      "\"config_checkpoint_problems\") and the exit status stays 0; --load then fails\n"
      "with exit 5. A config.json that cannot be parsed, or with sizes beyond any real\n"
      "model, is an error (exit 5; unsupported values exit 6).");
  cmd->add_option("DIR", opts->dir, "model directory (config.json + *.safetensors) or .gguf file")
      ->required();
  cmd->add_flag("--json", opts->json, "print one JSON object instead of text");
  cmd->add_flag("--load", opts->load, "load the weights and run one token (timing, peak RSS)");
  cmd->add_option("--dtype", opts->dtype, "with --load: float32, bfloat16 or float16")
      ->capture_default_str();
  cmd->add_option("--device", opts->device, "with --load: cpu, cuda or cuda:N")
      ->capture_default_str();
  cmd->callback([opts] {
    opts->dir = gguf::resolve_model_path(opts->dir);  // a .gguf: its import
    const json j = describe(*opts);
    if (opts->json) {
      std::cout << j.dump(2) << std::endl;
    } else {
      print_text(j);
    }
  });
}

}  // namespace loratune::cli
