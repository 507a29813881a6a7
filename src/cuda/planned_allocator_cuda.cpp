// The CUDA half of the planned allocator (built only with MEMO_CUDA): PyTorch's
// pluggable CUDA allocator whose malloc and free go through the planner
// (PointerPlannedAllocator, tested on CPU). What the plan does not serve goes
// to the native caching allocator, kept and initialised here, so unplanned
// work (weights, optimizer state, a wrong plan) still caches instead of
// calling cudaMalloc per request. The arena is one allocation from it.
//
// Stream safety: a planned block is handed out again only after the host freed
// it, and only to a request on the step's compute stream, which is ordered
// after the block's last use there. Tensors used on the swap streams are held
// by the swap engine until their copy event is waited on, exactly as with the
// caching allocator (this allocator's recordStream is a no-op).
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/cuda/CUDAPluggableAllocator.h>

#include "core/error.h"
#include "memory/device_memory.h"
#include "memory/pointer_planned_allocator.h"

namespace memo::memory {

namespace {

using NativeAllocator = c10::cuda::CUDACachingAllocator::CUDAAllocator;

class CudaPlannedAllocator final : public PointerPlannedAllocator, public DeviceMemorySource {
 public:
  explicit CudaPlannedAllocator(NativeAllocator* native) : native_(native) {}

  c10::DeviceType device_type() const override { return c10::DeviceType::CUDA; }
  uintptr_t current_stream() const override {
    return reinterpret_cast<uintptr_t>(c10::cuda::getCurrentCUDAStream().stream());
  }
  // The caching allocator's block granularity; kernels may rely on it.
  int64_t alignment() const override { return 512; }

  // Allocated: bytes of live tensors (arena and fallback). Reserved: what the
  // native allocator holds from the device, the arena included.
  MemoryStats stats() override {
    const auto s = native_->getDeviceStats(c10::cuda::current_device());
    const auto all = static_cast<size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
    return {live_bytes(), peak_bytes(), s.reserved_bytes[all].current, s.reserved_bytes[all].peak,
            s.num_device_alloc, s.num_device_free};
  }

  void reset_peak() override {
    native_->resetPeakStats(c10::cuda::current_device());
    reset_peak_bytes();
  }

  // The fallback's cache; the arena, while armed, is a live block and stays.
  void release_cached() override {
    c10::cuda::device_synchronize();
    native_->emptyCache();
  }

 protected:
  void* fallback_malloc(size_t n, void* stream) override {
    return native_->raw_alloc_with_stream(n, static_cast<cudaStream_t>(stream));
  }
  void fallback_free(void* p) override { native_->raw_delete(p); }

  void* allocate_arena(int64_t bytes) override {
    // The blocks the native allocator cached during the unplanned and
    // profiled steps go back to the device first: the arena replaces them,
    // and left cached they would count as reserved-but-unallocated forever.
    c10::cuda::device_synchronize();
    native_->emptyCache();
    return native_->raw_alloc_with_stream(static_cast<size_t>(bytes),
                                          c10::cuda::getCurrentCUDAStream().stream());
  }
  void free_arena(void* arena) override { native_->raw_delete(arena); }

 private:
  NativeAllocator* native_;
};

}  // namespace

PlannedAllocator& install_cuda_planned_allocator() {
  NativeAllocator* native = c10::cuda::CUDACachingAllocator::get();
  require_input(!native->initialized(),
                "--planned-memory on CUDA: the CUDA allocator was already used in this process; the planned "
                "allocator must be installed before the first CUDA allocation");
  // Lives for the whole process, like the tensors it hands out.
  auto* a = new CudaPlannedAllocator(native);
  auto pluggable = torch::cuda::CUDAPluggableAllocator::createCustomAllocator(
      [a](size_t n, int /*device*/, cudaStream_t stream) { return a->malloc(n, stream); },
      [a](void* p, size_t /*n*/, int /*device*/, cudaStream_t /*stream*/) { a->free(p); });
  torch::cuda::CUDAPluggableAllocator::changeCurrentAllocator(pluggable);
  // Only now: swapping refuses an initialised allocator, and the native one
  // is the fallback from here on.
  native->init(c10::cuda::device_count());
  set_device_memory_source(a);
  PlannedAllocator::set_instance(a);
  return *a;
}

}  // namespace memo::memory
