// trainer/export/merge.cpp — streaming LoRA merge into a Hugging Face model dir.
#include "trainer/export/merge.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/matmul.h>
#include <nlohmann/json.hpp>

#include <malloc.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/sha256.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/bnb_checkpoint.h"
#include "trainer/model/loader.h"

namespace loratune::exporter {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The dtype the base model declares (config.json "dtype" or "torch_dtype").
std::optional<c10::ScalarType> config_dtype(const json& cfg) {
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (!cfg.contains(key) || !cfg[key].is_string()) continue;
    std::string s = cfg[key];
    if (s == "float32") return at::kFloat;
    if (s == "bfloat16") return at::kBFloat16;
    if (s == "float16") return at::kHalf;
  }
  return std::nullopt;
}

std::string model_card(const MergeOptions& opt, const model::ModelConfig& config,
                       const lora::LoraSpec& spec, c10::ScalarType dtype, size_t merged) {
  std::ostringstream md;
  std::string base =
      spec.base_model_name_or_path.empty() ? opt.model_dir : spec.base_model_name_or_path;
  md << "---\nbase_model: " << base << "\nlibrary_name: transformers\ntags:\n- lora\n"
     << "- loratune\n---\n\n# Merged LoRA model\n\n"
     << "This model is `" << base << "` with a LoRA adapter merged into its weights by "
     << "loratune (W' = W + s·B·A in float32, stored as " << model::dtype_string(dtype) << ").\n\n"
     << "## LoRA\n\n| setting | value |\n| --- | --- |\n"
     << "| r | " << spec.r << " |\n| alpha | " << spec.alpha << " |\n"
     << "| rsLoRA | " << (spec.use_rslora ? "yes" : "no") << " |\n"
     << "| DoRA | " << (spec.use_dora ? "yes (W' = m / ‖W + s·BA‖ · (W + s·BA))" : "no") << " |\n"
     << "| dropout | " << spec.dropout << " |\n| target modules | ";
  for (size_t i = 0; i < spec.target_modules.size(); ++i) {
    md << (i ? ", " : "") << spec.target_modules[i];
  }
  if (!spec.target_regex.empty()) md << "`" << spec.target_regex << "` (regex)";
  md << " |\n";
  auto patterns = [](const auto& list) {  // as adapter_config.json holds it, in order
    nlohmann::ordered_json o = nlohmann::ordered_json::object();
    for (const auto& [k, v] : list) o[k] = v;
    return o.dump();
  };
  if (!spec.rank_pattern.empty())
    md << "| rank_pattern | " << patterns(spec.rank_pattern) << " |\n";
  if (!spec.alpha_pattern.empty()) {
    md << "| alpha_pattern | " << patterns(spec.alpha_pattern) << " |\n";
  }
  md << "| merged projections | " << merged << " |\n";
  if (config.bnb_nf4) {
    md << "\n## QLoRA base\n\nThe base checkpoint was stored pre-quantized by bitsandbytes "
       << "(4-bit NF4, blocks of 64, double quant " << (config.bnb_nf4->double_quant ? "on" : "off")
       << "). Every 4-bit projection weight is stored here dequantized (in float32, as "
       << "bitsandbytes dequantizes it) plus the LoRA delta where adapted; it is not "
       << "re-quantized, and config.json has no quantization_config.\n";
  } else if (opt.base_quantize.kind == model::Quantization::kNf4) {
    md << "\n## QLoRA base\n\nThe adapter was trained on an NF4 base (bitsandbytes layout, "
       << "blocks of 64, double quant " << (opt.base_quantize.double_quant ? "on" : "off")
       << ", quantized from " << model::dtype_string(opt.quantized_dtype) << "). Every "
       << "projection weight of the decoder layers is stored here as its dequantized NF4 value "
       << "plus the LoRA delta (computed in float32), i.e. the model the run trained; it is "
       << "not re-quantized, and it is not the original full-precision weight.\n";
  }
  const TrainingFacts& f = opt.facts;
  if (!f.data_files.empty() || f.final_train_loss || f.final_val_loss) {
    md << "\n## Training\n\n";
    if (f.steps > 0) md << "- optimizer steps: " << f.steps << "\n";
    if (f.final_train_loss) md << "- final training loss: " << *f.final_train_loss << "\n";
    if (f.final_val_loss) md << "- final validation loss: " << *f.final_val_loss << "\n";
    if (!f.data_files.empty()) {
      md << "\n| data file | SHA-256 |\n| --- | --- |\n";
      for (const auto& p : f.data_files) {
        md << "| " << fs::path(p).filename().string() << " | " << io::sha256_file_hex(p) << " |\n";
      }
    }
  }
  return md.str();
}

// The 4-bit weights of a pre-quantized bitsandbytes base (checkpoint name
// -> [out, in]) and the state tensors beside them, which are not written.
struct StoredNf4 {
  std::map<std::string, std::pair<int64_t, int64_t>> weights;
  std::set<std::string> companions;
  bool double_quant = false;
};

// Bytes `info` takes once written as `dtype` (floating tensors are cast, a
// 4-bit weight is written dequantized, a multimodal model's vision tower and
// projector are copied as stored).
uint64_t output_bytes(const io::TensorInfo& info, c10::ScalarType dtype, const StoredNf4& stored,
                      const model::ModelConfig& config) {
  if (auto it = stored.weights.find(info.name); it != stored.weights.end()) {
    return static_cast<uint64_t>(it->second.first * it->second.second) * c10::elementSize(dtype);
  }
  const c10::ScalarType t =
      at::isFloatingType(info.scalar_type) && !model::is_multimodal_extra(config, info.name)
          ? dtype
          : info.scalar_type;
  return static_cast<uint64_t>(info.numel()) * c10::elementSize(t);
}

// Streams every base tensor, merged where the adapter has factors (which are
// erased from `factors` as they are used), into `writer` in file order.
// Memory held: the writer's pending shard (tensors it owns, plus views of the
// mapping whose pages it reads while writing) and one tensor being merged.
// The pending shard is written before a tensor is materialised that would
// not fit in it, and the mapping's pages of each tensor are released once
// nothing reads them any more (converted: at once; queued as a view: when
// its shard is on disk), so RSS stays near one shard, not the model.
// `nf4_names` (with `opt`'s quantization) are the weights a QLoRA run held in
// NF4: they are read as dequantize(quantize(W)) before anything else.
// `stored`'s weights (a pre-quantized base) are read as dequantize(state)
// and their state tensors are skipped. A multimodal model's vision tower and
// projector tensors (model::is_multimodal_extra) are written as stored, same
// names, same bytes, whatever `dtype` is.
// Throws Interrupted when opt.stop_signal says so.
void check_stop(const MergeOptions& opt) {
  const int sig = opt.stop_signal != nullptr ? opt.stop_signal->load() : 0;
  if (sig != 0) throw Interrupted(sig);
}

size_t stream_tensors(const io::Checkpoint& base, const model::ModelConfig& config,
                      std::map<std::string, LoraFactors>& factors, c10::ScalarType dtype,
                      const std::string& adapter_path, const std::set<std::string>& nf4_names,
                      const StoredNf4& stored, const MergeOptions& opt, io::ShardedWriter& writer) {
  // Fault injection for the crash-safety test: die (SIGKILL) once this many
  // shards are on disk, as a power cut or the OOM killer would.
  const char* kill_env = std::getenv("LORATUNE_FAULT_KILL_AFTER_SHARDS");
  const size_t kill_after = kill_env ? static_cast<size_t>(std::atoi(kill_env)) : 0;
  // The same for the signal test: SIGTERM to itself once this many shards
  // are on disk (a caller's handler turns it into opt.stop_signal).
  const char* term_env = std::getenv("LORATUNE_FAULT_SIGTERM_AFTER_SHARDS");
  const size_t term_after = term_env ? static_cast<size_t>(std::atoi(term_env)) : 0;
  // Views queued in the writer's pending shard, with the file they map.
  std::vector<std::pair<const io::SafetensorsFile*, const io::TensorInfo*>> queued_views;
  size_t shards = 0, merged = 0;
  auto release_if_written = [&] {
    if (writer.shards_written() == shards) return;
    shards = writer.shards_written();
    for (const auto& [file, info] : queued_views) file->release(*info);
    queued_views.clear();
#ifdef __GLIBC__
    // The shard's merged tensors are freed, but glibc keeps freed heap chunks
    // (tensors under its mmap threshold, up to 32 MB) resident, and the
    // fragments add up shard after shard; hand them back to the kernel.
    ::malloc_trim(0);
#endif
    if (kill_after > 0 && shards >= kill_after) std::raise(SIGKILL);
    if (term_after > 0 && shards == term_after) std::raise(SIGTERM);
  };
  for (const auto& shard : base.shards()) {
    for (const io::TensorInfo& info : shard->tensors()) {
      if (stored.companions.count(info.name)) continue;
      check_stop(opt);
      writer.make_room(output_bytes(info, dtype, stored, config));
      release_if_written();
      at::Tensor w = shard->tensor(info.name);
      const void* mapped = w.data_ptr();
      if (auto st = stored.weights.find(info.name); st != stored.weights.end()) {
        w = model::dequantize_nf4(model::read_bnb_nf4(base, info.name, st->second.first,
                                                      st->second.second, stored.double_quant),
                                  at::kFloat);
      } else if (nf4_names.count(info.name)) {
        const at::Tensor loaded = w.to(opt.quantized_dtype);  // as the run loaded it
        w = model::dequantize_nf4(
            model::quantize_nf4(loaded, opt.base_quantize.double_quant, info.name), at::kFloat);
      }
      at::Tensor outw;
      auto it = factors.find(info.name);
      if (it != factors.end()) {
        outw = merged_weight(w, it->second, info.name, adapter_path, dtype);
        factors.erase(it);
        ++merged;
      } else if (model::is_multimodal_extra(config, info.name)) {
        outw = w;  // not part of the language model: copied as stored
      } else {
        outw = at::isFloatingType(w.scalar_type()) ? w.to(dtype) : w;
      }
      const bool view = outw.data_ptr() == mapped;
      w.reset();
      if (!view) shard->release(info);  // converted: the source pages are done
      writer.add(info.name, outw);
      release_if_written();
      if (view) queued_views.emplace_back(shard.get(), &info);
    }
  }
  return merged;
}

}  // namespace

std::map<std::string, LoraFactors> read_factors(const model::ModelConfig& config,
                                                const lora::CheckedAdapter& adapter) {
  std::map<std::string, LoraFactors> out;
  for (const lora::AdaptedModule& m : adapter.modules) {
    const std::string prefix = "base_model.model." + m.path;
    LoraFactors& f =
        out[model::checkpoint_name(config, model::module_path_of_peft(config, m.path) + ".weight")];
    f.A = adapter.file->tensor(prefix + ".lora_A.weight");
    f.B = adapter.file->tensor(prefix + ".lora_B.weight");
    if (m.dora) f.magnitude = adapter.file->tensor(prefix + ".lora_magnitude_vector");
    f.r = m.r;
    f.alpha = m.alpha;
    f.scale = m.scale;
  }
  return out;
}

at::Tensor merged_weight(const at::Tensor& w, const LoraFactors& f, const std::string& name,
                         const std::string& adapter_path, c10::ScalarType dtype) {
  if (w.dim() != 2 || f.A.size(1) != w.size(1) || f.B.size(0) != w.size(0) ||
      f.A.size(0) != f.B.size(1)) {
    throw Error(adapter_path + ": factors for '" + name + "' (A " + c10::str(f.A.sizes()) + ", B " +
                    c10::str(f.B.sizes()) + ") do not fit the base weight " + c10::str(w.sizes()),
                ErrorKind::kCorrupt);
  }
  at::Tensor out = at::matmul(f.B.to(at::kFloat), f.A.to(at::kFloat));  // [out, in]
  out.mul_(f.scale).add_(w.to(at::kFloat));  // same bits as W + delta * s, one buffer
  if (f.magnitude.defined()) {
    if (f.magnitude.dim() != 1 || f.magnitude.size(0) != w.size(0)) {
      throw Error(adapter_path + ": the DoRA magnitude of '" + name + "' is " +
                      c10::str(f.magnitude.sizes()) + ", expected [" + std::to_string(w.size(0)) +
                      "]",
                  ErrorKind::kCorrupt);
    }
    at::Tensor norm = at::linalg_vector_norm(out, 2, {1});  // [out]
    out.mul_((f.magnitude.to(at::kFloat) / norm).view({-1, 1}));
  }
  return dtype == at::kFloat ? out : out.to(dtype);
}

std::vector<std::string> companion_files(const std::string& model_dir) {
  static const std::set<std::string> kKeep = {"generation_config.json",
                                              "tokenizer.json",
                                              "tokenizer.model",
                                              "tokenizer_config.json",
                                              "special_tokens_map.json",
                                              "added_tokens.json",
                                              "vocab.json",
                                              "merges.txt",
                                              "chat_template.jinja",
                                              "chat_template.json",
                                              "preprocessor_config.json",
                                              "processor_config.json"};
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(model_dir)) {
    if (e.is_regular_file() && kKeep.count(e.path().filename().string())) {
      out.push_back(e.path().filename().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

void merge_adapter(const MergeOptions& opt) {
  if (fs::exists(opt.out_dir) && !opt.overwrite) {
    throw Error(opt.out_dir + ": already exists (pass --overwrite to replace it)");
  }
  io::refuse_unreplaceable(opt.out_dir, /*want_dir=*/true);
  // The base is checked as load_model checks it and the adapter as
  // load_adapter does (generate, eval, logits), so the merge applies exactly
  // the LoRA layers PEFT would create, with their ranks and scales.
  const std::string cfg_path = model::config_json_path(opt.model_dir);
  model::ModelConfig config = model::load_config(opt.model_dir);
  io::Checkpoint base = io::Checkpoint::open(opt.model_dir);
  model::detect_checkpoint_layout(config, base);
  model::check_checkpoint(cfg_path, config, base, /*reads_bnb_nf4=*/true);
  json cfg = io::read_json(cfg_path);
  const lora::CheckedAdapter checked =
      lora::open_adapter(opt.adapter_dir, lora::peft_linear_shapes(config));
  const lora::LoraSpec& spec = checked.spec;
  const auto& adapter = checked.file;
  std::map<std::string, LoraFactors> factors = read_factors(config, checked);

  c10::ScalarType dtype = opt.dtype.value_or(config_dtype(cfg).value_or(at::kFloat));
  if (!opt.dtype && !config_dtype(cfg)) {
    for (const auto& name : base.names()) {  // the first floating one (not a packed 4-bit one)
      if (!at::isFloatingType(base.info(name).scalar_type)) continue;
      if (model::is_multimodal_extra(config, name)) continue;  // the language model decides
      dtype = base.info(name).scalar_type;
      break;
    }
  }
  model::dtype_string(dtype);  // throws for a dtype a model cannot be stored in

  io::AtomicDir out(opt.out_dir, opt.overwrite);
  {
    io::ShardedWriter writer(out.path(), opt.max_shard_bytes);
    // A pre-quantized base decides for itself (as load_model does): its
    // stored 4-bit weights are dequantized, its float ones are taken as
    // they are, whatever base_quantize says.
    StoredNf4 stored;
    if (config.bnb_nf4) {
      stored.double_quant = config.bnb_nf4->double_quant;
      for (const model::LinearShape& l : model::linear_shapes(config)) {
        const std::string name = model::checkpoint_name(config, l.path + ".weight");
        if (!model::is_bnb_quantized(base, name)) continue;
        stored.weights[name] = {l.out_features, l.in_features};
        for (const auto& c : model::bnb_companion_names(name)) stored.companions.insert(c);
      }
    }
    std::set<std::string> nf4_names;
    if (opt.base_quantize.kind == model::Quantization::kNf4 && !config.bnb_nf4) {
      for (const model::LinearShape& l : model::linear_shapes(config)) {
        if (model::is_quantized_projection(l.path)) {
          nf4_names.insert(model::checkpoint_name(config, l.path + ".weight"));
        }
      }
    }
    const size_t merged = stream_tensors(base, config, factors, dtype, adapter->path(), nf4_names,
                                         stored, opt, writer);
    if (!factors.empty()) {
      throw Error(adapter->path() + ": adapter module '" + factors.begin()->first +
                      "' has no weight in the base model " + opt.model_dir + " (" +
                      std::to_string(factors.size()) + " unmatched)",
                  ErrorKind::kInternal);  // check_checkpoint guarantees every weight
    }
    writer.finish();

    // config.json: only the dtype key changes ("dtype" in transformers 5,
    // "torch_dtype" in 4.x; the 4.x key when the base has neither).
    bool has_key = false;
    for (const char* key : {"dtype", "torch_dtype"}) {
      if (cfg.contains(key)) cfg[key] = model::dtype_string(dtype), has_key = true;
    }
    if (!has_key) cfg["torch_dtype"] = model::dtype_string(dtype);
    // A multimodal config's text_config may carry its own dtype key.
    if (auto tc = cfg.find("text_config"); tc != cfg.end() && tc->is_object()) {
      for (const char* key : {"dtype", "torch_dtype"}) {
        if (tc->contains(key) && !(*tc)[key].is_null()) (*tc)[key] = model::dtype_string(dtype);
      }
    }
    cfg.erase("quantization_config");  // the weights written are dequantized
    io::write_file_atomic((fs::path(out.path()) / "config.json").string(), cfg.dump(2) + "\n");
    for (const auto& name : companion_files(opt.model_dir)) {
      std::error_code ec;
      fs::copy_file(fs::path(opt.model_dir) / name, fs::path(out.path()) / name, ec);
      if (ec) {
        throw Error((fs::path(opt.model_dir) / name).string() + ": cannot copy into " + out.path() +
                        ": " + ec.message(),
                    ErrorKind::kIo);
      }
    }
    io::write_file_atomic((fs::path(out.path()) / "README.md").string(),
                          model_card(opt, config, spec, dtype, merged));
  }
  check_stop(opt);
  out.commit();
}

}  // namespace loratune::exporter
