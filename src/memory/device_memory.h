// Peak and current memory of the training device. CUDA: the caching
// allocator's statistics through the device-generic c10::DeviceAllocator.
// CPU: a counting wrapper installed as the CPU allocator, so tests and CPU
// runs report real resident tensor bytes too.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace memo::memory {

struct MemoryStats {
  int64_t allocated = 0;
  int64_t peak_allocated = 0;
  int64_t reserved = 0;
  int64_t peak_reserved = 0;
  int64_t device_mallocs = 0;  // calls that reached the device's malloc (cudaMalloc; CPU: every allocation) ...
  int64_t device_frees = 0;    // ... and its free, cumulative since the process started
};

// Replaces the device allocator's statistics: the planned CUDA allocator is a
// pluggable allocator, which keeps none, so it reports its own.
class DeviceMemorySource {
 public:
  virtual ~DeviceMemorySource() = default;
  virtual MemoryStats stats() = 0;
  virtual void reset_peak() = 0;
};
void set_device_memory_source(DeviceMemorySource* source);

// Installs the counting CPU allocator (idempotent). Tensors allocated before
// the call are not counted, so call it before creating the model.
void install_cpu_memory_meter();
bool cpu_memory_meter_installed();

void reset_peak_memory(const at::Device& device);
MemoryStats memory_stats(const at::Device& device);

// Waits for all work queued on the device (no-op on CPU).
void synchronize(const at::Device& device);

// True when this libtorch can reach a CUDA device.
bool cuda_available();

// Total memory of an accelerator (CUDA: the device allocator's
// getMemoryInfo, which allocates nothing); -1 for the CPU (see host_memory.h).
int64_t device_total_memory(const at::Device& device);

}  // namespace memo::memory
