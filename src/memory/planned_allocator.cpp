// PlannedAllocator: recording, arena serving with size and overlap checks,
// and counted fallbacks.
#include "memory/planned_allocator.h"

#include <c10/core/CPUAllocator.h>

#include <cstring>

#include "core/error.h"

namespace memo::memory {

namespace {
PlannedAllocator* g_planned = nullptr;
}

// What every DataPtr handed out carries, so its free is seen too.
struct PlannedAllocator::Block {
  PlannedAllocator* owner;
  c10::DataPtr inner;      // from the wrapped allocator (empty for arena blocks)
  int64_t request = -1;    // index in the recorded trace, -1 if not recorded
  int64_t arena_offset = -1;
  int64_t bytes = 0;
};

PlannedAllocator::PlannedAllocator(c10::Allocator* base) : base_(base) {}

PlannedAllocator& PlannedAllocator::install() {
  if (!g_planned) {
    // Lives for the whole process: tensors it handed out may outlive any scope.
    g_planned = new PlannedAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(g_planned, /*priority=*/200);
  }
  return *g_planned;
}

PlannedAllocator* PlannedAllocator::instance() { return g_planned; }

void PlannedAllocator::copy_data(void* dest, const void* src, std::size_t count) const {
  std::memcpy(dest, src, count);
}

c10::DataPtr PlannedAllocator::from_base(size_t n, int64_t request) {
  auto* block = new Block{this, base_->allocate(n), request, -1, static_cast<int64_t>(n)};
  void* data = block->inner.get();
  stats_.base_allocs++;
  return {data, block, &PlannedAllocator::release, c10::Device(c10::DeviceType::CPU)};
}

c10::DataPtr PlannedAllocator::allocate(size_t n) {
  std::lock_guard<std::mutex> lock(mutex_);
  const bool mine = in_step_ && on_training_thread();
  if (!mine) {
    stats_.unplanned++;
    return from_base(n, -1);
  }
  const int64_t k = request_index_++;
  if (recording_) {
    trace_.requests.push_back({static_cast<int64_t>(n), clock_++, -1, current_region_});
    return from_base(n, static_cast<int64_t>(trace_.requests.size()) - 1);
  }
  if (armed_ && k < static_cast<int64_t>(placements_.size())) {
    const auto& pl = placements_[static_cast<size_t>(k)];
    if (pl.kind == plan::Placement::Kind::Arena && pl.bytes == static_cast<int64_t>(n)) {
      const int64_t begin = pl.offset, end = pl.offset + pl.bytes;
      auto it = live_.upper_bound(begin);  // first live block starting after begin
      bool free_here = it == live_.end() || it->first >= end;
      if (free_here && it != live_.begin()) free_here = std::prev(it)->second <= begin;
      if (end == begin) free_here = true;  // an empty tensor uses no bytes
      if (free_here) {
        if (end > begin) live_[begin] = end;
        stats_.planned++;
        stats_.live_planned_bytes += pl.bytes;
        stats_.peak_live_planned_bytes = std::max(stats_.peak_live_planned_bytes, stats_.live_planned_bytes);
        auto* block = new Block{this, c10::DataPtr(), -1, begin, pl.bytes};
        void* data = static_cast<char*>(arena_.get()) + begin;
        return {data, block, &PlannedAllocator::release, c10::Device(c10::DeviceType::CPU)};
      }
    }
  }
  if (armed_) {
    if (stats_.fallback++ == 0) {
      stats_.first_fallback_request = k;
      stats_.first_fallback_bytes = static_cast<int64_t>(n);
    }
  } else {
    stats_.unplanned++;
  }
  return from_base(n, -1);
}

void PlannedAllocator::release(void* ctx) {
  auto* block = static_cast<Block*>(ctx);
  auto* self = block->owner;
  {
    std::lock_guard<std::mutex> lock(self->mutex_);
    if (block->arena_offset >= 0) {
      self->live_.erase(block->arena_offset);
      self->stats_.live_planned_bytes -= block->bytes;
    } else {
      self->stats_.base_frees++;
    }
    if (block->request >= 0 && self->recording_)
      self->trace_.requests[static_cast<size_t>(block->request)].free_time = self->clock_++;
  }
  delete block;  // frees the inner allocation, if any
}

void PlannedAllocator::begin_step() {
  std::lock_guard<std::mutex> lock(mutex_);
  thread_ = std::this_thread::get_id();
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
  disarm();
  auto arena = base_->allocate(static_cast<size_t>(std::max<int64_t>(plan.arena_bytes, 1)));
  std::lock_guard<std::mutex> lock(mutex_);
  arena_ = std::move(arena);
  arena_bytes_ = plan.arena_bytes;
  placements_ = plan.placements;
  armed_ = true;
}

void PlannedAllocator::disarm() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!live_.empty()) throw Error("planned allocator: cannot free the arena while tensors live in it");
  armed_ = false;
  placements_.clear();
  arena_ = c10::DataPtr();
  arena_bytes_ = 0;
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
