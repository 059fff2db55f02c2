// Checkpoints: checkpoints/step-N/{adapter/, optimizer.safetensors, state.json,
// metrics.jsonl}, written atomically with io::AtomicDir.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/stack.h>
#include <torch/cuda.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <limits>
#include <mutex>

#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/peft_io.h"
#include "trainer/train/train.h"

namespace fs = std::filesystem;

namespace loratune::train {

namespace {

constexpr const char* kStepPrefix = "step-";

// step-N directories of run_dir/checkpoints, sorted by N.
std::vector<std::pair<int64_t, std::string>> checkpoints_of(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind(kStepPrefix, 0) != 0) continue;
    // Only names the writer gives: "step-N", N a positive int64 without
    // leading zeros. Anything else (step-x, step-007, step-99999999999999999999)
    // is not a checkpoint of this run and is ignored.
    const std::string num = name.substr(5);
    int64_t step = 0;
    const auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), step);
    if (ec != std::errc() || end != num.data() + num.size() || step <= 0 ||
        std::to_string(step) != num) {
      continue;
    }
    // AtomicDir renames complete directories into place: state.json marks one.
    if (!fs::exists(e.path() / "state.json")) continue;
    out.emplace_back(step, e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// PEFT tensor names of the adapter parameters, in AdamW's parameter order.
std::vector<std::string> param_names(model::CausalLMImpl& model, const AdamW& opt) {
  auto named = lora::adapter_tensors(model);
  const auto& params = opt.params();
  if (named.size() != params.size()) {
    throw Error("checkpoint: " + std::to_string(named.size()) + " adapter tensors but the " +
                "optimizer holds " + std::to_string(params.size()) + " parameters");
  }
  std::vector<std::string> names;
  for (size_t i = 0; i < named.size(); ++i) {
    if (named[i].second.data_ptr() != params[i].data_ptr()) {
      throw Error("checkpoint: adapter tensor " + named[i].first +
                  " is not the optimizer's parameter " + std::to_string(i));
    }
    names.push_back(named[i].first);
  }
  return names;
}

constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();

// The integer `obj[field]` (default: the last part of `key`) of state.json
// `path`, in [lo, hi]; otherwise Error (kCorrupt) naming the file and `key`.
int64_t state_int(const nlohmann::json& obj, const std::string& path, const std::string& key,
                  int64_t lo, int64_t hi, const std::string& field = "") {
  const auto it = obj.find(field.empty() ? key : field);
  std::string problem;
  if (it == obj.end()) {
    problem = "is missing";
  } else if (!it->is_number_integer()) {
    problem = "must be an integer (got " + printable(it->dump(), 60) + ")";
  } else if (it->is_number_unsigned()
                 ? it->get<uint64_t>() > static_cast<uint64_t>(hi) ||
                       (lo > 0 && it->get<uint64_t>() < static_cast<uint64_t>(lo))
                 : (it->get<int64_t>() < lo || it->get<int64_t>() > hi)) {
    problem = "is " + printable(it->dump(), 60) + ", outside [" + std::to_string(lo) + ", " +
              (hi == kMaxInt ? std::string("2^63-1") : std::to_string(hi)) + "]";
  }
  if (!problem.empty()) {
    throw Error(path + ": key '" + key + "' " + problem + "; the checkpoint is damaged",
                ErrorKind::kCorrupt);
  }
  return it->get<int64_t>();
}

// The checkpoint's copy of metrics.jsonl (resume continues the run's
// metrics.jsonl from it): every line a record StepLogger or the evaluation
// writes, a JSON object with a "split" and an integer "step" in [1, step].
// Absent is fine (nothing was logged yet); anything else is Error (kCorrupt)
// naming the file and line, so nothing foreign is copied into the run.
void check_metrics_copy(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  const std::string text = io::read_file(path);
  int64_t lineno = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++lineno;
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool ok = j.is_object() && j.contains("split") && j.at("split").is_string() &&
                    j.contains("step") && j.at("step").is_number_integer() &&
                    j.at("step").get<int64_t>() >= 1 && j.at("step").get<int64_t>() <= step;
    if (!ok) {
      throw Error(path + ":" + std::to_string(lineno) +
                      ": not a metrics record of this checkpoint (a JSON object with \"split\" "
                      "and an integer \"step\" in [1, " +
                      std::to_string(step) + "]): " + printable(line, 80) +
                      "; the checkpoint is damaged",
                  ErrorKind::kCorrupt);
    }
  }
}

at::Tensor cpu_rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return at::Tensor(gen.get_state());
}

}  // namespace

bool adapter_is_finite(model::CausalLMImpl& model) {
  std::vector<at::Tensor> flags;
  for (const auto& [name, t] : lora::adapter_tensors(model)) flags.push_back(at::isfinite(t).all());
  if (flags.empty()) return true;
  return at::stack(flags).all().item<bool>();
}

std::string save_checkpoint(const std::string& run_dir, model::CausalLMImpl& model,
                            const lora::LoraSpec& spec, AdamW& opt, const TrainState& state,
                            int64_t keep) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  if (!adapter_is_finite(model)) {
    const std::string last = latest_checkpoint(run_dir);
    throw Error("step " + std::to_string(state.step) +
                    ": the LoRA weights are not finite (NaN or inf); no checkpoint written" +
                    (last.empty() ? std::string() : "; the last finite checkpoint is " + last) +
                    " (lower train.optimizer.lr or set train.max_grad_norm)",
                ErrorKind::kData);
  }
  fs::create_directories(root);
  const std::string target = (root / (kStepPrefix + std::to_string(state.step))).string();
  {
    io::AtomicDir dir(target, /*overwrite=*/true);
    lora::save_adapter(dir.path() + "/adapter", model, spec, /*overwrite=*/false);

    io::NamedTensors tensors;
    const std::vector<std::string> names = param_names(model, opt);
    // adapter/ holds what a user loads (for PiSSA / OLoRA the rank-2r plain
    // LoRA); resuming needs the parameters themselves, kept here then.
    const bool raw_params = lora::rewrites_base(spec);
    for (size_t i = 0; i < names.size(); ++i) {
      if (raw_params) tensors.emplace_back(names[i], opt.params()[i]);
      tensors.emplace_back(names[i] + ".exp_avg", opt.exp_avg()[i]);
      tensors.emplace_back(names[i] + ".exp_avg_sq", opt.exp_avg_sq()[i]);
      tensors.emplace_back(names[i] + ".step", opt.steps()[i]);
    }
    tensors.emplace_back("rng.cpu", cpu_rng_state());
    if (torch::cuda::is_available()) {
      for (size_t d = 0; d < static_cast<size_t>(torch::cuda::device_count()); ++d) {
        auto gen = at::globalContext().defaultGenerator(
            c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(d)));
        std::lock_guard<std::mutex> lock(gen.mutex());
        tensors.emplace_back("rng.cuda." + std::to_string(d), at::Tensor(gen.get_state()));
      }
    }
    io::save_file(tensors, dir.path() + "/optimizer.safetensors");

    nlohmann::ordered_json js;
    js["step"] = state.step;
    js["total_steps"] = state.total_steps;
    js["data_position"] = {{"epoch", state.data_position.epoch},
                           {"index", state.data_position.index}};
    js["tokens_seen"] = state.tokens_seen;
    js["elapsed_s"] = state.elapsed_s;
    js["world_size"] = state.world_size;
    // 0 (unknown) is written as an older checkpoint has it: no key.
    if (state.sequences_per_step > 0) js["sequences_per_step"] = state.sequences_per_step;
    const fs::path metrics = fs::path(run_dir) / "metrics.jsonl";
    if (fs::exists(metrics)) fs::copy_file(metrics, fs::path(dir.path()) / "metrics.jsonl");
    io::write_file_atomic(dir.path() + "/state.json", js.dump(2) + "\n");
    dir.commit();
  }
  if (keep > 0) {
    auto all = checkpoints_of(run_dir);
    for (size_t i = 0; i + keep < all.size(); ++i) fs::remove_all(all[i].second);
  }
  return target;
}

std::string latest_checkpoint(const std::string& run_dir) {
  auto all = checkpoints_of(run_dir);
  return all.empty() ? std::string() : all.back().second;
}

TrainState load_checkpoint(const std::string& ckpt_dir, model::CausalLMImpl& model, AdamW& opt) {
  // state.json: every field range-checked against what save_checkpoint can
  // write, so a damaged or edited file never trains with, e.g., a negative
  // step (a negative learning rate) or skips the run's steps.
  const std::string state_path = ckpt_dir + "/state.json";
  const nlohmann::json js = io::read_json(state_path);
  if (!js.is_object()) throw Error(state_path + ": not a JSON object", ErrorKind::kCorrupt);
  TrainState st;
  // Written after a step, never past the run's last one.
  st.total_steps = state_int(js, state_path, "total_steps", 1, kMaxInt);
  st.step = state_int(js, state_path, "step", 1, st.total_steps);
  if (!js.contains("data_position") || !js.at("data_position").is_object()) {
    throw Error(state_path + ": key 'data_position' must be an object {\"epoch\", \"index\"}",
                ErrorKind::kCorrupt);
  }
  const nlohmann::json& pos = js.at("data_position");
  st.data_position.epoch = state_int(pos, state_path, "data_position.epoch", 0, kMaxInt, "epoch");
  st.data_position.index = state_int(pos, state_path, "data_position.index", 0, kMaxInt, "index");
  st.tokens_seen = state_int(js, state_path, "tokens_seen", 0, kMaxInt);
  const auto elapsed = js.find("elapsed_s");
  if (elapsed == js.end() || !elapsed->is_number() || !std::isfinite(elapsed->get<double>()) ||
      elapsed->get<double>() < 0) {
    throw Error(state_path + ": key 'elapsed_s' must be a finite number >= 0" +
                    (elapsed == js.end() ? std::string(" (missing)")
                                         : " (got " + printable(elapsed->dump(), 60) + ")"),
                ErrorKind::kCorrupt);
  }
  st.elapsed_s = elapsed->get<double>();
  // Both absent in checkpoints older than these fields (1 rank, unknown).
  if (js.contains("world_size"))
    st.world_size = state_int(js, state_path, "world_size", 1, 1 << 20);
  if (js.contains("sequences_per_step")) {
    st.sequences_per_step = state_int(js, state_path, "sequences_per_step", 1, kMaxInt);
  }
  check_metrics_copy(ckpt_dir + "/metrics.jsonl", st.step);
  // The adapter a user may take from the checkpoint is checked as every
  // adapter reader checks one (adapter_config.json's ranks and targets
  // against its tensors and the model), whether or not resuming reads it.
  lora::open_adapter(ckpt_dir + "/adapter", lora::linear_shapes_of(model));
  auto file = io::SafetensorsFile::open(ckpt_dir + "/optimizer.safetensors");
  const std::vector<std::string> names = param_names(model, opt);
  // A run whose init rewrote the base keeps its parameters beside the
  // optimizer state (save_checkpoint); others read them from adapter/.
  const bool raw_params = !names.empty() && file->contains(names[0]);
  if (!raw_params) lora::load_adapter_weights(ckpt_dir + "/adapter", model);
  auto copy_into = [&](const std::string& name, at::Tensor& dst) {
    if (!file->contains(name))
      throw Error(file->path() + ": missing tensor '" + name + "'", ErrorKind::kCorrupt);
    at::Tensor src = file->tensor(name);
    if (src.sizes() != dst.sizes() || src.scalar_type() != dst.scalar_type()) {
      throw Error(file->path() + ": tensor '" + name + "' has the wrong shape or dtype",
                  ErrorKind::kCorrupt);
    }
    dst.copy_(src);
  };
  for (size_t i = 0; i < names.size(); ++i) {
    if (raw_params) {
      at::NoGradGuard no_grad;
      at::Tensor p = opt.params()[i];
      copy_into(names[i], p);
    }
    copy_into(names[i] + ".exp_avg", opt.exp_avg()[i]);
    copy_into(names[i] + ".exp_avg_sq", opt.exp_avg_sq()[i]);
    copy_into(names[i] + ".step", opt.steps()[i]);
  }
  if (!file->contains("rng.cpu"))
    throw Error(file->path() + ": missing tensor 'rng.cpu'", ErrorKind::kCorrupt);
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(file->tensor("rng.cpu").clone());
  }
  if (torch::cuda::is_available()) {
    for (size_t d = 0; d < static_cast<size_t>(torch::cuda::device_count()); ++d) {
      const std::string name = "rng.cuda." + std::to_string(d);
      if (!file->contains(name)) continue;  // checkpoint written on a CPU machine
      auto gen = at::globalContext().defaultGenerator(
          c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(d)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(file->tensor(name).clone());
    }
  }
  return st;
}

}  // namespace loratune::train
