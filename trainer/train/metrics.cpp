// metrics.jsonl: the writer, the step logger, reading final losses back.
#include <ATen/ops/stack.h>

#include <algorithm>
#include <fstream>

#include "trainer/io/error.h"
#include "trainer/train/device.h"
#include "trainer/train/train.h"

namespace loratune::train {

MetricsLog::MetricsLog(std::string path) : path_(std::move(path)) {
  if (path_.empty()) return;
  std::ofstream f(path_, std::ios::app);
  if (!f) throw Error(path_ + ": cannot open for appending", ErrorKind::kIo);
}

void MetricsLog::write(const nlohmann::ordered_json& record) {
  if (path_.empty()) return;
  std::ofstream f(path_, std::ios::app);
  // Non-finite numbers are written as null (JSON has no NaN).
  f << record.dump() << '\n';
  f.flush();
  if (!f) throw Error(path_ + ": write failed", ErrorKind::kIo);
}

// --- StepLogger ------------------------------------------------------------------

namespace {
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
}  // namespace

StepLogger::StepLogger(MetricsLog& log, Progress& progress, DeviceTimer& timer,
                       const c10::Device& device, int64_t max_bad_steps, double elapsed0)
    : log_(log),
      progress_(progress),
      timer_(timer),
      device_(device),
      max_bad_steps_(max_bad_steps),
      window_start_s_(elapsed0) {}

void StepLogger::open_window() {
  if (window_open_) return;
  timer_.start();
  window_open_ = true;
}

void StepLogger::add(int64_t step, StepResult r) {
  window_tokens_ += r.tokens;
  pending_.emplace_back(step, std::move(r));
}

bool StepLogger::flush(double elapsed_s) {
  if (pending_.empty()) return true;
  const double dt = std::max(1e-9, elapsed_s - window_start_s_);
  const double tps = static_cast<double>(window_tokens_) / dt;
  timer_.stop();
  window_open_ = false;
  const bool on_events = timer_.uses_events();
  const double step_ms = timer_.elapsed_ms() / static_cast<double>(pending_.size());
  const std::optional<MemoryStats> mem = memory_stats(device_);
  // [steps,3] (loss, grad_norm, found_inf) in one device-to-host copy.
  std::vector<at::Tensor> rows;
  for (auto& [step, r] : pending_) {
    rows.push_back(at::stack({r.loss, r.grad_norm, r.found_inf.to(r.loss.scalar_type())}));
  }
  const at::Tensor host = at::stack(rows).to(at::kCPU, at::kDouble);
  const double* v = host.data_ptr<double>();
  bool ok = true;
  double last_loss = 0, last_norm = 0;
  for (size_t i = 0; i < pending_.size(); ++i) {
    const auto& [step, r] = pending_[i];
    const double loss = v[3 * i], norm = v[3 * i + 1];
    const bool skipped = v[3 * i + 2] != 0.0;
    last_loss = loss;
    last_norm = norm;
    nlohmann::ordered_json j;
    j["step"] = step;
    j["split"] = "train";
    j["loss"] = loss;
    j["lr"] = r.lr;
    j["grad_norm"] = norm;
    j["tokens"] = r.tokens;
    j["tokens_per_s"] = tps;
    j["elapsed_s"] = elapsed_s;
    if (on_events) j["step_ms"] = step_ms;
    if (mem) {
      j["mem_allocated_gib"] = static_cast<double>(mem->allocated) / kGiB;
      j["mem_peak_gib"] = static_cast<double>(mem->peak_allocated) / kGiB;
    }
    if (skipped) j["skipped"] = true;
    log_.write(j);
    if (skipped) {
      ++bad_run_;
      progress_.message("loratune: warning: step " + std::to_string(step) +
                        ": non-finite loss or gradient (loss " + std::to_string(loss) +
                        ", grad_norm " + std::to_string(norm) + "); update skipped (" +
                        std::to_string(bad_run_) + " in a row)");
      if (bad_run_ >= max_bad_steps_) ok = false;
    } else {
      bad_run_ = 0;
    }
  }
  const auto& last = pending_.back();
  progress_.update(last.first, last_loss, last.second.lr, tps, elapsed_s, last_norm);
  pending_.clear();
  window_start_s_ = elapsed_s;
  window_tokens_ = 0;
  return ok;
}

// --- reading back ------------------------------------------------------------------

FinalLosses read_final_losses(const std::string& metrics_path) {
  FinalLosses out;
  std::ifstream f(metrics_path);
  if (!f) throw Error(metrics_path + ": cannot open", ErrorKind::kIo);
  std::string line;
  int64_t lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) {
      throw Error(metrics_path + ":" + std::to_string(lineno) + ": not a JSON object",
                  ErrorKind::kCorrupt);
    }
    if (auto step = j.find("step"); step != j.end() && step->is_number_integer()) {
      out.last_step = std::max(out.last_step, step->get<int64_t>());
    }
    auto split = j.find("split");
    auto loss = j.find("loss");
    if (split == j.end() || loss == j.end() || !split->is_string()) continue;
    std::optional<double> v;
    if (loss->is_number()) v = loss->get<double>();
    if (*split == "train") out.train = v;
    if (*split == "val") out.val = v;
  }
  return out;
}

}  // namespace loratune::train
