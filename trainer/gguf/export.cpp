// trainer/gguf/export.cpp — export_gguf: plans the file (names, types,
// metadata), then streams the base checkpoint tensor by tensor (merged with
// the adapter where it has factors, permuted, encoded) into a temp file that
// is renamed over the output at the end.
#include <ATen/ops/matmul.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "trainer/export/merge.h"
#include "trainer/gguf/export_detail.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"

namespace fs = std::filesystem;

namespace loratune::gguf {
namespace {

using detail::PlannedTensor;

// general.* keys of every file (architecture first, as GGUFWriter writes it).
Metadata general(const std::string& arch, const std::string& type, const std::string& name) {
  Metadata md;
  md.emplace_back("general.architecture", string_value(arch));
  md.emplace_back("general.type", string_value(type));
  md.emplace_back("general.name", string_value(name));
  md.emplace_back("general.quantization_version", u32_value(2));  // GGML_QNT_VERSION
  return md;
}

// Values converted and encoded per piece of whole rows: a tensor is never
// held whole beside its source (a bf16 checkpoint's float32 copy, a Q8_0
// encoding), so memory above the mapped checkpoint stays at about this.
constexpr int64_t kPieceValues = int64_t{1} << 20;

// Converts `t` (rows of spec.shape.back() values) to float32, encodes and
// writes it piece by piece; a float32 contiguous source written as F32 is
// written from its memory.
void write_encoded(GgufWriter& writer, const TensorSpec& spec, const at::Tensor& t,
                   std::vector<uint8_t>& buf) {
  const at::Tensor flat = t.contiguous().reshape({-1});
  const int64_t numel = flat.numel();
  const int64_t row = spec.shape.empty() ? 1 : std::max<int64_t>(1, spec.shape.back());
  const int64_t piece = std::max<int64_t>(1, kPieceValues / row) * row;
  if (numel == 0) writer.write_tensor(spec.name, nullptr, 0);
  for (int64_t start = 0; start < numel; start += piece) {
    const int64_t n = std::min(piece, numel - start);
    const at::Tensor f = flat.narrow(0, start, n).to(at::kFloat).contiguous();
    if (spec.type == kGgmlF32) {
      writer.write_tensor_part(spec.name, static_cast<const uint8_t*>(f.data_ptr()),
                               static_cast<uint64_t>(n) * sizeof(float));
      continue;
    }
    buf.resize(encoded_bytes(spec.type, n));
    encode_row(spec.type, f.data_ptr<float>(), n, buf.data());
    writer.write_tensor_part(spec.name, buf.data(), buf.size());
  }
}

void refuse_existing(const ExportOptions& opt) {
  std::error_code ec;
  if (fs::exists(fs::symlink_status(opt.out_path, ec)) && !opt.overwrite) {
    throw Error("--out '" + opt.out_path + "' already exists (pass --overwrite to replace it)");
  }
  if (fs::is_directory(opt.out_path, ec)) {
    throw Error("--out '" + opt.out_path + "' is a directory; export-gguf writes one .gguf file");
  }
}

std::string model_name(const ExportOptions& opt) {
  if (!opt.name.empty()) return opt.name;
  std::string dir = opt.model_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return fs::path(dir).filename().string();
}

// llama.cpp (llama_vocab::impl::load) sets token attributes of "</s>",
// "<unk>", "<s>" and "<|endoftext|>" by text whenever general.name contains
// "phi3" or "phi-3", and fails to load the file ("_Map_base::at") when one of
// them is not in the vocabulary. Refused here instead, naming the way out.
void check_llamacpp_name_rule(const std::string& name, const Metadata& md) {
  std::string lower = name;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower.find("phi3") == std::string::npos && lower.find("phi-3") == std::string::npos) return;
  for (const auto& [key, value] : md) {
    if (key != "tokenizer.ggml.tokens") continue;
    for (const char* need : {"</s>", "<unk>", "<s>", "<|endoftext|>"}) {
      const bool found = std::any_of(value.array.begin(), value.array.end(),
                                     [&](const Value& v) { return v.s == need; });
      if (!found) {
        throw Error("export-gguf: general.name '" + name +
                        "' contains \"phi3\"/\"phi-3\", so llama.cpp looks up the token '" + need +
                        "', which this vocabulary lacks, and fails to load the file; " +
                        "pass another export-gguf --name (a training run names the file after "
                        "model.path's directory)",
                    ErrorKind::kUnsupported);
      }
    }
  }
}

ExportSummary write_model(const ExportOptions& opt, const model::ModelConfig& config,
                          const io::Checkpoint& base,
                          std::map<std::string, exporter::LoraFactors>& factors,
                          const std::string& adapter_path) {
  const detail::ModelPlan plan = detail::plan_model(config, base, opt.type);
  Metadata md = general(plan.arch, "model", model_name(opt));
  for (auto& kv : plan.hparams) md.push_back(kv);
  for (auto& kv : detail::tokenizer_metadata(opt.model_dir, config.vocab_size)) md.push_back(kv);
  check_llamacpp_name_rule(model_name(opt), md);
  std::vector<TensorSpec> specs;
  for (const PlannedTensor& p : plan.tensors) specs.push_back(p.spec);
  GgufWriter writer(std::move(md), std::move(specs));

  ExportSummary summary;
  summary.arch = plan.arch;
  summary.notes = plan.notes;
  io::AtomicFile out(opt.out_path);
  writer.begin(out);
  std::vector<uint8_t> buf;
  for (const PlannedTensor& p : plan.tensors) {
    if (p.source.empty()) {  // rope factors
      write_encoded(writer, p.spec, p.value, buf);
      continue;
    }
    at::Tensor w = base.tensor(p.source);  // views the mapping
    auto it = factors.find(p.source);
    if (it != factors.end()) {
      w = exporter::merged_weight(w, it->second, p.source, adapter_path, at::kFloat);
      factors.erase(it);
      ++summary.adapted;
    }
    if (p.permute_heads > 0) w = detail::permute_rows(w.to(at::kFloat), p.permute_heads);
    if (p.plus_one) w = w.to(at::kFloat) + 1.0;  // float32 first, as the converter adds
    write_encoded(writer, p.spec, w, buf);
    w.reset();
    base.file_of(p.source).release(base.info(p.source));  // its pages are done
  }
  if (!factors.empty()) {  // open_adapter only accepts projections the base has
    throw Error(adapter_path + ": adapter module '" + factors.begin()->first +
                    "' has no tensor in the exported model",
                ErrorKind::kInternal);
  }
  writer.finish();
  out.commit();
  summary.tensors = writer.tensors().size();
  summary.bytes = writer.file_size();
  return summary;
}

ExportSummary write_adapter(const ExportOptions& opt, const model::ModelConfig& config,
                            const lora::CheckedAdapter& checked,
                            const std::map<std::string, exporter::LoraFactors>& factors) {
  if (checked.spec.use_dora) {
    throw Error(checked.file->path() + ": a DoRA adapter (use_dora) has no GGUF adapter form " +
                    "(llama.cpp applies plain LoRA pairs only); export the merged model instead " +
                    "(export-gguf --adapter without --adapter-only, or output.gguf.adapter: false)",
                ErrorKind::kUnsupported);
  }
  ExportSummary summary;
  const detail::ArchSpec& arch = detail::architecture_of(config);
  summary.arch = arch.arch;
  // llama.cpp scales every pair by alpha / r (r = lora_b's ne[0]); alpha is
  // the first module's s * r, and a module whose s * r differs gets the
  // remaining factor folded into its B.
  // (alpha as the float32 the file holds, which is what llama.cpp divides.)
  const exporter::LoraFactors& first = factors.begin()->second;
  const double alpha = static_cast<float>(first.scale * static_cast<double>(first.r));
  struct Pair {
    PlannedTensor a, b;
    const exporter::LoraFactors* f;
    double fold;
  };
  std::vector<Pair> pairs;
  std::vector<TensorSpec> specs;
  for (const lora::AdaptedModule& m : checked.modules) {
    // The language model's HF name (a multimodal Gemma 3's adapter names
    // PEFT's paths; its checkpoint holds the weight under its prefix).
    const std::string hf = model::module_path_of_peft(config, m.path) + ".weight";
    const std::string source = model::checkpoint_name(config, hf);
    const exporter::LoraFactors& f = factors.at(source);
    const std::string name = detail::gguf_tensor_name(arch, hf);
    if (name.empty()) {
      throw Error(checked.file->path() + ": adapted module '" + m.path +
                      "' has no llama.cpp tensor to apply it to",
                  ErrorKind::kUnsupported);
    }
    Pair p{{}, {}, &f, f.scale * static_cast<double>(f.r) / alpha};
    const std::vector<int64_t> a_shape(f.A.sizes().begin(), f.A.sizes().end());  // [r, in]
    const std::vector<int64_t> b_shape(f.B.sizes().begin(), f.B.sizes().end());  // [out, r]
    p.a.spec = {name + ".lora_a", a_shape,
                detail::tensor_type(name + ".lora_a", 2, a_shape[1], opt.type)};
    p.b.spec = {name + ".lora_b", b_shape,
                detail::tensor_type(name + ".lora_b", 2, b_shape[1], opt.type)};
    if (arch.permute_qk && name.find(".attn_q.") != std::string::npos)
      p.b.permute_heads = config.num_attention_heads;
    if (arch.permute_qk && name.find(".attn_k.") != std::string::npos)
      p.b.permute_heads = config.num_key_value_heads;
    specs.push_back(p.a.spec);
    specs.push_back(p.b.spec);
    pairs.push_back(std::move(p));
  }
  Metadata md = general(summary.arch, "adapter", model_name(opt));
  md.emplace_back("adapter.type", string_value("lora"));
  md.emplace_back("adapter.lora.alpha", f32_value(static_cast<float>(alpha)));
  GgufWriter writer(std::move(md), std::move(specs));
  io::AtomicFile out(opt.out_path);
  writer.begin(out);
  std::vector<uint8_t> buf;
  for (const Pair& p : pairs) {
    write_encoded(writer, p.a.spec, p.f->A, buf);
    at::Tensor b = p.f->B.to(at::kFloat);
    if (std::fabs(p.fold - 1.0) > 1e-6) {
      b = b * p.fold;
      ++summary.folded;
    }
    if (p.b.permute_heads > 0) b = detail::permute_rows(b, p.b.permute_heads);
    write_encoded(writer, p.b.spec, b, buf);
    ++summary.adapted;
  }
  writer.finish();
  out.commit();
  summary.tensors = writer.tensors().size();
  summary.bytes = writer.file_size();
  return summary;
}

}  // namespace

OutType parse_out_type(const std::string& name) {
  std::string s = name;
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "f32") return OutType::kF32;
  if (s == "f16") return OutType::kF16;
  if (s == "bf16") return OutType::kBF16;
  if (s == "q8_0") return OutType::kQ8_0;
  std::string msg =
      "--type: '" + name + "' is not a GGUF type export-gguf writes (f32, f16, bf16, q8_0)";
  const std::string near = closest_match(s, {"f32", "f16", "bf16", "q8_0"});
  if (!near.empty()) msg += "; did you mean '" + near + "'?";
  throw Error(msg);
}

ExportSummary export_gguf(const ExportOptions& opt) {
  refuse_existing(opt);
  // Everything that can be refused is checked before the file is created:
  // the base as load_model checks it, the adapter as load_adapter does.
  model::ModelConfig config = model::load_config(opt.model_dir);
  if (opt.adapter_only) {
    if (opt.adapter_dir.empty()) {
      throw Error("--adapter-only needs --adapter DIR (the PEFT adapter to write as GGUF)");
    }
    const lora::CheckedAdapter checked =
        lora::open_adapter(opt.adapter_dir, lora::peft_linear_shapes(config));
    const auto factors = exporter::read_factors(config, checked);
    return write_adapter(opt, config, checked, factors);
  }
  io::Checkpoint base = io::Checkpoint::open(opt.model_dir);
  model::detect_checkpoint_layout(config, base);  // a multimodal Gemma 3's prefix
  model::check_checkpoint(model::config_json_path(opt.model_dir), config, base);
  std::map<std::string, exporter::LoraFactors> factors;
  std::string adapter_path;
  if (!opt.adapter_dir.empty()) {
    const lora::CheckedAdapter checked =
        lora::open_adapter(opt.adapter_dir, lora::peft_linear_shapes(config));
    factors = exporter::read_factors(config, checked);
    adapter_path = checked.file->path();
  }
  return write_model(opt, config, base, factors, adapter_path);
}

void resolve_gguf_model(ExportOptions& opt) {
  if (!is_gguf_path(opt.model_dir)) return;
  // A .gguf base exports from its float32 import: full precision, never re-quantized twice.
  if (opt.name.empty()) opt.name = fs::path(opt.model_dir).stem().string();
  opt.model_dir = resolve_model_path(opt.model_dir);
}

void check_exportable(const std::string& model_dir, OutType type, bool adapter_only) {
  model::ModelConfig config = model::load_config(model_dir);
  (void)detail::architecture_of(config);
  if (adapter_only) return;
  const io::Checkpoint base = io::Checkpoint::open(model_dir);
  model::detect_checkpoint_layout(config, base);
  model::check_checkpoint(model::config_json_path(model_dir), config, base);
  (void)detail::plan_model(config, base, type);
  ExportOptions named;
  named.model_dir = model_dir;
  check_llamacpp_name_rule(model_name(named),
                           detail::tokenizer_metadata(model_dir, config.vocab_size));
}

const char* out_type_name(OutType t) {
  switch (t) {
    case OutType::kF32:
      return "f32";
    case OutType::kF16:
      return "f16";
    case OutType::kBF16:
      return "bf16";
    case OutType::kQ8_0:
      return "q8_0";
  }
  return "?";
}

}  // namespace loratune::gguf
