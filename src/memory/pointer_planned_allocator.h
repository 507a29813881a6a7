// The planned allocator behind a raw-pointer interface, as PyTorch's pluggable
// CUDA allocator calls it: malloc(bytes, stream) returns a pointer,
// free(pointer) gives it back. Planned requests get arena + offset; the rest
// go to a fallback the device half supplies (CUDA: the native caching
// allocator). Kept device-independent so CPU tests exercise the bookkeeping
// the CUDA half relies on: pointer -> grant, zero-byte requests, a failing
// fallback, and the live/peak bytes it reports as "allocated".
#pragma once

#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "memory/planned_allocator.h"

namespace memo::memory {

class PointerPlannedAllocator : public PlannedAllocator {
 public:
  // `stream` is opaque here (cudaStream_t for CUDA), passed to the fallback.
  void* malloc(size_t n, void* stream);
  // Pointers not handed out by malloc (or already freed) are ignored.
  void free(void* p);

  int64_t live_bytes() const;
  int64_t peak_bytes() const;
  void reset_peak_bytes();

 protected:
  virtual void* fallback_malloc(size_t n, void* stream) = 0;  // may throw (out of memory)
  virtual void fallback_free(void* p) = 0;

 private:
  mutable std::mutex mutex_;
  std::unordered_map<void*, Grant> blocks_;
  int64_t live_ = 0;
  int64_t peak_ = 0;
};

}  // namespace memo::memory
