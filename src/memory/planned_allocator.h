// The request profiler and the planned allocator (docs/design.md section 6). The
// device-independent part lives here: one object per process, three modes:
//   pass-through: every request goes to the device's fallback allocator;
//   recording:    the same, and every request and free of the training thread
//                 is logged with the current region, giving a RequestTrace;
//   planned:      the k-th request of a step gets arena + offset[k] when its
//                 size matches the plan, it comes on the step's compute
//                 stream and the bytes there are free; anything else goes to
//                 the fallback and is counted, never misplaced.
// The device halves: the CPU one (cpu_planned_allocator.cpp) is a
// c10::Allocator installed as the CPU allocator, so CI tests the logic; the
// CUDA one (src/cuda/, built with MEMO_CUDA) is PyTorch's pluggable CUDA
// allocator, installed before the first CUDA allocation, with the native
// caching allocator as its fallback; its pointer bookkeeping is
// PointerPlannedAllocator (pointer_planned_allocator.h), tested on CPU.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "plan/bilevel.h"

namespace memo::memory {

struct PlannedStats {
  int64_t planned = 0;         // requests served from the arena
  int64_t fallback = 0;        // planned-step requests that missed the plan (size, stream, overlap, beyond)
  int64_t unplanned = 0;       // requests outside planned steps, from other threads, or left to the
                               // fallback by the plan (alive after the step, on another stream)
  int64_t base_allocs = 0;     // requests handed to the fallback allocator ...
  int64_t base_frees = 0;      // ... and their frees
  int64_t first_fallback_request = -1;  // the first miss of a planned step: its index ...
  int64_t first_fallback_bytes = 0;     // ... and size, for the report
  int64_t live_planned_bytes = 0;
  int64_t peak_live_planned_bytes = 0;
};

class PlannedAllocator {
 public:
  virtual ~PlannedAllocator() = default;

  // Installs the planned allocator for `device` (idempotent for the same
  // device type). CPU: always; CUDA: only in a MEMO_CUDA build, and before
  // the first CUDA allocation. Throws InputError otherwise.
  static PlannedAllocator& install(c10::Device device = c10::Device(c10::DeviceType::CPU));
  // The installed instance, or nullptr.
  static PlannedAllocator* instance();

  virtual c10::DeviceType device_type() const = 0;
  // Offsets of a plan for this device are multiples of this.
  virtual int64_t alignment() const = 0;

  // Step and region boundaries, called by the training thread.
  void begin_step();
  void end_step();
  void begin_region(const std::string& name);
  void end_region();

  void start_recording();
  plan::RequestTrace stop_recording();

  // Allocates the arena and serves planned steps from now on; disarm() frees it.
  // Throws InputError, arming nothing, when a placement lies outside the arena.
  void arm(const plan::BilevelPlan& plan);
  void disarm();
  bool armed() const;
  int64_t arena_bytes() const;

  PlannedStats stats() const;
  void reset_counters();

 protected:
  // Where one request went: arena offset (>= 0) or the fallback (-1), and its
  // index in the recorded trace (-1 when not recording).
  struct Grant {
    int64_t offset = -1;
    int64_t request = -1;
    int64_t bytes = 0;
  };
  // Decides where a request of n bytes on `stream` (an opaque handle; 0 on
  // CPU) goes and books it; when the grant's offset is -1 the caller
  // allocates from its fallback.
  Grant acquire(size_t n, uintptr_t stream = 0);
  // The stream a step runs on, read at begin_step(): only requests on it are
  // planned.
  virtual uintptr_t current_stream() const { return 0; }
  // Books the free of a grant.
  void release(const Grant& grant);
  char* arena_base() const { return arena_; }

  virtual void* allocate_arena(int64_t bytes) = 0;
  virtual void free_arena(void* arena) = 0;

  // The device halves' installers register themselves.
  friend PlannedAllocator& install_cpu_planned_allocator();
  friend PlannedAllocator& install_cuda_planned_allocator();
  static void set_instance(PlannedAllocator* a);

 private:
  bool on_training_thread() const { return std::this_thread::get_id() == thread_; }

  mutable std::mutex mutex_;
  std::thread::id thread_;
  bool in_step_ = false;
  bool recording_ = false;
  bool armed_ = false;
  int64_t clock_ = 0;
  int64_t request_index_ = 0;
  int64_t current_region_ = -1;
  uintptr_t compute_stream_ = 0;
  std::vector<uintptr_t> other_streams_;  // recording: streams other than the compute stream, by first use
  plan::RequestTrace trace_;
  std::vector<plan::Placement> placements_;
  char* arena_ = nullptr;
  int64_t arena_bytes_ = 0;
  std::map<int64_t, int64_t> live_;  // arena offset -> end
  PlannedStats stats_;
};

// The device halves' installers (cpu_planned_allocator.cpp, src/cuda/).
PlannedAllocator& install_cpu_planned_allocator();
#ifdef MEMO_WITH_CUDA
PlannedAllocator& install_cuda_planned_allocator();
#endif

// Marks a region for the profiler while in scope (no-op when not installed).
class RegionScope {
 public:
  explicit RegionScope(const char* name) {
    if (auto* a = PlannedAllocator::instance()) a->begin_region(name), active_ = true;
  }
  ~RegionScope() {
    if (active_) PlannedAllocator::instance()->end_region();
  }
  RegionScope(const RegionScope&) = delete;
  RegionScope& operator=(const RegionScope&) = delete;

 private:
  bool active_ = false;
};

}  // namespace memo::memory
