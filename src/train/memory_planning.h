// Drives the planned allocator through a run (--planned-memory): step 0 runs
// plainly (lazy one-off allocations happen there), step 1 is profiled and
// planned (or the plan comes from the on-disk cache, keyed by model, shape,
// policy and library versions), later steps are served from the arena.
// Also writes the memory timeline (HTML) and the regions as DSA CSVs.
#pragma once

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "model/config.h"
#include "plan/bilevel.h"
#include "train/options.h"

namespace memo::train {

struct MemoryPlanningOptions {
  c10::Device device = c10::Device(c10::DeviceType::CPU);  // whose allocator is planned
  bool planned = false;
  std::string cache_dir;       // empty: no cache
  std::string timeline_path;   // HTML timeline of the profiled step
  std::string export_dir;      // level-1 regions and level 2 as DSA CSVs
  nlohmann::json key;          // what the plan depends on
};

struct MemoryPlanReport {
  bool active = false;
  std::string source;              // "profiled" or "cache"
  int64_t arena_bytes = 0;
  int64_t flat_load = 0;           // LOAD of the planned requests
  int64_t level1_plans = 0;
  int64_t planned_requests = 0;    // per planned step (last one)
  int64_t fallbacks = 0;           // summed over planned steps
  int64_t first_fallback_request = -1;  // request index and size of the last step's first miss
  int64_t first_fallback_bytes = 0;
  int64_t base_allocs_last_step = 0;  // requests the arena did not serve, last step ...
  int64_t base_frees_last_step = 0;   // ... and their frees
  int64_t device_mallocs_last_step = 0;  // calls that reached the device malloc (cudaMalloc), last step ...
  int64_t device_frees_last_step = 0;    // ... and the device free
  int64_t arena_unused_bytes = 0;  // arena - peak live planned bytes
  int64_t peak_reserved_bytes = 0;   // the device's peak reserved and allocated bytes in the last step:
  int64_t peak_allocated_bytes = 0;  // reserved - allocated is the allocator's fragmentation (0 on CPU)
  std::string cache_file;
  std::string cache_rejected;      // a cached plan that was unreadable or unsafe, and why (re-planned)
};

class MemoryPlanning {
 public:
  explicit MemoryPlanning(MemoryPlanningOptions options);
  bool enabled() const { return options_.planned || !options_.timeline_path.empty(); }
  void before_step(int64_t step);
  void after_step(int64_t step);
  const MemoryPlanReport& report() const { return report_; }

 private:
  bool load_cache();
  void save_cache(const plan::BilevelPlan& plan) const;
  std::string cache_file() const;

  MemoryPlanningOptions options_;
  MemoryPlanReport report_;
  bool recording_ = false;
  int64_t mallocs_before_ = 0, frees_before_ = 0;
  std::optional<plan::BilevelPlan> plan_;
};

nlohmann::json to_json(const MemoryPlanReport& r);

// What a run's memory plan depends on (MemoryPlanningOptions::key): the
// cache-key rows of the option table (train/option_table.cpp) with the
// resolved model, device ("cpu", "cuda:0") and compute dtype ("float32").
nlohmann::json plan_cache_key(const TrainOptions& options, const model::ModelConfig& model,
                              const std::string& device, const std::string& compute_dtype);

// The bi-level plan of a profiled step, solved the same way everywhere: a
// fixed number of greedy runs, so the same trace always gives the same plan.
plan::BilevelPlan plan_profiled_step(const plan::RequestTrace& trace, int64_t alignment);

// A self-contained HTML page plotting live bytes over the profiled step, with
// the arena size and LOAD and the regions marked.
std::string memory_timeline_html(const plan::RequestTrace& trace, int64_t arena_bytes);

}  // namespace memo::train
