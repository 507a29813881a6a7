// Host memory for the swapping policies' pools: exactly the bytes the plan
// needs (rounded up to whole pages), mapped outside c10's CPU allocator and
// PyTorch's pinned host cache, pinned for CUDA by registering it with the
// driver, and given back to the system when the last tensor viewing it goes.
//
// Why not at::empty(pinned_memory): PyTorch's caching host allocator rounds
// every block up to a power of two and never returns it (36.6 GB pins
// 64 GiB, and two policies' pools stay pinned side by side in one process).
// Why outside c10's CPU allocator: on a CPU run that allocator is the
// "device" (the memory meter wraps it), so the host pool would count as
// device memory.
//
// Also here: the host memory budget the pools may use (`--host-memory-gib`,
// else a default read from /proc/meminfo and the cgroup), with where the
// figure came from, for the run's header.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

#include "core/error.h"

namespace memo::memory {

// The host pool does not fit: the plan needs more host memory than the
// budget, or the system refused to map or pin it. Bad input to a run (exit 2
// in `memo train`), one row's result in `memo bench`.
class HostMemoryError : public InputError {
 public:
  HostMemoryError(const std::string& what, double needed_bytes, double budget_bytes)
      : InputError(what), needed_bytes(needed_bytes), budget_bytes(budget_bytes) {}
  double needed_bytes;  // what the pool would need (0 when unknown)
  double budget_bytes;  // what it was allowed (0 when unknown)
};

class HostPool {
 public:
  HostPool() = default;
  // `bytes` of page-aligned host memory (at least one page). For a CUDA
  // `device` the memory is pinned (cudaHostRegister, timed) in a MEMO_CUDA
  // build; on CPU, or without MEMO_CUDA, it is not. Throws HostMemoryError
  // when the memory cannot be mapped or pinned.
  HostPool(int64_t bytes, c10::Device device);

  // [mapped_bytes()] uint8 on the CPU. The memory lives as long as this
  // tensor or any view of it; the last one unpins (after waiting for the
  // device) and unmaps it.
  const at::Tensor& tensor() const { return tensor_; }
  int64_t mapped_bytes() const { return mapped_; }
  int64_t pinned_bytes() const { return pinned_; }  // 0 when not pinned
  double pin_seconds() const { return pin_seconds_; }

  // Bytes mapped (and pinned) by every HostPool of the process and not yet
  // given back: what tests check returns to its old value.
  static int64_t live_bytes();
  static int64_t live_pinned_bytes();

 private:
  at::Tensor tensor_;
  int64_t mapped_ = 0;
  int64_t pinned_ = 0;
  double pin_seconds_ = 0;
};

// The CUDA half (src/cuda/host_pin_cuda.cpp): registers [ptr, ptr + bytes)
// with the driver for `device` and returns the seconds it took; throws
// HostMemoryError when the driver refuses. Unpinning first waits for the
// device, so no copy still in flight reads or writes unmapped memory.
#ifdef MEMO_WITH_CUDA
double cuda_pin_host(void* ptr, int64_t bytes, c10::DeviceIndex device);
void cuda_unpin_host(void* ptr, c10::DeviceIndex device);
#endif

// How much host memory the pools may use, and where that figure came from.
struct HostBudget {
  double bytes = 0;     // 0: unknown (no limit is applied)
  std::string source;   // "--host-memory-gib", "MemTotal 128.0 GiB x 0.75 - 2.1 GiB in use, /proc/meminfo"...
};

// The default share of the machine's memory the pools may take.
constexpr double kHostBudgetFraction = 0.75;

// `flag_gib` > 0 wins. Otherwise, from /proc/meminfo's text: MemTotal x 0.75
// minus the memory processes hold (AnonPages + Shmem), and never less than
// half of MemAvailable (the old default). MemTotal rather than MemAvailable
// because on a VM whose RAM grows as it is used (a balloon that deflates on
// demand) MemAvailable starts far below what the run will get, while the
// balloon's pages are in neither AnonPages nor Shmem. When a cgroup limit is
// set (`cgroup_max` not "max"), the budget is at most that limit x 0.75 minus
// the cgroup's present use (`cgroup_current`). Pure, for tests.
HostBudget host_budget_from(double flag_gib, const std::string& meminfo, const std::string& cgroup_max,
                            const std::string& cgroup_current);
// The same, reading /proc/meminfo and the limit and usage of the tightest of
// this process's memory cgroups (its own or an ancestor, v2 or v1), both read
// by memory/host_memory.h.
HostBudget host_budget(double flag_gib);

}  // namespace memo::memory
