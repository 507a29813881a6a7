// The CUDA half of memory::HostPool (built only with MEMO_CUDA): pins an
// mmap'ed host pool by registering it with the driver, and unpins it.
//
// Why registered memory works for the swap engine's non_blocking copies:
// ATen's CPU<->CUDA copy (copy_kernel_cuda) issues cudaMemcpyAsync on the
// current stream whatever the host memory is; the driver copies registered
// (page-locked) memory by DMA without staging, so the copy is truly
// asynchronous, and cudaPointerGetAttributes reports it as host memory of
// type cudaMemoryTypeHost, so Tensor::is_pinned() is true for it. After the
// copy, ATen asks PyTorch's caching host allocator to record an event on the
// block (CachingHostAllocator_recordEvent); our pointer is not one of its
// blocks, so that lookup finds nothing and returns false, harmlessly. The
// lifetime the caching allocator would have guarded is guarded here: the
// swap engine holds every tensor of a copy until its event is waited on,
// and the pool is unregistered only after cudaDeviceSynchronize, so no copy
// still in flight touches memory that is being unmapped.
//
// cudaHostRegister and friends are CUDA runtime symbols (libcudart, linked
// through torch's CUDA libraries), not c10::cuda ones: the compile check
// compiles this file but its symbol check covers only c10::cuda/torch::cuda.
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include <chrono>

#include "core/units.h"
#include "memory/host_pool.h"

namespace memo::memory {

double cuda_pin_host(void* ptr, int64_t bytes, c10::DeviceIndex device) {
  c10::cuda::CUDAGuard guard(device);
  const auto t0 = std::chrono::steady_clock::now();
  // Portable: pinned for every CUDA context, as PyTorch's own pinned memory is.
  const cudaError_t err = cudaHostRegister(ptr, static_cast<size_t>(bytes), cudaHostRegisterPortable);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // reset the runtime's last error, so the next call does not report it
    throw HostMemoryError(cat("host memory: cannot pin a pool of ", format_bytes(static_cast<double>(bytes)),
                              " (cudaHostRegister: ", cudaGetErrorString(err),
                              "); use a smaller --host-memory-gib, a shorter --seq-len or --policy recompute"),
                          static_cast<double>(bytes), 0.0);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void cuda_unpin_host(void* ptr, c10::DeviceIndex device) {
  c10::cuda::CUDAGuard guard(device);
  // Copies to or from the pool may still be queued (a step that failed
  // half-way): let them finish before the memory goes.
  (void)cudaDeviceSynchronize();
  (void)cudaHostUnregister(ptr);
  (void)cudaGetLastError();
}

}  // namespace memo::memory
