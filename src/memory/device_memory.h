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
  // Gives cached but unused blocks back to the device.
  virtual void release_cached() {}
};
void set_device_memory_source(DeviceMemorySource* source);

// Installs the counting CPU allocator (idempotent). Tensors allocated before
// the call are not counted, so call it before creating the model.
void install_cpu_memory_meter();
bool cpu_memory_meter_installed();

void reset_peak_memory(const at::Device& device);
MemoryStats memory_stats(const at::Device& device);

// Gives the blocks the device's caching allocator holds unused back to the
// device (after waiting for it), so the next figures and the next run see
// only live memory. No-op on CPU, whose allocator keeps no cache.
void release_cached_memory(const at::Device& device);

// The driver's free and total memory of the device (cudaMemGetInfo); {0, 0}
// on CPU.
struct DeviceMemoryInfo {
  int64_t free = 0;
  int64_t total = 0;
};
DeviceMemoryInfo device_memory_info(const at::Device& device);

// Device memory left for memo's resident tokens (docs/design.md section 5): what
// this process could still allocate, free + (reserved - allocated), so
// blocks the caching allocator holds unused count as available and the
// figure is the same before and after they are released; at most
// total - allocated; less `planned` (what the policy allocates after this
// point: its two rounding buffers and one layer's working set) and `slack`.
// Read after the model, its gradients and the optimizer state exist. Never
// negative.
struct DeviceHeadroom {
  double free = 0;
  double total = 0;
  double allocated = 0;
  double reserved = 0;
};
double spare_device_bytes(const DeviceHeadroom& headroom, double planned, double slack);

// Waits for all work queued on the device (no-op on CPU).
void synchronize(const at::Device& device);

// True when this libtorch can reach a CUDA device.
bool cuda_available();

// Total memory of an accelerator (CUDA: the device allocator's
// getMemoryInfo, which allocates nothing); -1 for the CPU (see host_memory.h).
int64_t device_total_memory(const at::Device& device);

}  // namespace memo::memory
