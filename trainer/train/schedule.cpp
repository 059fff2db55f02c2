// Learning-rate schedules equal to transformers.optimization's
// get_{constant,linear,cosine}_schedule_with_warmup (LambdaLR lambdas).
#include <algorithm>
#include <cmath>

#include "trainer/io/error.h"
#include "trainer/train/train.h"

namespace loratune::train {

int64_t warmup_steps(const config::SchedulerConfig& cfg, int64_t total_steps) {
  if (cfg.warmup_steps) return *cfg.warmup_steps;
  if (cfg.warmup_ratio) {
    // TrainingArguments.get_warmup_steps: math.ceil(num_training_steps * warmup_ratio)
    return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * *cfg.warmup_ratio));
  }
  return 0;
}

LrSchedule::LrSchedule(const config::SchedulerConfig& cfg, double peak_lr, int64_t total_steps)
    : name_(cfg.name),
      peak_(peak_lr),
      warmup_(warmup_steps(cfg, total_steps)),
      total_(total_steps) {
  if (total_steps < 1)
    throw Error("lr schedule: total steps must be >= 1, got " + std::to_string(total_steps));
}

double LrSchedule::lr_at(int64_t step) const {
  const double s = static_cast<double>(step);
  const double w = static_cast<double>(warmup_);
  double lambda = 1.0;
  switch (name_) {
    case config::SchedulerName::kConstant:
      // _get_constant_schedule_with_warmup_lr_lambda
      lambda = step < warmup_ ? s / std::max(1.0, w) : 1.0;
      break;
    case config::SchedulerName::kLinear:
      // _get_linear_schedule_with_warmup_lr_lambda
      if (step < warmup_) {
        lambda = s / static_cast<double>(std::max<int64_t>(1, warmup_));
      } else {
        lambda = std::max(0.0, static_cast<double>(total_ - step) /
                                   static_cast<double>(std::max<int64_t>(1, total_ - warmup_)));
      }
      break;
    case config::SchedulerName::kCosine: {
      // _get_cosine_schedule_with_warmup_lr_lambda, num_cycles = 0.5
      if (step < warmup_) {
        lambda = s / static_cast<double>(std::max<int64_t>(1, warmup_));
      } else {
        const double progress = static_cast<double>(step - warmup_) /
                                static_cast<double>(std::max<int64_t>(1, total_ - warmup_));
        lambda = std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 0.5 * 2.0 * progress)));
      }
      break;
    }
  }
  return peak_ * lambda;
}

}  // namespace loratune::train
