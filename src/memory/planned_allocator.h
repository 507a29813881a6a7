// The request profiler and the planned allocator (DESIGN.md section 5),
// installed as the CPU allocator (CUDA: not yet; see README). One object,
// three modes:
//   pass-through: every request goes to the wrapped allocator, counted;
//   recording:    the same, and every request and free of the training thread
//                 is logged with the current region, giving a RequestTrace;
//   planned:      the k-th request of a step gets arena + offset[k] when its
//                 size matches the plan and the bytes there are free;
//                 anything else goes to the wrapped allocator and is counted
//                 as a fallback, never misplaced.
#pragma once

#include <c10/core/Allocator.h>

#include <atomic>
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
  int64_t fallback = 0;        // planned-step requests that missed the plan (size, overlap, beyond)
  int64_t unplanned = 0;       // requests outside planned steps or from other threads
  int64_t base_allocs = 0;     // calls into the wrapped allocator (malloc) ...
  int64_t base_frees = 0;      // ... and frees
  int64_t first_fallback_request = -1;  // the first miss of a planned step: its index ...
  int64_t first_fallback_bytes = 0;     // ... and size, for the report
  int64_t live_planned_bytes = 0;
  int64_t peak_live_planned_bytes = 0;
};

class PlannedAllocator final : public c10::Allocator {
 public:
  // Installs it as the CPU allocator, wrapping the current one (idempotent).
  static PlannedAllocator& install();
  // The installed instance, or nullptr.
  static PlannedAllocator* instance();

  c10::DataPtr allocate(size_t n) override;
  void copy_data(void* dest, const void* src, std::size_t count) const override;

  // Step and region boundaries, called by the training thread.
  void begin_step();
  void end_step();
  void begin_region(const std::string& name);
  void end_region();

  void start_recording();
  plan::RequestTrace stop_recording();

  // Allocates the arena and serves planned steps from now on; disarm() frees it.
  void arm(const plan::BilevelPlan& plan);
  void disarm();
  bool armed() const { return armed_; }
  int64_t arena_bytes() const { return arena_bytes_; }

  PlannedStats stats() const;
  void reset_counters();

 private:
  struct Block;
  explicit PlannedAllocator(c10::Allocator* base);
  static void release(void* ctx);
  c10::DataPtr from_base(size_t n, int64_t request);
  bool on_training_thread() const { return std::this_thread::get_id() == thread_; }

  c10::Allocator* base_;
  mutable std::mutex mutex_;
  std::thread::id thread_;
  bool in_step_ = false;
  bool recording_ = false;
  bool armed_ = false;
  int64_t clock_ = 0;
  int64_t request_index_ = 0;
  int64_t current_region_ = -1;
  plan::RequestTrace trace_;
  std::vector<plan::Placement> placements_;
  c10::DataPtr arena_;
  int64_t arena_bytes_ = 0;
  std::map<int64_t, int64_t> live_;  // arena offset -> end
  PlannedStats stats_;
};

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
