// trainer/chat/jinja_budgets.cpp — the active render's budgets and
// clock (thread-local, set by BudgetScope) and the size checks the value
// helpers share.
#include "trainer/chat/jinja_budgets.h"

#include <chrono>
#include <cstdint>

#include "trainer/chat/jinja_value.h"

namespace loratune::jinja {
namespace {

thread_local const Budgets* t_budgets = nullptr;
thread_local double t_start = 0;  // steady clock seconds when the render began

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

const Budgets& active_budgets() {
  static const Budgets kDefaults;
  return t_budgets ? *t_budgets : kDefaults;
}

BudgetScope::BudgetScope(const Budgets& b) : saved_budgets_(t_budgets), saved_start_(t_start) {
  t_budgets = &b;
  t_start = now_seconds();
}

BudgetScope::~BudgetScope() {
  t_budgets = saved_budgets_;
  t_start = saved_start_;
}

void check_render_time() {
  if (!t_budgets) return;
  if (now_seconds() - t_start <= t_budgets->max_seconds) return;
  throw Failure{"rendering took longer than the limit of " +
                    std::to_string(static_cast<int64_t>(t_budgets->max_seconds * 1000)) + " ms",
                ErrorKind::kResource};
}

void check_value_bytes(size_t bytes, const std::string& what) {
  const size_t limit = active_budgets().max_value_bytes;
  if (bytes <= limit) return;
  throw Failure{what + " of " +
                    (bytes == SIZE_MAX ? std::string("more than 2^64") : std::to_string(bytes)) +
                    " bytes exceeds the limit of " + std::to_string(limit) + " bytes per value",
                ErrorKind::kResource};
}

size_t saturating_mul(size_t a, int64_t n) {
  if (n <= 0 || a == 0) return 0;
  const auto un = static_cast<uint64_t>(n);
  return a > SIZE_MAX / un ? SIZE_MAX : a * static_cast<size_t>(un);
}

}  // namespace loratune::jinja
