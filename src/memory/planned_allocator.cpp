// PlannedAllocator, the device-independent part: recording, arena serving
// with size and overlap checks, counted fallbacks, and the install dispatch.
#include "memory/planned_allocator.h"

#include <algorithm>

#include "core/error.h"

namespace memo::memory {

namespace {
PlannedAllocator* g_planned = nullptr;
}

PlannedAllocator& PlannedAllocator::install(c10::Device device) {
  if (g_planned) {
    require_input(g_planned->device_type() == device.type(), "the planned allocator is already installed for ",
                  c10::DeviceTypeName(g_planned->device_type()), ", not ", device.str(),
                  " (one planned device per process)");
    return *g_planned;
  }
  if (device.is_cpu()) return install_cpu_planned_allocator();
#ifdef MEMO_WITH_CUDA
  if (device.is_cuda()) return install_cuda_planned_allocator();
#endif
  throw InputError("--planned-memory on " + device.str() +
                   " needs a memo built with MEMO_CUDA=ON against a CUDA libtorch (this build has the CPU "
                   "planned allocator only)");
}

PlannedAllocator* PlannedAllocator::instance() { return g_planned; }
void PlannedAllocator::set_instance(PlannedAllocator* a) { g_planned = a; }

PlannedAllocator::Grant PlannedAllocator::acquire(size_t n, uintptr_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto bytes = static_cast<int64_t>(n);
  if (!(in_step_ && on_training_thread())) {
    stats_.unplanned++;
    stats_.base_allocs++;
    return {-1, -1, bytes};
  }
  const int64_t k = request_index_++;
  if (recording_) {
    int64_t stream_index = 0;
    if (stream != compute_stream_) {
      auto it = std::find(other_streams_.begin(), other_streams_.end(), stream);
      if (it == other_streams_.end()) it = other_streams_.insert(it, stream);
      stream_index = 1 + (it - other_streams_.begin());
    }
    trace_.requests.push_back({bytes, clock_++, -1, current_region_, stream_index});
    stats_.base_allocs++;
    return {-1, static_cast<int64_t>(trace_.requests.size()) - 1, bytes};
  }
  using Kind = plan::Placement::Kind;
  const plan::Placement* pl =
      armed_ && k < static_cast<int64_t>(placements_.size()) ? &placements_[static_cast<size_t>(k)] : nullptr;
  const bool expected_fallback = pl && pl->kind == Kind::Fallback && pl->bytes == bytes;
  if (pl && pl->kind == Kind::Arena && pl->bytes == bytes && stream == compute_stream_) {
    const int64_t begin = pl->offset, end = pl->offset + pl->bytes;
    auto it = live_.upper_bound(begin);  // first live block starting after begin
    bool free_here = it == live_.end() || it->first >= end;
    if (free_here && it != live_.begin()) free_here = std::prev(it)->second <= begin;
    if (end == begin) free_here = true;  // an empty tensor uses no bytes
    if (free_here) {
      if (end > begin) live_[begin] = end;
      stats_.planned++;
      stats_.live_planned_bytes += bytes;
      stats_.peak_live_planned_bytes = std::max(stats_.peak_live_planned_bytes, stats_.live_planned_bytes);
      return {begin, -1, bytes};
    }
  }
  if (armed_ && !expected_fallback) {
    if (stats_.fallback++ == 0) {
      stats_.first_fallback_request = k;
      stats_.first_fallback_bytes = bytes;
    }
  } else {
    stats_.unplanned++;
  }
  stats_.base_allocs++;
  return {-1, -1, bytes};
}

void PlannedAllocator::release(const Grant& grant) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (grant.offset >= 0) {
    live_.erase(grant.offset);
    stats_.live_planned_bytes -= grant.bytes;
  } else {
    stats_.base_frees++;
  }
  if (grant.request >= 0 && recording_)
    trace_.requests[static_cast<size_t>(grant.request)].free_time = clock_++;
}

void PlannedAllocator::begin_step() {
  std::lock_guard<std::mutex> lock(mutex_);
  thread_ = std::this_thread::get_id();
  compute_stream_ = current_stream();
  in_step_ = true;
  request_index_ = 0;
}

void PlannedAllocator::end_step() {
  std::lock_guard<std::mutex> lock(mutex_);
  in_step_ = false;
}

void PlannedAllocator::begin_region(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!recording_ || !on_training_thread()) return;
  current_region_ = static_cast<int64_t>(trace_.regions.size());
  trace_.regions.push_back({name, clock_++, -1});
}

void PlannedAllocator::end_region() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!recording_ || current_region_ < 0 || !on_training_thread()) return;
  trace_.regions[static_cast<size_t>(current_region_)].end_time = clock_++;
  current_region_ = -1;
}

void PlannedAllocator::start_recording() {
  std::lock_guard<std::mutex> lock(mutex_);
  trace_ = {};
  other_streams_.clear();
  clock_ = 0;
  current_region_ = -1;
  recording_ = true;
}

plan::RequestTrace PlannedAllocator::stop_recording() {
  std::lock_guard<std::mutex> lock(mutex_);
  recording_ = false;
  trace_.end_time = clock_;
  return std::move(trace_);
}

void PlannedAllocator::arm(const plan::BilevelPlan& plan) {
  // Never an address outside the arena, whatever the plan says (callers
  // validate plans fully with plan::validate_plan; this is the last line).
  require_input(plan.arena_bytes >= 0, "memory plan: negative arena size ", plan.arena_bytes);
  for (size_t k = 0; k < plan.placements.size(); ++k) {
    const auto& pl = plan.placements[k];
    int64_t end = 0;
    if (pl.kind == plan::Placement::Kind::Arena &&
        (pl.offset < 0 || pl.bytes < 0 || __builtin_add_overflow(pl.offset, pl.bytes, &end) || end > plan.arena_bytes))
      throw InputError(cat("memory plan: request ", k, " (", pl.bytes, " bytes at offset ", pl.offset,
                           ") lies outside the arena of ", plan.arena_bytes, " bytes"));
  }
  disarm();
  // Outside the lock: the device half may allocate through this allocator.
  void* arena = allocate_arena(std::max<int64_t>(plan.arena_bytes, 1));
  std::lock_guard<std::mutex> lock(mutex_);
  arena_ = static_cast<char*>(arena);
  arena_bytes_ = plan.arena_bytes;
  placements_ = plan.placements;
  armed_ = true;
}

void PlannedAllocator::disarm() {
  void* arena = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!live_.empty()) throw Error("planned allocator: cannot free the arena while tensors live in it");
    armed_ = false;
    placements_.clear();
    arena = arena_;
    arena_ = nullptr;
    arena_bytes_ = 0;
  }
  if (arena) free_arena(arena);
}

bool PlannedAllocator::armed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return armed_;
}

int64_t PlannedAllocator::arena_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return arena_bytes_;
}

PlannedStats PlannedAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void PlannedAllocator::reset_counters() {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto live = stats_.live_planned_bytes;
  stats_ = {};
  stats_.live_planned_bytes = live;
  stats_.peak_live_planned_bytes = live;
}

}  // namespace memo::memory
