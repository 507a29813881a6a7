// PointerPlannedAllocator: pointer bookkeeping around acquire/release.
#include "memory/pointer_planned_allocator.h"

#include <algorithm>

namespace memo::memory {

void* PointerPlannedAllocator::malloc(size_t n, void* stream) {
  const Grant g = acquire(n, reinterpret_cast<uintptr_t>(stream));
  if (n == 0) {
    // As the CUDA caching allocator does: no pointer, so no free will come.
    // Booked and released at once so request indices stay those of the profile.
    release(g);
    return nullptr;
  }
  void* p = nullptr;
  if (g.offset >= 0) {
    p = arena_base() + g.offset;
  } else {
    try {
      p = fallback_malloc(n, stream);
    } catch (...) {
      release(g);  // out of memory: the request never happened
      throw;
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  blocks_.emplace(p, g);
  live_ += g.bytes;
  peak_ = std::max(peak_, live_);
  return p;
}

void PointerPlannedAllocator::free(void* p) {
  Grant g;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = blocks_.find(p);
    if (it == blocks_.end()) return;
    g = it->second;
    blocks_.erase(it);
    live_ -= g.bytes;
  }
  if (g.offset < 0) fallback_free(p);
  release(g);
}

int64_t PointerPlannedAllocator::live_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return live_;
}

int64_t PointerPlannedAllocator::peak_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_;
}

void PointerPlannedAllocator::reset_peak_bytes() {
  std::lock_guard<std::mutex> lock(mutex_);
  peak_ = live_;
}

}  // namespace memo::memory
