// Checkpoints: checkpoints/step-N/{adapter/, optimizer.safetensors, state.json,
// metrics.jsonl}, written atomically with io::AtomicDir.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/stack.h>
#include <torch/cuda.h>

#include <algorithm>
#include <filesystem>
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
    const std::string num = name.substr(5);
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) continue;
    // AtomicDir renames complete directories into place: state.json marks one.
    if (!fs::exists(e.path() / "state.json")) continue;
    out.emplace_back(std::stoll(num), e.path().string());
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
    js["sequences_per_step"] = state.sequences_per_step;
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
  auto file = io::SafetensorsFile::open(ckpt_dir + "/optimizer.safetensors");
  const std::vector<std::string> names = param_names(model, opt);
  // A run whose init rewrote the base keeps its parameters beside the
  // optimizer state (save_checkpoint); others read them from adapter/.
  const bool raw_params = !names.empty() && file->contains(names[0]);
  if (!raw_params) lora::load_adapter_weights(ckpt_dir + "/adapter", model);
  auto copy_into = [&](const std::string& name, at::Tensor& dst) {
    if (!file->contains(name)) throw Error(file->path() + ": missing tensor '" + name + "'");
    at::Tensor src = file->tensor(name);
    if (src.sizes() != dst.sizes() || src.scalar_type() != dst.scalar_type()) {
      throw Error(file->path() + ": tensor '" + name + "' has the wrong shape or dtype");
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
  if (!file->contains("rng.cpu")) throw Error(file->path() + ": missing tensor 'rng.cpu'");
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
  nlohmann::json js = io::read_json(ckpt_dir + "/state.json");
  TrainState st;
  try {
    st.step = js.at("step").get<int64_t>();
    st.total_steps = js.at("total_steps").get<int64_t>();
    st.data_position.epoch = js.at("data_position").at("epoch").get<int64_t>();
    st.data_position.index = js.at("data_position").at("index").get<int64_t>();
    st.tokens_seen = js.at("tokens_seen").get<int64_t>();
    st.elapsed_s = js.at("elapsed_s").get<double>();
    if (js.contains("world_size")) st.world_size = js.at("world_size").get<int64_t>();
    if (js.contains("sequences_per_step")) {
      st.sequences_per_step = js.at("sequences_per_step").get<int64_t>();
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(ckpt_dir + "/state.json: " + e.what());
  }
  return st;
}

}  // namespace loratune::train
