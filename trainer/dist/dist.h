// trainer/dist/dist.h — the ranks of a distributed run: torchrun's
// environment and a c10d process group over it.
//
// loratune does not launch processes or move bytes itself: `torchrun
// --no-python loratune train ...` starts one process per rank and the
// collectives are LibTorch's c10d (Gloo; NCCL is the CUDA build's choice for
// CUDA tensors). The rendezvous is a c10d TCPStore at MASTER_ADDR:MASTER_PORT
// (torchrun's agent store when TORCHELASTIC_USE_AGENT_STORE=True, else
// hosted by rank 0), under a prefix per restart attempt so that a restarted
// group never reads the addresses of a dead one.
//
// Failures: a peer that dies or stops answering makes the next collective
// throw loratune::Error (kind kIo) within the group's timeout instead of
// hanging or aborting, so the process exits and torchrun can restart the
// group (--max-restarts).
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace loratune::dist {

// What torchrun tells each worker through its environment.
struct LaunchEnv {
  int rank = 0;              // RANK
  int world_size = 1;        // WORLD_SIZE
  int local_rank = 0;        // LOCAL_RANK: the GPU index on its node
  int local_world_size = 1;  // LOCAL_WORLD_SIZE (1 when unset)
  std::string master_addr;   // MASTER_ADDR
  int master_port = 0;       // MASTER_PORT
  int restart_count = 0;     // TORCHELASTIC_RESTART_COUNT (0 when unset)
  bool agent_store = false;  // TORCHELASTIC_USE_AGENT_STORE=True
};

// The launch environment read through `get` (std::getenv by default).
// nullopt when WORLD_SIZE is unset: a plain single-process run. Throws
// Error naming the variable when one is missing or malformed, e.g. RANK
// outside [0, WORLD_SIZE).
std::optional<LaunchEnv> launch_env(const std::function<const char*(const char*)>& get = nullptr);

// A process group over all ranks of the run. Every method is a collective:
// all ranks call it in the same order.
class Group {
 public:
  // Rendezvous through the store, then the process group: NCCL when `cuda`
  // (the tensors of the collectives live on the rank's GPU) and the build has
  // it (LORATUNE_WITH_NCCL), else Gloo. Blocks until every rank has joined
  // or `timeout` passes (then throws); `timeout` also bounds every later
  // collective. With NCCL, call it with the rank's GPU current.
  //
  // Collectives of one process group complete in the order each rank issued
  // them, so every rank must issue them in the same order. `gradient_lane`
  // gives all_reduce_sum_async a process group of its own, ordered
  // independently of the other collectives: a run whose backward pass issues
  // both all-gathers (train.shard_base) and gradient all-reduces needs it.
  Group(const LaunchEnv& env, std::chrono::milliseconds timeout, bool cuda = false,
        bool gradient_lane = false);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }
  const LaunchEnv& env() const { return env_; }
  const std::string& backend() const { return backend_name_; }  // "gloo" or "nccl"

  // t <- the sum of every rank's t, in place. t contiguous, on the CPU or
  // (NCCL: only) the rank's GPU. Returns when the result is in t, or, with
  // NCCL, when the current stream will see it.
  void all_reduce_sum(at::Tensor& t);

  // out [world_size * n] <- every rank's in [n], in rank order. Both
  // contiguous, same dtype and device.
  void all_gather(at::Tensor& out, const at::Tensor& in);

  // A collective started but not yet waited for.
  class Pending {
   public:
    ~Pending();
    // Returns when the result is in place (throws like the blocking calls).
    void wait();

   private:
    friend class Group;
    struct Work;
    Pending(std::unique_ptr<Work> work, Group& group);
    std::unique_ptr<Work> work_;
    Group& group_;
  };
  // all_gather started in the background (Gloo's threads, or NCCL's stream):
  // `out` and `in` must stay alive and untouched until wait() returns.
  std::unique_ptr<Pending> all_gather_async(at::Tensor& out, const at::Tensor& in);
  // t <- the sum of every rank's t, started in the background on the
  // gradient lane (see the constructor). `t` contiguous; it must stay alive
  // and untouched until wait() returns. May be called from the autograd
  // engine's threads.
  std::unique_ptr<Pending> all_reduce_sum_async(at::Tensor& t);

  // The start-up agreement, through the store (it works when the collectives
  // cannot): every rank reports whether `phase` failed on it (`error` set).
  // When any rank failed, every rank throws: the failing ranks their own
  // error, the others Error "rank R failed during PHASE: <its message>".
  // Waits at most the group's timeout for the other ranks.
  void check_all_ok(const std::string& phase, const std::exception_ptr& error);

  // Rank 0's `value` on every rank (the others' argument is ignored). `key`
  // names it in the store and must be unique per call.
  std::string share_string(const std::string& key, const std::string& value);

 private:
  struct Impl;
  LaunchEnv env_;
  std::string backend_name_ = "gloo";
  std::unique_ptr<Impl> impl_;
};

}  // namespace loratune::dist
