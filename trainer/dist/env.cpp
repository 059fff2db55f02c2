// torchrun's environment.
#include <cerrno>
#include <cstdlib>
#include <optional>

#include "trainer/dist/dist.h"
#include "trainer/io/error.h"

namespace loratune::dist {

namespace {

// A whole decimal number in [lo, hi], or Error naming the variable.
int parse_int(const char* name, const char* text, int lo, int hi) {
  const std::string s = text == nullptr ? "" : text;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) {
    throw Error(std::string("environment variable ") + name + "='" + printable(s, 40) +
                "' is not a whole number in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                "] (set by torchrun; launch with `torchrun --nproc-per-node N --no-python "
                "loratune train CONFIG`)");
  }
  return static_cast<int>(v);
}

}  // namespace

std::optional<LaunchEnv> launch_env(const std::function<const char*(const char*)>& get_fn) {
  auto get = [&](const char* name) -> const char* {
    return get_fn ? get_fn(name) : std::getenv(name);
  };
  if (get("WORLD_SIZE") == nullptr) {
    // A rank other than 0 alone would write rank 0's outputs as a second
    // writer of the same run; RANK=0 (or none) is a plain run.
    const char* rank = get("RANK");
    if (rank != nullptr && std::string(rank) != "0") {
      throw Error(std::string("environment variable RANK='") + printable(rank, 40) +
                  "' is set but WORLD_SIZE is not: a distributed run needs RANK, WORLD_SIZE, "
                  "MASTER_ADDR and MASTER_PORT (torchrun sets them all); unset RANK for a "
                  "single-process run");
    }
    return std::nullopt;
  }
  auto required = [&](const char* name) {
    const char* v = get(name);
    if (v == nullptr) {
      throw Error(std::string("WORLD_SIZE is set but ") + name +
                  " is not: a distributed run needs RANK, WORLD_SIZE, MASTER_ADDR and "
                  "MASTER_PORT (torchrun sets them all)");
    }
    return v;
  };
  LaunchEnv e;
  e.world_size = parse_int("WORLD_SIZE", get("WORLD_SIZE"), 1, 1 << 20);
  e.rank = parse_int("RANK", required("RANK"), 0, e.world_size - 1);
  const char* local = get("LOCAL_RANK");
  e.local_rank = local == nullptr ? e.rank : parse_int("LOCAL_RANK", local, 0, e.world_size - 1);
  const char* local_world = get("LOCAL_WORLD_SIZE");
  e.local_world_size =
      local_world == nullptr ? 1 : parse_int("LOCAL_WORLD_SIZE", local_world, 1, e.world_size);
  if (e.world_size > 1) {
    e.master_addr = required("MASTER_ADDR");
    if (e.master_addr.empty()) throw Error("environment variable MASTER_ADDR is empty");
    e.master_port = parse_int("MASTER_PORT", required("MASTER_PORT"), 1, 65535);
  }
  if (const char* r = get("TORCHELASTIC_RESTART_COUNT")) {
    e.restart_count = parse_int("TORCHELASTIC_RESTART_COUNT", r, 0, 1 << 30);
  }
  if (const char* a = get("TORCHELASTIC_USE_AGENT_STORE")) {
    e.agent_store = std::string(a) == "True" || std::string(a) == "true" || std::string(a) == "1";
  }
  return e;
}

}  // namespace loratune::dist
