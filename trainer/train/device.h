// trainer/train/device.h — what the training loop needs from its device
// besides tensor ops: page-locked staging and asynchronous copies for
// batches, peak-memory statistics, and device-side step timing.
//
// Every function works for any device. The CUDA parts (caching-allocator
// statistics, CUDA events) are compiled only when LibTorch has CUDA
// (LORATUNE_WITH_CUDA=1, set by CMake); elsewhere they report nothing and
// time with the host clock. None of these functions synchronises the host
// with the device except DeviceTimer::elapsed_ms.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>

namespace loratune::train {

// True when this build holds the CUDA code (a CUDA LibTorch).
bool built_with_cuda();

// An uninitialised host tensor to stage data bound for `device`: page-locked
// (pinned) when `device` is CUDA, so that to_device can copy asynchronously;
// ordinary memory otherwise.
at::Tensor host_staging(at::IntArrayRef sizes, at::ScalarType dtype, const c10::Device& device);

// `host` on `device`. From pinned memory to CUDA the copy is non_blocking on
// the current stream; the caching host allocator keeps the pinned block
// until the copy has run, so the caller may drop `host` at once. A CPU
// `device` returns `host` itself (no copy).
at::Tensor to_device(const at::Tensor& host, const c10::Device& device);

// Bytes held by LibTorch's caching allocator on one device.
struct MemoryStats {
  int64_t allocated = 0;       // now
  int64_t peak_allocated = 0;  // since the start or the last reset_peak_memory
  int64_t peak_reserved = 0;   // the same for memory reserved from the driver
};

// The CUDA caching allocator's statistics for `device`; nullopt on CPU and
// in builds without CUDA.
std::optional<MemoryStats> memory_stats(const c10::Device& device);

// This process's resident memory (VmRSS) and its peak since start (VmHWM),
// in bytes, from /proc/self/status; zeros where that cannot be read.
struct HostMemory {
  int64_t rss = 0;
  int64_t peak_rss = 0;
};
HostMemory host_memory();

// Starts the peak counters of `device` again (no-op where there are none).
void reset_peak_memory(const c10::Device& device);

// Device time from start() to stop(). On CUDA two events recorded on the
// current stream (recording does not wait); on CPU the host clock, which is
// device time there. Reusable: start() again begins a new interval.
class DeviceTimer {
 public:
  explicit DeviceTimer(const c10::Device& device);
  ~DeviceTimer();
  DeviceTimer(const DeviceTimer&) = delete;
  DeviceTimer& operator=(const DeviceTimer&) = delete;
  void start();
  void stop();
  // Milliseconds of the last start..stop interval; waits for the stop event
  // (one host-device sync). 0 before a complete interval.
  double elapsed_ms();
  // True when the time comes from device events rather than the host clock.
  bool uses_events() const;

 private:
  struct Events;  // CUDA events (device.cpp), null on CPU
  std::unique_ptr<Events> events_;
  std::chrono::steady_clock::time_point t0_, t1_;
  bool started_ = false, stopped_ = false;
};

}  // namespace loratune::train
